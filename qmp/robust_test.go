package qmp_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/snpd/snpd/qmp"
	"github.com/snpd/snpd/qmp/qmptest"
)

// An event flood sent while a command runs, to a subscriber that never reads, must not
// delay the reply: events are dropped for that subscriber and counted.
func TestEventFloodDuringCommandDoesNotDeadlock(t *testing.T) {
	srv := qmptest.NewServer(t)
	c := dial(t, srv)
	slow := c.Subscribe(4) // never read
	fast := c.Subscribe(20000)
	const n = 10000
	srv.Handle("flood", func(context.Context, json.RawMessage) (any, error) {
		for i := 0; i < n; i++ {
			if err := srv.Emit("BLOCK_IO_ERROR", map[string]any{"i": i}); err != nil {
				return nil, err
			}
		}
		return map[string]int{"sent": n}, nil
	})
	var out struct{ Sent int }
	if err := c.Execute(testCtx(t), "flood", nil, &out); err != nil {
		t.Fatalf("flood: %v", err)
	}
	if out.Sent != n {
		t.Errorf("sent = %d", out.Sent)
	}
	// The reply comes after every event on the wire, so all have been dispatched.
	if got := slow.Dropped(); got != n-4 {
		t.Errorf("slow subscriber dropped %d, want %d", got, n-4)
	}
	if got := fast.Dropped(); got != 0 {
		t.Errorf("fast subscriber dropped %d, want 0", got)
	}
	if got := c.DroppedEvents(); got != n-4 {
		t.Errorf("client dropped %d, want %d", got, n-4)
	}
	if len(fast.Events()) != n {
		t.Errorf("fast subscriber has %d events buffered, want %d", len(fast.Events()), n)
	}
	ev := <-fast.Events()
	if ev.Name != "BLOCK_IO_ERROR" || ev.Typed != nil || string(ev.Data) != `{"i":0}` || ev.Time.IsZero() {
		t.Errorf("first event = %+v", ev)
	}
	slow.Close()
	slow.Close() // idempotent
	buffered := 0
	for range slow.Events() { // ends: Close closed the channel
		buffered++
	}
	if buffered != 4 {
		t.Errorf("slow subscriber had %d buffered events, want 4", buffered)
	}
}

func TestTypedEvents(t *testing.T) {
	srv := qmptest.NewServer(t)
	c := dial(t, srv)
	sub := c.Subscribe(0)
	ctx := testCtx(t)
	if err := c.Cont(ctx); err != nil { // the fake emits RESUME before cont's reply
		t.Fatal(err)
	}
	if err := c.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	srv.Emit(qmp.EventGuestPanicked, map[string]any{"action": "pause", "info": map[string]any{"type": "hyper-v"}})
	srv.Emit(qmp.EventDeviceDeleted, map[string]any{"device": "disk0", "path": "/machine/peripheral/disk0"})
	srv.Emit(qmp.EventShutdown, map[string]any{"guest": true, "reason": "guest-shutdown"})
	srv.Emit(qmp.EventShutdown, map[string]any{"guest": "not a bool"})
	srv.Emit("POWERDOWN", nil)
	want := []any{
		qmp.ResumeEvent{}, qmp.StopEvent{},
		qmp.GuestPanickedEvent{Action: "pause", Info: json.RawMessage(`{"type":"hyper-v"}`)},
		qmp.DeviceDeletedEvent{Device: "disk0", Path: "/machine/peripheral/disk0"},
		qmp.ShutdownEvent{Guest: true, Reason: "guest-shutdown"},
		nil, // SHUTDOWN with data not matching the schema: passed through raw
		nil, // POWERDOWN: not a typed event
	}
	for i, w := range want {
		select {
		case ev := <-sub.Events():
			if fmt.Sprint(ev.Typed) != fmt.Sprint(w) {
				t.Errorf("event %d (%s): Typed = %#v, want %#v", i, ev.Name, ev.Typed, w)
			}
			if i == 5 && string(ev.Data) != `{"guest":"not a bool"}` {
				t.Errorf("raw data = %s", ev.Data)
			}
		case <-ctx.Done():
			t.Fatalf("event %d did not arrive", i)
		}
	}
}

// A reply line of 1 MiB (16 times bufio.Scanner's limit) is read whole.
func TestLargeReply(t *testing.T) {
	srv := qmptest.NewServer(t)
	c := dial(t, srv)
	big := strings.Repeat("x", 1<<20)
	srv.Reply("big", map[string]string{"blob": big})
	var out struct{ Blob string }
	if err := c.Execute(testCtx(t), "big", nil, &out); err != nil {
		t.Fatal(err)
	}
	if out.Blob != big {
		t.Errorf("reply blob is %d bytes, want %d", len(out.Blob), len(big))
	}
	if _, err := c.QueryStatus(testCtx(t)); err != nil {
		t.Errorf("after the big reply: %v", err)
	}
}

// A message over Options.MaxMessageBytes closes the connection with ErrMessageTooLarge.
func TestMessageTooLarge(t *testing.T) {
	srv := qmptest.NewServer(t)
	ctx := testCtx(t)
	c, err := qmp.Dial(ctx, srv.Path(), &qmp.Options{MaxMessageBytes: 1 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	srv.Reply("big", strings.Repeat("y", 4<<10))
	err = c.Execute(ctx, "big", nil, nil)
	if !errors.Is(err, qmp.ErrClosed) || !errors.Is(err, qmp.ErrMessageTooLarge) {
		t.Errorf("err = %v, want ErrClosed wrapping ErrMessageTooLarge", err)
	}
}

// A command QEMU never answers returns the context's error at the deadline; the
// connection stays usable and the late reply is discarded.
func TestContextDeadline(t *testing.T) {
	srv := qmptest.NewServer(t)
	c := dial(t, srv)
	release := make(chan struct{})
	srv.Handle("slow", func(ctx context.Context, _ json.RawMessage) (any, error) {
		select {
		case <-release:
			return "late", nil
		case <-ctx.Done():
			return nil, qmptest.ErrNoReply
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := c.Execute(ctx, "slow", nil, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("returned after %v", d)
	}
	close(release) // the late reply ("late") must not be taken as query-status's
	st, err := c.QueryStatus(testCtx(t))
	if err != nil || st.Status != qmp.RunStatePrelaunch {
		t.Errorf("after a timed-out command: %+v, %v", st, err)
	}

	// A cancelled (deadline-less) context also ends the wait.
	srv.Handle("hang", qmptest.Hang)
	ctx2, cancel2 := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel2)
	if err := c.Execute(ctx2, "hang", nil, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
	// An already expired context fails before sending.
	n := len(srv.Commands())
	if err := c.Execute(ctx, "query-status", nil, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("expired ctx: %v", err)
	}
	if len(srv.Commands()) != n {
		t.Errorf("a command was sent with an expired context")
	}
}

// Malformed input from the server closes the connection with a clear error; pending
// and later commands fail instead of hanging.
func TestMalformedMessages(t *testing.T) {
	for _, tc := range []struct {
		name, line, want string
	}{
		{"not json", `{"return": {}`, "decoding QMP message"},
		{"garbage", `hello`, "not a JSON object"},
		{"no kind", `{"foo": 1}`, "not exactly one of"},
		{"two kinds", `{"event": "X", "return": {}}`, "not exactly one of"},
		{"bad id", `{"return": {}, "id": "abc"}`, "id"},
		{"greeting again", `{"QMP": {"version": {"qemu": {"major": 1, "minor": 0, "micro": 0}, "package": ""}, "capabilities": []}}`, "unexpected greeting"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := qmptest.NewServer(t)
			c := dial(t, srv)
			srv.Handle("x", func(context.Context, json.RawMessage) (any, error) {
				srv.SendRaw([]byte(tc.line))
				return nil, qmptest.ErrNoReply
			})
			err := c.Execute(testCtx(t), "x", nil, nil)
			if !errors.Is(err, qmp.ErrClosed) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want ErrClosed mentioning %q", err, tc.want)
			}
			if strings.Count(err.Error(), "\n") != 0 {
				t.Errorf("error is not one line: %q", err)
			}
			if c.Err() == nil {
				t.Error("Err() = nil after a protocol error")
			}
			if _, err := c.QueryStatus(testCtx(t)); !errors.Is(err, qmp.ErrClosed) {
				t.Errorf("later command: %v", err)
			}
		})
	}
}

// QEMU greets one client per socket; a second client gets ErrNoGreeting at its deadline.
func TestSecondClientTimesOut(t *testing.T) {
	srv := qmptest.NewServer(t)
	first := dial(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := qmp.Dial(ctx, srv.Path(), nil)
	if !errors.Is(err, qmp.ErrNoGreeting) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second Dial: %v, want ErrNoGreeting and DeadlineExceeded", err)
	}
	if !strings.Contains(err.Error(), "another QMP client") {
		t.Errorf("error %q does not name the likely cause", err)
	}
	if _, err := first.QueryStatus(testCtx(t)); err != nil {
		t.Errorf("first client after the second gave up: %v", err)
	}
	// Reconnect: once the first leaves, a new client is served.
	first.Close()
	again := dial(t, srv)
	if _, err := again.QueryVersion(testCtx(t)); err != nil {
		t.Errorf("reconnected client: %v", err)
	}
}

func TestDialErrors(t *testing.T) {
	ctx := testCtx(t)
	_, err := qmp.Dial(ctx, "/nonexistent/qmp.sock", nil)
	if !errors.Is(err, syscall.ENOENT) || !strings.Contains(err.Error(), "dialing QMP socket") {
		t.Errorf("Dial missing socket: %v", err)
	}
	srv := qmptest.NewServer(t)
	srv.Fail("qmp_capabilities", qmp.ClassGenericError, "nope")
	_, err = qmp.Dial(ctx, srv.Path(), nil)
	var qe *qmp.Error
	if !errors.As(err, &qe) || qe.Desc != "nope" {
		t.Errorf("failed negotiation: %v", err)
	}
}

// Closing the client fails pending commands and closes subscriptions; QEMU hanging up
// reports ErrDisconnected.
func TestCloseAndDisconnect(t *testing.T) {
	srv := qmptest.NewServer(t)
	c := dial(t, srv)
	sub := c.Subscribe(1)
	srv.Handle("hang", qmptest.Hang)
	errc := make(chan error, 1)
	go func() { errc <- c.Execute(context.Background(), "hang", nil, nil) }()
	waitCommand(t, srv, "hang")
	c.Close()
	if err := <-errc; !errors.Is(err, qmp.ErrClosed) {
		t.Errorf("pending command after Close: %v", err)
	}
	if _, ok := <-sub.Events(); ok {
		t.Error("subscription still open after Close")
	}
	if _, ok := <-c.Subscribe(0).Events(); ok {
		t.Error("Subscribe after Close returned an open channel")
	}
	<-c.Done()

	c2 := dial(t, srv)
	go func() { errc <- c2.Execute(context.Background(), "hang", nil, nil) }()
	waitCommand(t, srv, "hang")
	srv.Disconnect()
	if err := <-errc; !errors.Is(err, qmp.ErrClosed) || !errors.Is(err, qmp.ErrDisconnected) {
		t.Errorf("pending command after QEMU hung up: %v", err)
	}
	if !errors.Is(c2.Err(), qmp.ErrDisconnected) {
		t.Errorf("Err = %v", c2.Err())
	}
}

func waitCommand(t *testing.T, srv *qmptest.Server, name string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		names := srv.CommandNames()
		if len(names) > 0 && names[len(names)-1] == name {
			return
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("server never received %s", name)
}

// Several goroutines issuing commands at once each get their own reply.
func TestConcurrentCommands(t *testing.T) {
	srv := qmptest.NewServer(t)
	c := dial(t, srv)
	srv.Handle("echo", func(_ context.Context, args json.RawMessage) (any, error) {
		return args, nil
	})
	errc := make(chan error, 50)
	for i := 0; i < 50; i++ {
		go func() {
			var out struct{ N int }
			err := c.Execute(testCtx(t), "echo", map[string]int{"n": i}, &out)
			if err == nil && out.N != i {
				err = fmt.Errorf("goroutine %d got reply %d", i, out.N)
			}
			errc <- err
		}()
	}
	for i := 0; i < 50; i++ {
		if err := <-errc; err != nil {
			t.Error(err)
		}
	}
}

func TestNewClientPipeAndFile(t *testing.T) {
	srv, conn := qmptest.NewPipe(t)
	c, err := qmp.NewClient(testCtx(t), conn, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.QueryVersion(testCtx(t)); err != nil {
		t.Error(err)
	}
	_ = srv

	// A connected socket fd (one end of a socketpair), as QEMU could be given.
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	ours := os.NewFile(uintptr(fds[0]), "qmp-client")
	theirs := os.NewFile(uintptr(fds[1]), "qmp-server")
	sconn, err := net.FileConn(theirs)
	theirs.Close()
	if err != nil {
		t.Fatal(err)
	}
	srv2 := qmptest.NewServer(t)
	go srv2.ServeConn(sconn)
	c2, err := qmp.NewClientFile(testCtx(t), ours, nil)
	ours.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if st, err := c2.QueryStatus(testCtx(t)); err != nil || st.Status != qmp.RunStatePrelaunch {
		t.Errorf("over a socketpair fd: %+v, %v", st, err)
	}
}

// A context without a deadline gets Options.CommandTimeout.
func TestDefaultCommandTimeout(t *testing.T) {
	srv := qmptest.NewServer(t)
	srv.Handle("hang", qmptest.Hang)
	c, err := qmp.Dial(testCtx(t), srv.Path(), &qmp.Options{CommandTimeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Execute(context.Background(), "hang", nil, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want DeadlineExceeded from the default timeout", err)
	}
}

// A server that stops reading: the write is bounded by ctx, the caller gets an error and
// the connection (now out of step) is closed.
func TestWriteBlockedByPeer(t *testing.T) {
	server, client := net.Pipe()
	defer server.Close()
	go func() {
		server.Write([]byte(`{"QMP": {"version": {"qemu": {"major": 10, "minor": 0, "micro": 2}, "package": ""}, "capabilities": []}}` + "\r\n"))
		buf := make([]byte, 4096)
		n, _ := server.Read(buf) // qmp_capabilities
		if n > 0 {
			server.Write([]byte(`{"return": {}, "id": 1}` + "\r\n"))
		}
		// ...and never read again.
	}()
	c, err := qmp.NewClient(testCtx(t), client, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	err = c.Execute(ctx, "query-status", nil, nil)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "writing request") {
		t.Errorf("err = %v, want a write deadline error", err)
	}
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("connection not closed after a partial write")
	}
}

func TestSubscriptionWait(t *testing.T) {
	srv := qmptest.NewServer(t)
	c := dial(t, srv)
	sub := c.Subscribe(0)
	ctx := testCtx(t)
	if err := c.SystemPowerdown(ctx); err != nil { // the fake emits POWERDOWN
		t.Fatal(err)
	}
	srv.Emit(qmp.EventShutdown, qmp.ShutdownEvent{Guest: true, Reason: "guest-shutdown"})
	ev, err := sub.Wait(ctx, qmp.EventShutdown, qmp.EventGuestPanicked)
	if err != nil || ev.Typed != (qmp.ShutdownEvent{Guest: true, Reason: "guest-shutdown"}) {
		t.Fatalf("Wait = %+v, %v", ev, err)
	}
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := sub.Wait(short, qmp.EventShutdown); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Wait with nothing coming: %v", err)
	}
	srv.Disconnect()
	if _, err := sub.Wait(ctx); !errors.Is(err, qmp.ErrClosed) || !errors.Is(err, qmp.ErrDisconnected) {
		t.Errorf("Wait after QEMU hung up: %v", err)
	}
}

// A peer that hangs up before greeting (QEMU exiting at startup) is ErrDisconnected.
func TestHangupBeforeGreeting(t *testing.T) {
	server, client := net.Pipe()
	server.Close()
	_, err := qmp.NewClient(testCtx(t), client, nil)
	if !errors.Is(err, qmp.ErrDisconnected) || !strings.Contains(err.Error(), "reading QMP greeting") {
		t.Errorf("err = %v, want ErrDisconnected while reading the greeting", err)
	}
}

// Typed nil arguments are sent as no arguments (QEMU rejects "arguments": null).
func TestTypedNilArguments(t *testing.T) {
	srv := qmptest.NewServer(t)
	c := dial(t, srv)
	var m map[string]any
	for _, args := range []any{nil, json.RawMessage(nil), m, (*struct{ X int })(nil)} {
		if err := c.Execute(testCtx(t), "query-status", args, nil); err != nil {
			t.Fatal(err)
		}
	}
	for _, cmd := range srv.Commands()[1:] {
		if cmd.Args != nil {
			t.Errorf("sent arguments %s, want none", cmd.Args)
		}
	}
}
