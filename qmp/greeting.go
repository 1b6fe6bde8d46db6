package qmp

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// monitorState is what the unix socket table says about a monitor that did not greet.
type monitorState int

const (
	stateUnknown      monitorState = iota // no socket path, or no listener found for it
	stateAccepted                         // our connection was accepted, then nothing came
	stateHeld                             // not accepted while another connection is
	stateNotAccepting                     // not accepted, and no connection is
)

// noGreetingError is the handshake's error when the greeting does not arrive in time,
// with what the socket table says about why.
type noGreetingError struct {
	waited time.Duration
	cause  error // the context's error
	state  monitorState
}

func (e *noGreetingError) Error() string {
	w := e.waited.Round(time.Millisecond)
	switch e.state {
	case stateAccepted:
		return fmt.Sprintf("QEMU did not greet within %s: it accepted the connection and sent nothing (is it hung, or not QEMU?) (%v)", w, e.cause)
	case stateHeld:
		return fmt.Sprintf("QEMU did not accept the connection within %s: %v (%v)", w, ErrMonitorBusy, e.cause)
	case stateNotAccepting:
		return fmt.Sprintf("QEMU did not accept the connection within %s, and no other client holds the monitor (is it stopped or hung?) (%v)", w, e.cause)
	}
	return fmt.Sprintf("QEMU did not greet within %s (%v)", w, e.cause)
}

// Unwrap matches ErrNoGreeting and the context's error, and ErrMonitorBusy when another
// client holds the monitor.
func (e *noGreetingError) Unwrap() []error {
	errs := []error{ErrNoGreeting, e.cause}
	if e.state == stateHeld {
		errs = append(errs, ErrMonitorBusy)
	}
	return errs
}

// diagnoseMonitor tells, for a connection to the unix socket at path that got no
// greeting, whether it was accepted. QEMU serves one client per monitor socket and does
// not accept the next until the first leaves, and the kernel lists a connection the
// server has not accepted yet with state "connecting" (02) and no inode in
// /proc/net/unix, an accepted one as "connected" (03), both under the listener's path.
// It must run while the connection is still open.
func diagnoseMonitor(path string) monitorState {
	b, err := os.ReadFile("/proc/net/unix")
	if err != nil {
		return stateUnknown
	}
	paths := []string{path}
	if abs, err := filepath.Abs(path); err == nil && abs != path {
		paths = append(paths, abs)
	}
	listening, pending, accepted := unixSocketsAt(b, paths...)
	switch {
	case !listening:
		return stateUnknown
	case pending == 0 && accepted > 0:
		return stateAccepted
	case pending > 0 && accepted > 0:
		return stateHeld
	case pending > 0:
		return stateNotAccepting
	}
	return stateUnknown
}

// unixSocketsAt reads /proc/net/unix (data) and reports whether a socket listens at one
// of paths, and how many stream connections to it are pending (not accepted) and
// accepted. Lines it cannot read are skipped.
func unixSocketsAt(data []byte, paths ...string) (listening bool, pending, accepted int) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), 64<<10)
	for sc.Scan() {
		// "Num: RefCount Protocol Flags Type St Inode Path", the inode right-aligned.
		f := strings.Fields(sc.Text())
		if len(f) < 8 || !strings.HasSuffix(f[0], ":") {
			continue
		}
		// The path is everything after the inode (it may contain spaces).
		line := sc.Text()
		i := strings.Index(line, " "+f[6]+" ")
		if i < 0 {
			continue
		}
		p := line[i+len(f[6])+2:]
		match := false
		for _, want := range paths {
			if p == want {
				match = true
			}
		}
		flags, err1 := strconv.ParseUint(f[3], 16, 32)
		typ, err2 := strconv.ParseUint(f[4], 16, 16)
		st, err3 := strconv.ParseUint(f[5], 16, 8)
		if !match || err1 != nil || err2 != nil || err3 != nil || typ != 1 { // SOCK_STREAM
			continue
		}
		switch {
		case flags&0x10000 != 0: // __SO_ACCEPTCON: the listener
			listening = true
		case st == 2: // SS_CONNECTING: waiting in the listener's queue
			pending++
		case st == 3: // SS_CONNECTED
			accepted++
		}
	}
	return listening, pending, accepted
}

// remotePath is the unix socket path conn is connected to ("" if none).
func remotePath(conn net.Conn) string {
	uc, ok := conn.(*net.UnixConn)
	if !ok || uc.RemoteAddr() == nil {
		return ""
	}
	return uc.RemoteAddr().String()
}
