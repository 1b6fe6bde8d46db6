package systemd

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"

	"github.com/coreos/go-systemd/v22/activation"
)

// APIName is the FileDescriptorName= of the API socket in snpd.socket: pass it to
// APIListener.
const APIName = "api"

// listenFDsStart is SD_LISTEN_FDS_START: the first inherited descriptor.
const listenFDsStart = 3

// maxListenFDs bounds LISTEN_FDS; snpd.socket passes one.
const maxListenFDs = 64

var (
	activatedOnce sync.Once
	activated     map[string][]net.Listener
	activatedErr  error
)

// Listeners returns the sockets systemd passed by socket activation, keyed by their
// FileDescriptorName= (snpd.socket names its socket "api"; a socket without a name is
// keyed "LISTEN_FD_<fd>"). The environment is read on the first call only and the
// result cached, because activation consumes it: LISTEN_PID, LISTEN_FDS and
// LISTEN_FDNAMES are unset and the descriptors marked close-on-exec, so QEMU children
// never inherit the API socket. Later calls return the same map (do not modify it).
//
// It returns an empty map and nil when the process was not socket-activated
// (LISTEN_PID unset or another process's). Fail closed: malformed variables, or an
// inherited descriptor that is not a listening stream socket, are an error and no
// listener is returned (the inherited descriptors are then closed, except when
// LISTEN_FDS itself is unreadable and which ones were passed is unknown). The daemon
// must exit on such an error rather than create its own socket.
//
// Closing an activated unix listener does not remove its socket file (it belongs to
// snpd.socket, which keeps listening while snpd restarts).
func Listeners() (map[string][]net.Listener, error) {
	activatedOnce.Do(func() {
		activated, activatedErr = listenersFromEnv()
	})
	return activated, activatedErr
}

// APIListener returns the activated unix stream listener named name (snpd.socket's
// FileDescriptorName=api) and true, or nil and false when there is none (not
// socket-activated: the daemon then listens itself). It is an error if more than one
// socket has that name, or if it is not a unix socket: the API authorizes callers by
// SO_PEERCRED, which only a unix socket has, so a TCP socket configured by mistake must
// not be served.
func APIListener(name string) (net.Listener, bool, error) {
	all, err := Listeners()
	if err != nil {
		return nil, false, err
	}
	ls := all[name]
	switch {
	case len(ls) == 0:
		return nil, false, nil
	case len(ls) > 1:
		return nil, false, fmt.Errorf("socket activation: %d sockets named %q, want one", len(ls), name)
	}
	if _, ok := ls[0].(*net.UnixListener); !ok {
		return nil, false, fmt.Errorf("socket activation: socket %q is %s %s, want a unix stream socket", name, ls[0].Addr().Network(), ls[0].Addr())
	}
	return ls[0], true, nil
}

// listenersFromEnv does the work of Listeners once.
//
// The variables are validated here because go-systemd's activation.Files silently
// returns nothing for malformed ones and ListenersWithNames silently drops (and leaks)
// descriptors that are not listeners; a daemon that then created its own socket would
// hide a broken deployment. go-systemd still does the descriptor handling.
func listenersFromEnv() (map[string][]net.Listener, error) {
	n, names, err := parseListenEnv(os.Getenv("LISTEN_PID"), os.Getenv("LISTEN_FDS"), os.Getenv("LISTEN_FDNAMES"), os.Getpid())
	if err != nil {
		// Close what systemd may have passed, if the pid is ours, so nothing leaks.
		files := activation.Files(true)
		for _, f := range files {
			f.Close()
		}
		return nil, fmt.Errorf("reading socket activation: %w", err)
	}
	if n == 0 {
		// Not activated, or variables left over from an activated parent: not ours, and
		// not to be passed on to children either.
		unsetListenEnv()
		return map[string][]net.Listener{}, nil
	}
	files := activation.Files(true)
	if len(files) != n {
		for _, f := range files {
			f.Close()
		}
		return nil, fmt.Errorf("reading socket activation: LISTEN_FDS=%d but %d descriptors taken", n, len(files))
	}
	out := map[string][]net.Listener{}
	var errs []error
	for i, f := range files {
		name := names[i]
		l, err := net.FileListener(f) // dups the descriptor (close-on-exec)
		f.Close()
		if err != nil {
			errs = append(errs, fmt.Errorf("descriptor %d (%s) is not a listening stream socket: %w", listenFDsStart+i, name, err))
			continue
		}
		out[name] = append(out[name], l)
	}
	if err := errors.Join(errs...); err != nil {
		for _, ls := range out {
			for _, l := range ls {
				l.Close()
			}
		}
		return nil, fmt.Errorf("reading socket activation: %w", err)
	}
	return out, nil
}

func unsetListenEnv() {
	os.Unsetenv("LISTEN_PID")
	os.Unsetenv("LISTEN_FDS")
	os.Unsetenv("LISTEN_FDNAMES")
}

// parseListenEnv parses LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES as sd_listen_fds(3)
// and sd_listen_fds_with_names(3) define them. It returns the number of descriptors
// meant for process self and one name per descriptor; 0 when pid is empty or another
// process's.
func parseListenEnv(pid, fds, fdnames string, self int) (int, []string, error) {
	if pid == "" {
		return 0, nil, nil
	}
	p, err := parseDecimal(pid)
	if err != nil || p == 0 {
		return 0, nil, fmt.Errorf("parsing LISTEN_PID=%q: not a process id", pid)
	}
	if p != uint64(self) {
		return 0, nil, nil
	}
	if fds == "" {
		return 0, nil, errors.New("LISTEN_PID is set but LISTEN_FDS is not")
	}
	n, err := parseDecimal(fds)
	if err != nil {
		return 0, nil, fmt.Errorf("parsing LISTEN_FDS=%q: %w", fds, err)
	}
	if n > maxListenFDs {
		return 0, nil, fmt.Errorf("parsing LISTEN_FDS=%q: more than %d descriptors", fds, maxListenFDs)
	}
	names := make([]string, n)
	var given []string
	if fdnames != "" {
		given = strings.Split(fdnames, ":")
		if len(given) != int(n) {
			return 0, nil, fmt.Errorf("parsing LISTEN_FDNAMES=%q: %d names for %d descriptors", fdnames, len(given), n)
		}
	}
	for i := range names {
		if given != nil {
			if err := checkFDName(given[i]); err != nil {
				return 0, nil, fmt.Errorf("parsing LISTEN_FDNAMES=%q: %w", fdnames, err)
			}
			names[i] = given[i]
			continue
		}
		names[i] = fmt.Sprintf("LISTEN_FD_%d", listenFDsStart+i)
	}
	return int(n), names, nil
}

// checkFDName applies systemd's rule for FileDescriptorName=: 1 to 255 printable ASCII
// characters, no colon.
func checkFDName(s string) error {
	if s == "" || len(s) > 255 {
		return fmt.Errorf("name %q: want 1 to 255 characters", s)
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] >= 0x7f || s[i] == ':' {
			return fmt.Errorf("name %q: want printable ASCII without spaces or colons", s)
		}
	}
	return nil
}
