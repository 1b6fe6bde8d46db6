// Package systemd is snpd's glue to systemd: readiness and status notification
// (Ready, Status, Stopping, Notify), the watchdog (WatchdogLoop, WatchdogLoopFunc),
// socket activation of the API socket (APIListener, Listeners) and journal logging
// (NewLogHandler). Every function is a harmless no-op, or falls back to plain text,
// when snpd does not run under systemd, so the daemon calls them unconditionally.
//
// go-systemd/v22 does the sending of notifications and the handling of inherited
// descriptors. The environment variables systemd passes (WATCHDOG_USEC, WATCHDOG_PID,
// LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES, JOURNAL_STREAM) are parsed here strictly,
// because go-systemd ignores or silently drops malformed ones where snpd must fail
// closed; the journal's native protocol is written here because go-systemd's journal
// package cannot be pointed at another socket and has no slog handler.
//
// The unit files snpd.service and snpd.socket, and snpd.sysusers, live beside this
// package and are installed by `make install`; README.md explains their settings.
// Package systemdtest has fakes of the notify and journal sockets for tests.
package systemd
