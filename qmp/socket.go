package qmp

import (
	"fmt"
	"net"
	"os"
	"strconv"
)

// ListenUnix creates a listening unix socket at path (mode 0600) for QEMU's QMP monitor
// and returns it as a file to hand to QEMU (exec.Cmd.ExtraFiles), so the socket exists
// before QEMU starts and Dial can never race QEMU's own bind. The file is the caller's
// to close once QEMU has started; the socket path stays until removed. Create path in a
// directory only snpd can enter: the mode is set after bind.
func ListenUnix(path string) (*os.File, error) {
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("creating QMP socket: %w", err)
	}
	ln.SetUnlinkOnClose(false)
	defer ln.Close()
	if err := os.Chmod(path, 0o600); err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("restricting QMP socket: %w", err)
	}
	f, err := ln.File()
	if err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("getting QMP socket fd: %w", err)
	}
	return f, nil
}

// ChardevSocketFD is the -chardev value for a QMP monitor on an inherited listening
// socket fd (the child's fd number, 3 for ExtraFiles[0]): "socket,id=<id>,fd=<fd>,
// server=on,wait=off". Pair it with "-mon chardev=<id>,mode=control". id must be a
// QEMU identifier (letters, digits, '-', '.', '_', starting with a letter, at most 127
// bytes) and fd at least 3; anything else is an error, so no value can inject options.
func ChardevSocketFD(id string, fd int) (string, error) {
	if !validID(id) {
		return "", fmt.Errorf("building QMP chardev: invalid id %q", id)
	}
	if fd < 3 {
		return "", fmt.Errorf("building QMP chardev: fd %d is not an inherited fd (>= 3)", fd)
	}
	return "socket,id=" + id + ",fd=" + strconv.Itoa(fd) + ",server=on,wait=off", nil
}

// validID mirrors QEMU's id_wellformed (util/id.c).
func validID(id string) bool {
	if id == "" || len(id) > 127 {
		return false
	}
	for i, r := range id {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z':
		case i > 0 && (r >= '0' && r <= '9' || r == '-' || r == '.' || r == '_'):
		default:
			return false
		}
	}
	return true
}
