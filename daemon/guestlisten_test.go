package daemon

import (
	"bytes"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/mdlayher/vsock"
	"golang.org/x/sys/unix"
)

// TestVsockListenFailureNamesTheCause: each way listening on vsock fails is logged as
// what it is; only a host without vsock is "no vsock on this host".
func TestVsockListenFailureNamesTheCause(t *testing.T) {
	for _, c := range []struct {
		err       error
		want, not string
	}{
		{&net.OpError{Op: "listen", Net: "vsock", Err: os.NewSyscallError("socket", unix.EAFNOSUPPORT)}, "level=INFO msg=\"guest vsock requests not served: no vsock on this host\"", "WARN"},
		{&net.OpError{Op: "listen", Net: "vsock", Err: os.NewSyscallError("bind", unix.EADDRINUSE)}, "vsock port 5000 is already in use", "no vsock"},
		{&net.OpError{Op: "listen", Net: "vsock", Err: os.NewSyscallError("bind", unix.EACCES)}, "listening on vsock port 5000 failed", "no vsock"},
	} {
		var buf bytes.Buffer
		logVsockListenFailure(slog.New(slog.NewTextHandler(&buf, nil)), 5000, fmt.Errorf("listening on vsock port 5000: %w", c.err))
		if !strings.Contains(buf.String(), c.want) || strings.Contains(buf.String(), c.not) {
			t.Errorf("%v: logged %q, want %q and not %q", c.err, buf.String(), c.want, c.not)
		}
	}
}

// TestSnpdVsockPortInUse starts the real snpd on a vsock port this test already listens
// on: snpd starts, and says the port is in use, not that the host has no vsock.
func TestSnpdVsockPortInUse(t *testing.T) {
	l, err := vsock.Listen(0, nil) // any free port
	if err != nil {
		t.Skipf("cannot listen on vsock here (no /dev/vsock or transport): %v", err)
	}
	defer l.Close()
	port := l.Addr().(*vsock.Addr).Port
	e := newTestEnv(t, fmt.Sprintf("[guest_channel]\nvsock_port = %d\n", port))
	d := startDaemon(t, e)
	waitFor(t, "snpd to log the vsock failure", 5*time.Second, func() (bool, error) {
		return strings.Contains(d.out.String(), "guest vsock requests not served"), nil
	})
	out := d.out.String()
	if !strings.Contains(out, fmt.Sprintf("vsock port %d is already in use", port)) || strings.Contains(out, "no vsock on this host") {
		t.Errorf("snpd's log does not name the port in use:\n%s", out)
	}
}
