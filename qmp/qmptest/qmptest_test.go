package qmptest_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/snpd/snpd/qmp"
	"github.com/snpd/snpd/qmp/qmptest"
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// The wire format matches QEMU's: greeting first, "\r\n" line ends, capabilities
// negotiation required, the request id echoed.
func TestWireFormat(t *testing.T) {
	srv := qmptest.NewServer(t)
	conn, err := net.Dial("unix", srv.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(conn)
	line, err := r.ReadString('\n')
	if err != nil || !strings.HasSuffix(line, "\r\n") || !strings.HasPrefix(line, `{"QMP":`) {
		t.Fatalf("greeting %q, %v", line, err)
	}
	send := func(s string) string {
		t.Helper()
		if _, err := conn.Write([]byte(s + "\n")); err != nil {
			t.Fatal(err)
		}
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(line)
	}
	if got := send(`{"execute":"query-status","id":"a"}`); !strings.Contains(got, `"class":"CommandNotFound"`) || !strings.Contains(got, `"id":"a"`) {
		t.Errorf("before negotiation: %s", got)
	}
	if got := send(`{"execute":"qmp_capabilities","id":7}`); got != `{"id":7,"return":{}}` {
		t.Errorf("qmp_capabilities: %s", got)
	}
	if got := send(`{"execute":"query-status"}`); got != `{"return":{"running":false,"status":"prelaunch"}}` {
		t.Errorf("query-status: %s", got)
	}
	if got := send(`{"execute":"frobnicate","id":1}`); got != `{"error":{"class":"CommandNotFound","desc":"The command frobnicate has not been found"},"id":1}` {
		t.Errorf("unknown command: %s", got)
	}
	// quit: reply, SHUTDOWN, hang up.
	if got := send(`{"execute":"quit","id":2}`); got != `{"id":2,"return":{}}` {
		t.Errorf("quit: %s", got)
	}
	line, _ = r.ReadString('\n')
	if !strings.Contains(line, `"event":"SHUTDOWN"`) || !strings.Contains(line, `"reason":"host-qmp-quit"`) {
		t.Errorf("after quit: %q", line)
	}
	if _, err := r.ReadString('\n'); err == nil {
		t.Error("connection still open after quit")
	}
	want := "query-status qmp_capabilities query-status frobnicate quit"
	if got := strings.Join(srv.CommandNames(), " "); got != want {
		t.Errorf("recorded %q, want %q", got, want)
	}
}

func TestHandlersAndEmit(t *testing.T) {
	srv := qmptest.NewServer(t)
	if err := srv.Emit("STOP", nil); err == nil {
		t.Error("Emit with no client connected succeeded")
	}
	ctx := ctxT(t)
	c, err := qmp.Dial(ctx, srv.Path(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := srv.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	srv.Handle("plain-error", func(context.Context, json.RawMessage) (any, error) {
		return nil, errors.New("boom")
	})
	var qe *qmp.Error
	if err := c.Execute(ctx, "plain-error", nil, nil); !errors.As(err, &qe) || qe.Class != qmp.ClassGenericError || qe.Desc != "boom" {
		t.Errorf("plain error: %v", err)
	}
	srv.Reply("query-status", qmp.StatusInfo{Status: "guest-panicked"})
	if st, err := c.QueryStatus(ctx); err != nil || st.Status != "guest-panicked" {
		t.Errorf("canned: %+v %v", st, err)
	}
	sub := c.Subscribe(0)
	if err := srv.Emit("CUSTOM", map[string]int{"n": 1}); err != nil {
		t.Fatal(err)
	}
	if ev := <-sub.Events(); ev.Name != "CUSTOM" || string(ev.Data) != `{"n":1}` {
		t.Errorf("event %+v", ev)
	}
	srv.SetStatus(qmp.RunStatePaused)
	if srv.Status() != qmp.RunStatePaused {
		t.Error("SetStatus")
	}
}

func TestWithoutGreeting(t *testing.T) {
	srv := qmptest.NewServer(t, qmptest.WithoutGreeting())
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := qmp.Dial(ctx, srv.Path(), nil); !errors.Is(err, qmp.ErrNoGreeting) {
		t.Errorf("Dial = %v, want ErrNoGreeting", err)
	}
	srv.Close()
	srv.Close()
}
