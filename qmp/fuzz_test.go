package qmp

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// FuzzDecodeStream feeds arbitrary bytes, as read from a QMP socket, through the line
// reader and message decoder the client uses: it must never panic, and every message it
// accepts must be of a known kind with its invariants held.
func FuzzDecodeStream(f *testing.F) {
	for _, s := range []string{
		`{"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": "Debian"}, "capabilities": ["oob"]}}` + "\r\n",
		`{"return": {}, "id": 1}` + "\r\n",
		`{"return": [{"name": "policy", "type": "uint64"}], "id": 7}` + "\n",
		`{"error": {"class": "GenericError", "desc": "SEV is not enabled in KVM"}, "id": 2}` + "\n",
		`{"error": {"class": "GenericError", "desc": "JSON parse error"}}` + "\n",
		`{"timestamp": {"seconds": 1732665600, "microseconds": 12}, "event": "SHUTDOWN", "data": {"guest": false, "reason": "host-qmp-quit"}}` + "\r\n",
		`{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "GUEST_PANICKED", "data": {"action": "pause", "info": {"type": "hyper-v"}}}` + "\n",
		`{"event": "DEVICE_DELETED", "data": {"path": "/machine/peripheral/d0"}}` + "\n",
		`{"event": "RESUME"}` + "\n" + `{"event": "STOP"}` + "\n",
		`{"return": {}` + "\n",
		"\n\n{\"id\": 18446744073709551615, \"return\": null}\n",
		`{"QMP": {}}` + "\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bufio.NewReaderSize(bytes.NewReader(data), 16)
		for {
			line, err := readLine(r, 4096)
			if err != nil {
				return
			}
			if len(line) > 4096+2 {
				t.Fatalf("readLine returned %d bytes over its limit", len(line))
			}
			if len(bytes.TrimSpace(line)) == 0 {
				continue
			}
			m, err := decodeMessage(line)
			if err != nil {
				if err.Error() == "" {
					t.Fatal("empty error message")
				}
				continue
			}
			switch m.kind {
			case kindGreeting:
			case kindEvent:
				if m.event.Name == "" {
					t.Fatal("event without a name accepted")
				}
			case kindReply:
				if m.qmpErr == nil && m.ret == nil {
					t.Fatal("reply with neither return nor error accepted")
				}
				if m.qmpErr != nil && m.ret != nil {
					t.Fatal("reply with both return and error")
				}
				if m.ret != nil && !json.Valid(m.ret) {
					t.Fatalf("invalid return JSON %q", m.ret)
				}
			default:
				t.Fatalf("unknown kind %d", m.kind)
			}
		}
	})
}

// FuzzClient runs a Client against a server that greets, negotiates and then sends
// arbitrary bytes and hangs up: Execute must return (reply, QMP error or ErrClosed) and
// nothing may panic.
func FuzzClient(f *testing.F) {
	f.Add([]byte(`{"return": {"a": 1}, "id": 2}` + "\n"))
	f.Add([]byte(`{"event": "STOP"}` + "\n" + `{"error": {"class": "X", "desc": "y"}}` + "\n"))
	f.Add([]byte(`{"return": 1, "id": 99}` + "\n" + `{"id": 2, "return": "ok"}` + "\n"))
	f.Add([]byte("garbage\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		server, client := net.Pipe()
		go func() {
			defer server.Close()
			greeting := `{"QMP": {"version": {"qemu": {"major": 10, "minor": 0, "micro": 2}, "package": ""}, "capabilities": []}}` + "\r\n"
			if _, err := server.Write([]byte(greeting)); err != nil {
				return
			}
			br := bufio.NewReader(server)
			if _, err := br.ReadBytes('\n'); err != nil {
				return
			}
			if _, err := server.Write([]byte(`{"return": {}, "id": 1}` + "\r\n")); err != nil {
				return
			}
			go io.Copy(io.Discard, br)
			server.Write(data)
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := NewClient(ctx, client, &Options{MaxMessageBytes: 1 << 12})
		if err != nil {
			t.Fatalf("handshake: %v", err)
		}
		defer c.Close()
		sub := c.Subscribe(1)
		var out any
		err = c.Execute(ctx, "x", nil, &out)
		if errors.Is(err, context.DeadlineExceeded) {
			t.Fatal("Execute hung until the deadline")
		}
		<-c.Done() // the server hung up
		for range sub.Events() {
		}
	})
}
