// Package launch is the launch path of one VM: the typed Spec built from a definition,
// the pure QEMU argv builder, the sealed memfds boot files are copied into, the expected
// launch digest and ID block, the QEMU probe and host facts, the facts the host policy
// needs, the QEMU process (started paused, in its own session) and the verification of
// the paused machine over QMP before its first cont. Launcher ties them together.
//
// It owns everything that knows how snpd's QEMU command line looks (RecordedChannel
// reads a recorded argv back). It knows nothing of the Manager, the store or the API
// server: it must not import package daemon, daemon/store or daemon/guestchan; it may
// import config, snp, snp/launch (as snplaunch), qmp and the wire types of daemon/api.
package launch
