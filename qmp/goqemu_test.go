package qmp_test

import (
	"context"
	"strings"
	"testing"
	"time"

	goqmp "github.com/digitalocean/go-qemu/qmp"
	"github.com/snpd/snpd/qmp"
	"github.com/snpd/snpd/qmp/qmptest"
)

// TestGoQemuSocketMonitorDefects pins two of the reasons (see doc.go) this package does
// not wrap go-qemu's SocketMonitor: if go-qemu fixes them, this test fails and the
// decision should be revisited.
func TestGoQemuSocketMonitorDefects(t *testing.T) {
	srv := qmptest.NewServer(t)
	srv.Fail("fails", qmp.ClassDeviceNotFound, "Device 'x' not found")
	srv.Reply("big", strings.Repeat("z", 100<<10))
	mon, err := goqmp.NewSocketMonitor("unix", srv.Path(), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := mon.Connect(); err != nil {
		t.Fatal(err)
	}
	_, err = mon.Run([]byte(`{"execute":"fails"}`))
	if err == nil || strings.Contains(err.Error(), qmp.ClassDeviceNotFound) {
		t.Errorf("go-qemu error reply = %v; expected the class to be lost", err)
	}
	_, err = mon.Run([]byte(`{"execute":"big"}`))
	if err == nil || !strings.Contains(err.Error(), "token too long") {
		t.Errorf("go-qemu on a 100 KiB reply: %v; expected bufio.Scanner's token too long", err)
	}
	t.Logf("go-qemu SocketMonitor on a 100 KiB reply: %v", err)

	mon.Disconnect() // QEMU (and the fake) serve one client at a time

	// The same server through this package.
	c := dial(t, srv)
	var s string
	if err := c.Execute(context.Background(), "big", nil, &s); err != nil || len(s) != 100<<10 {
		t.Errorf("qmp.Client on a 100 KiB reply: %d bytes, %v", len(s), err)
	}
}

// BenchmarkRoundTrip measures one command round trip (query-status) over a unix socket
// to the fake server, this package's Client against go-qemu's SocketMonitor, in the
// same run.
func BenchmarkRoundTrip(b *testing.B) {
	b.Run("qmp.Client", func(b *testing.B) {
		srv := qmptest.NewServer(b)
		ctx := context.Background()
		c, err := qmp.Dial(ctx, srv.Path(), nil)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		b.ReportAllocs()
		for b.Loop() {
			if _, err := c.QueryStatus(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("go-qemu.SocketMonitor", func(b *testing.B) {
		srv := qmptest.NewServer(b)
		mon, err := goqmp.NewSocketMonitor("unix", srv.Path(), 2*time.Second)
		if err != nil {
			b.Fatal(err)
		}
		if err := mon.Connect(); err != nil {
			b.Fatal(err)
		}
		defer mon.Disconnect()
		b.ReportAllocs()
		for b.Loop() {
			if _, err := mon.Run([]byte(`{"execute":"query-status"}`)); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkQEMU measures against the real QEMU (-machine none), side by side in one run:
// a query-status round trip through this package and through go-qemu's SocketMonitor,
// and a query-qmp-schema round trip (about 237 KB, which go-qemu cannot read at all).
func BenchmarkQEMU(b *testing.B) {
	ctx := context.Background()
	b.Run("query-status/qmp.Client", func(b *testing.B) {
		path, _ := startQEMU(b)
		c := dialQEMU(b, path)
		for b.Loop() {
			if _, err := c.QueryStatus(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("query-status/go-qemu.SocketMonitor", func(b *testing.B) {
		path, _ := startQEMU(b)
		mon, err := goqmp.NewSocketMonitor("unix", path, 2*time.Second)
		if err != nil {
			b.Fatal(err)
		}
		if err := mon.Connect(); err != nil {
			b.Fatal(err)
		}
		defer mon.Disconnect()
		for b.Loop() {
			if _, err := mon.Run([]byte(`{"execute":"query-status"}`)); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("query-qmp-schema/qmp.Client", func(b *testing.B) {
		path, _ := startQEMU(b)
		c := dialQEMU(b, path)
		for b.Loop() {
			raw, err := c.ExecuteRaw(ctx, "query-qmp-schema", nil)
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(len(raw)))
		}
	})
	b.Run("dial+handshake/qmp.Client", func(b *testing.B) {
		path, _ := startQEMU(b)
		for b.Loop() {
			c, err := qmp.Dial(ctx, path, nil)
			if err != nil {
				b.Fatal(err)
			}
			c.Close()
		}
	})
}
