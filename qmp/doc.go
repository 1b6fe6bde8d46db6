// Package qmp is a QMP (QEMU Machine Protocol) client for QEMU >= 9.1 with typed
// commands and events, used by snpd to verify a paused SEV-SNP guest before it runs.
//
// # Why not go-qemu's SocketMonitor
//
// This package implements go-qemu's qmp.Monitor interface itself (see Monitor) instead
// of wrapping github.com/digitalocean/go-qemu/qmp.SocketMonitor, because the
// SocketMonitor's defects sit in unexported code that a wrapper cannot reach (verified in
// go-qemu v0.0.0-20250212194115-ee9b0668d242, qmp/socket.go):
//
//   - its reader sends every event on an unbuffered channel once Events() was called,
//     so a caller that stops draining it deadlocks Run (QEMU sends RESUME before cont's
//     reply) and then Disconnect too (it waits for the blocked reader);
//   - it splits lines with a default bufio.Scanner, so one reply over 64 KiB
//     (query-qmp-schema is about 237 KB on QEMU 10.0) ends the reader for good, and the
//     error it then sends blocks forever unless a Run is waiting;
//   - Connect reads the greeting with no deadline on a connection the wrapper cannot
//     see, so a second client (QEMU greets one client per socket) blocks forever;
//   - Run takes no context and has no timeout; error replies keep only the description,
//     not the class; and bytes Connect's json.Decoder buffered past the handshake are
//     lost to the reader.
//
// Client fixes each: one reader goroutine drains the socket forever and fans events out
// to buffered subscriptions that drop (and count) rather than block; messages of any
// length up to Options.MaxMessageBytes (64 MiB by default) are read; the handshake runs
// under the caller's context and a missing greeting yields ErrNoGreeting; every command
// takes a context and replies are matched by QMP "id", so a command that times out
// returns an error and its late reply is discarded without poisoning the connection;
// *Error keeps class and description. Monitor adapts Client to go-qemu's qmp.Monitor so
// go-qemu's higher-level packages can still be used on top of it.
//
// # Sockets
//
// snpd creates the QMP listening socket itself (ListenUnix), passes the listening fd to
// QEMU as "-chardev socket,id=qmp,fd=N,server=on,wait=off -mon chardev=qmp,mode=control"
// (how libvirt does it; see ChardevSocketFD), and connects with Dial on the socket path.
// After snpd restarts it reattaches by dialing the same path again. NewClient and
// NewClientFile connect over an existing connection or connected socket fd.
//
// Library code here never prints; every error is wrapped with context.
package qmp
