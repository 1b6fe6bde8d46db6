package qmp_test

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/snpd/snpd/qmp"
	"github.com/snpd/snpd/qmp/qmptest"
)

// TestDialNoGreetingSaysWhy: a monitor that does not greet is described as what it is:
// a peer that accepted the connection and sent nothing "did not greet within T"; one
// that does not accept while another client is connected is held by that client
// (ErrMonitorBusy); one that accepts nothing with no client connected is stopped or
// hung. Every case wraps ErrNoGreeting and the context's error.
func TestDialNoGreetingSaysWhy(t *testing.T) {
	dialErr := func(path string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		c, err := qmp.Dial(ctx, path, nil)
		if err == nil {
			c.Close()
			t.Fatal("Dial succeeded")
		}
		if !errors.Is(err, qmp.ErrNoGreeting) || !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%v: want ErrNoGreeting and DeadlineExceeded", err)
		}
		if strings.Contains(err.Error(), "\n") {
			t.Errorf("error is not one line: %q", err)
		}
		t.Log(err)
		return err
	}

	t.Run("accepts, never greets", func(t *testing.T) {
		srv := qmptest.NewServer(t, qmptest.WithoutGreeting())
		err := dialErr(srv.Path())
		if !strings.Contains(err.Error(), "QEMU did not greet within ") || !strings.Contains(err.Error(), "accepted the connection") ||
			strings.Contains(err.Error(), "another QMP client") || errors.Is(err, qmp.ErrMonitorBusy) {
			t.Errorf("a peer that accepts and never greets: %v", err)
		}
	})
	t.Run("held by another client", func(t *testing.T) {
		srv := qmptest.NewServer(t)
		first, err := qmp.Dial(context.Background(), srv.Path(), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer first.Close()
		err = dialErr(srv.Path())
		if !errors.Is(err, qmp.ErrMonitorBusy) || !strings.Contains(err.Error(), "another QMP client holds the monitor") {
			t.Errorf("a monitor held by another client: %v", err)
		}
	})
	t.Run("accepts nothing", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "qmp.sock")
		ln, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		err = dialErr(path)
		if !strings.Contains(err.Error(), "did not accept the connection") || !strings.Contains(err.Error(), "no other client") ||
			errors.Is(err, qmp.ErrMonitorBusy) {
			t.Errorf("a listener that accepts nothing: %v", err)
		}
	})
}
