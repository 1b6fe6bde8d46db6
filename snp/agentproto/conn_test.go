package agentproto

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// hostHandler answers guest requests the way snpd does, for VM "vm1" only.
func hostHandler(_ context.Context, f *Frame) (Type, any) {
	switch f.Type {
	case TypeRecordRequest:
		var r RecordRequest
		if err := f.Decode(&r); err != nil {
			return TypeError, &Error{Message: err.Error()}
		}
		return TypeRecordResponse, &RecordResponse{VM: "vm1", Record: json.RawMessage(`{"name":"vm1"}`)}
	case TypeChainRequest:
		return TypeError, &Error{Message: "no certificates cached"}
	}
	return TypeError, &Error{Message: "unsupported request type " + f.Type.String()}
}

// connPair runs a host Conn and a guest Conn over a unix socket pair.
func connPair(t *testing.T, src ReportSource) (host, guest *Conn) {
	t.Helper()
	l, err := net.Listen("unix", t.TempDir()+"/s")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	a, err := net.Dial("unix", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	host, guest = NewConn(a, hostHandler), NewConn(b, AgentHandler(src))
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = host.Run(ctx) }()
	go func() { defer wg.Done(); _ = guest.Run(ctx) }()
	t.Cleanup(func() { cancel(); a.Close(); b.Close(); wg.Wait() })
	return host, guest
}

// TestConnBothDirections: on one connection the host challenges the agent while the
// agent asks the host for its record, concurrently, and every answer reaches its caller.
func TestConnBothDirections(t *testing.T) {
	host, guest := connPair(t, &fakeSource{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 2*MaxQueued*5)
	// MaxQueued callers per direction, 5 calls each: never more in flight than the peer
	// queues, so none is answered "busy".
	for g := 0; g < MaxQueued; g++ {
		wg.Add(2)
		go func() {
			defer wg.Done()
			for i := 0; i < 5; i++ {
				f, err := host.Call(ctx, TypeReportRequest, &ReportRequest{Nonce: []byte{byte(g*5 + i + 1)}})
				if err == nil {
					var r *ReportResponse
					if r, err = DecodeReportResponse(f); err == nil && len(r.Report) != 1184 {
						err = errors.New("short report")
					}
				}
				errs <- err
			}
		}()
		go func() {
			defer wg.Done()
			for i := 0; i < 5; i++ {
				f, err := guest.Call(ctx, TypeRecordRequest, &RecordRequest{VM: "other"})
				var r RecordResponse
				if err == nil {
					err = DecodeAnswer(f, TypeRecordResponse, &r)
				}
				if err == nil && r.VM != "vm1" {
					err = errors.New("answer for " + r.VM)
				}
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	f, err := guest.Call(ctx, TypeChainRequest, &ChainRequest{})
	var cr ChainResponse
	if err == nil {
		err = DecodeAnswer(f, TypeChainResponse, &cr)
	}
	var re *RemoteError
	if !errors.As(err, &re) || re.Message != "no certificates cached" {
		t.Fatalf("chain: %v, want the host's refusal", err)
	}
	if _, err := guest.Call(ctx, TypeRecordResponse, &RecordResponse{}); err == nil {
		t.Fatal("Call accepted an answer type as a request")
	}
	if _, err := guest.Call(context.Background(), TypePing, &Ping{}); err == nil {
		t.Fatal("Call without a deadline accepted")
	}
}

// TestConnClosedFailsCalls: a Call pending when the peer goes away fails with ErrClosed
// instead of waiting for its deadline, and later Calls fail at once.
func TestConnClosedFailsCalls(t *testing.T) {
	a, b := net.Pipe()
	c := NewConn(a, nil)
	done := make(chan error, 1)
	go func() { done <- c.Run(context.Background()) }()
	go func() { // read the request, then hang up
		buf := make([]byte, 64)
		_, _ = b.Read(buf)
		b.Close()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	if _, err := c.Call(ctx, TypePing, &Ping{}); !errors.Is(err, ErrClosed) {
		t.Fatalf("got %v, want ErrClosed", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatal("pending call waited for its deadline")
	}
	<-done
	if _, err := c.Call(ctx, TypePing, &Ping{}); !errors.Is(err, ErrClosed) {
		t.Fatalf("after close: %v", err)
	}
}

// TestOldAgentRefusesGuestTypes: Serve (the version 1 agent loop) answers the new
// request types with "unsupported request type" rather than failing the stream, and the
// strict decoders refuse oversized or malformed guest messages.
func TestOldAgentRefusesGuestTypes(t *testing.T) {
	c := pipe(t, &fakeSource{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	f, err := Exchange(ctx, c, TypeRecordRequest, 3, &RecordRequest{})
	if err != nil || f.Type != TypeError || !strings.Contains(string(f.Payload), "unsupported request type record-request") {
		t.Fatalf("got %+v %v", f, err)
	}
	for _, bad := range []struct {
		t   Type
		msg any
	}{
		{TypeRecordRequest, map[string]any{"vm": strings.Repeat("x", MaxVMName+1)}},
		{TypeRecordRequest, map[string]any{"name": "other"}},
		{TypeRecordResponse, map[string]any{"vm": "vm1", "record": []int{1}}},
		{TypeRecordResponse, map[string]any{"vm": "", "record": map[string]any{}}},
		{TypeChainResponse, map[string]any{"vm": "vm1", "chain_pem": strings.Repeat("x", MaxChainPEM+1)}},
		{TypeChainRequest, map[string]any{"vm": "other"}},
	} {
		var buf bytes.Buffer
		if err := WriteFrame(&buf, bad.t, 1, bad.msg); err != nil {
			t.Fatal(err)
		}
		fr, err := ReadFrame(&buf)
		if err != nil {
			t.Fatal(err)
		}
		var dst any
		switch bad.t {
		case TypeRecordRequest:
			dst = &RecordRequest{}
		case TypeRecordResponse:
			dst = &RecordResponse{}
		case TypeChainRequest:
			dst = &ChainRequest{}
		default:
			dst = &ChainResponse{}
		}
		if err := fr.Decode(dst); err == nil {
			t.Fatalf("%v %v: decoded", bad.t, bad.msg)
		}
	}
}

// TestConnBusy: requests beyond MaxQueued while the handler is stuck are answered
// "busy" at once, not queued without bound.
func TestConnBusy(t *testing.T) {
	release := make(chan struct{})
	a, b := net.Pipe()
	c := NewConn(b, func(context.Context, *Frame) (Type, any) { <-release; return TypePong, &Pong{} })
	done := make(chan error, 1)
	go func() { done <- c.Run(context.Background()) }()
	peer := NewConn(a, nil)
	go func() { _ = peer.Run(context.Background()) }()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	results := make(chan *Frame, 10)
	for i := 0; i < 10; i++ {
		go func() {
			f, err := peer.Call(ctx, TypePing, &Ping{})
			if err != nil {
				t.Error(err)
			}
			results <- f
		}()
	}
	busy := 0
	for busy < 10-MaxQueued-1 {
		f := <-results
		if f == nil || f.Type != TypeError || !strings.Contains(string(f.Payload), "busy") {
			t.Fatalf("got %+v before release, want busy", f)
		}
		busy++
	}
	close(release)
	for i := busy; i < 10; i++ {
		if f := <-results; f == nil || f.Type != TypePong {
			t.Fatalf("after release: %+v", f)
		}
	}
	a.Close()
	b.Close()
	<-done
}
