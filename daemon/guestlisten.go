package daemon

import (
	"errors"
	"fmt"
	"log/slog"

	"golang.org/x/sys/unix"
)

// logVsockListenFailure says why snpd serves no guest-initiated requests over vsock,
// naming the real cause: that the host has no vsock (no module or transport; expected on
// many hosts: info) only when the error says so, and otherwise what failed (the port
// taken by another program, a permission: warnings, since guests relying on vsock will
// not be answered).
func logVsockListenFailure(log *slog.Logger, port uint32, err error) {
	switch {
	case errors.Is(err, unix.EAFNOSUPPORT), errors.Is(err, unix.ENODEV), errors.Is(err, unix.EADDRNOTAVAIL), errors.Is(err, unix.ENOENT):
		log.Info("guest vsock requests not served: no vsock on this host", "err", err)
	case errors.Is(err, unix.EADDRINUSE):
		log.Warn(fmt.Sprintf("guest vsock requests not served: vsock port %d is already in use by another program (another snpd?); free it or set guest_channel.vsock_port", port), "err", err)
	default:
		log.Warn(fmt.Sprintf("guest vsock requests not served: listening on vsock port %d failed", port), "err", err)
	}
}
