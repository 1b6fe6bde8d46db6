// Package daemon is snpd itself: the VM manager, the QEMU argv builder, the launch path,
// the durable store, the API server, the guest channel and reattachment after restart.
package daemon
