// Package systemd is snpd's glue to systemd: readiness and status notification, the
// watchdog, socket activation and journal logging. Unit files live beside it.
package systemd
