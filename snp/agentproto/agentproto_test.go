package agentproto

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"net"
	"strings"
	"testing"
	"time"
)

type fakeSource struct {
	got [64]byte
	err error
}

func (s *fakeSource) GetReport(rd [64]byte) ([]byte, []byte, error) {
	s.got = rd
	if s.err != nil {
		return nil, nil, s.err
	}
	return bytes.Repeat([]byte{0xab}, 1184), []byte{1, 2, 3}, nil
}

func TestReportDataBinding(t *testing.T) {
	// Recompute the documented construction by hand.
	nonce, _ := hex.DecodeString("00112233445566778899aabbccddeeff")
	ud := []byte("hello")
	var in []byte
	in = append(in, "snpd-attest-v1"...)
	in = append(in, 0, 0, 16)
	in = append(in, nonce...)
	in = append(in, ud...)
	want := sha512.Sum512(in)
	if got, err := BindReportData(nonce, ud); err != nil || got != want {
		t.Fatalf("BindReportData = %x, %v, want %x", got, err, want)
	}
	// Moving a byte between nonce and user data must change the binding.
	if got, _ := BindReportData(nonce[:15], append([]byte{nonce[15]}, ud...)); got == want {
		t.Fatal("binding is ambiguous between nonce and user data")
	}
}

// TestBindReportDataRefusesWrapping: the nonce's length is hashed in 16 bits, so at 65536
// bytes (nonce N, user data U) would bind like (empty nonce, N || U). The binding function
// itself refuses every nonce outside 1..64 bytes and user data over 64 bytes; no caller
// can get a wrapped binding from it.
func TestBindReportDataRefusesWrapping(t *testing.T) {
	long := bytes.Repeat([]byte{7}, 65536)
	for _, c := range []struct {
		nonce, ud []byte
		want      string
	}{
		{nil, nil, "nonce is 0 bytes, want 1..64"},
		{long[:65], nil, "nonce is 65 bytes, want 1..64"},
		{long, nil, "nonce is 65536 bytes, want 1..64"},
		{long[:16], long[:65], "user data is 65 bytes, want at most 64"},
	} {
		got, err := BindReportData(c.nonce, c.ud)
		if err == nil || !strings.Contains(err.Error(), c.want) || got != ([64]byte{}) {
			t.Errorf("nonce %d, user data %d bytes: %x, %v; want %q", len(c.nonce), len(c.ud), got[:4], err, c.want)
		}
	}
	for _, n := range []int{1, 64} {
		if _, err := BindReportData(long[:n], long[:64]); err != nil {
			t.Errorf("%d-byte nonce: %v", n, err)
		}
	}
}

func pipe(t *testing.T, src ReportSource) net.Conn {
	t.Helper()
	a, b := net.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, b, src) }()
	t.Cleanup(func() {
		cancel()
		a.Close()
		b.Close()
		<-done
	})
	return a
}

func TestExchangeReport(t *testing.T) {
	src := &fakeSource{}
	c := pipe(t, src)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	nonce := []byte("0123456789abcdef")
	f, err := Exchange(ctx, c, TypeReportRequest, 7, &ReportRequest{Nonce: nonce})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := DecodeReportResponse(f)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Report) != 1184 || !bytes.Equal(resp.CertTable, []byte{1, 2, 3}) {
		t.Fatalf("unexpected response %d bytes report, cert table %x", len(resp.Report), resp.CertTable)
	}
	if want, err := BindReportData(nonce, nil); err != nil || src.got != want {
		t.Fatal("agent did not bind REPORT_DATA to the nonce")
	}
}

func TestExchangeAgentError(t *testing.T) {
	c := pipe(t, &fakeSource{err: errors.New("guest has no SEV-SNP report device")})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	f, err := Exchange(ctx, c, TypeReportRequest, 1, &ReportRequest{Nonce: []byte{1}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = DecodeReportResponse(f)
	var re *RemoteError
	if !errors.As(err, &re) || re.Message != "guest has no SEV-SNP report device" {
		t.Fatalf("got %v, want the agent's error", err)
	}
}

func TestExchangeRejectsBadNonce(t *testing.T) {
	c := pipe(t, &fakeSource{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	f, err := Exchange(ctx, c, TypeReportRequest, 1, &ReportRequest{Nonce: make([]byte, 65)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := DecodeReportResponse(f); err == nil || !strings.Contains(err.Error(), "nonce is 65 bytes") {
		t.Fatalf("got %v, want a nonce size error", err)
	}
}

func TestExchangeTimesOut(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go func() { // a guest that reads but never answers
		buf := make([]byte, 4096)
		for {
			if _, err := b.Read(buf); err != nil {
				return
			}
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := Exchange(ctx, a, TypePing, 1, &Ping{})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want deadline exceeded", err)
	}
	if _, err := Exchange(context.Background(), a, TypePing, 1, &Ping{}); err == nil {
		t.Fatal("exchange without deadline accepted")
	}
}

func TestServeResyncsAfterGarbage(t *testing.T) {
	c := pipe(t, &fakeSource{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// A stale partial frame then garbage: the agent reports a framing error and then
	// answers the next well-formed request.
	go func() { _, _ = c.Write([]byte("SNPX\x01garbage-bytes")) }()
	br := bufio.NewReader(c)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	f, err := ReadFrame(br)
	if err != nil || f.Type != TypeError {
		t.Fatalf("want a framing error frame, got %+v %v", f, err)
	}
	f, err = Exchange(ctx, struct{ net.Conn }{c}, TypePing, 9, &Ping{})
	if err != nil || f.Type != TypePong {
		t.Fatalf("after resync: %+v %v", f, err)
	}
}

func TestVersionMismatch(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteFrame(&buf, TypePing, 3, &Ping{}); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	b[4] = 2
	_, err := ReadFrame(bytes.NewReader(b))
	var ve ErrVersion
	if !errors.As(err, &ve) || ve.Got != 2 {
		t.Fatalf("got %v, want version error", err)
	}
}

func TestReadFrameLimits(t *testing.T) {
	h := []byte("SNPA\x01\x02\x00\x00\x00\x00\x00\x01\xff\xff\xff\xff")
	if _, err := ReadFrame(bytes.NewReader(h)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("got %v, want ErrTooLarge", err)
	}
	var buf bytes.Buffer
	_ = WriteFrame(&buf, TypeReportResponse, 1, map[string]any{"report": "AAAA", "extra": 1})
	f, err := ReadFrame(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := DecodeReportResponse(f); err == nil || !strings.Contains(err.Error(), "unknown field") {
		t.Fatalf("got %v, want unknown field error", err)
	}
}

// FuzzReadFrame feeds arbitrary bytes to the frame reader and the strict decoders: no
// panic, and a decoded frame re-encodes to the same header.
func FuzzReadFrame(f *testing.F) {
	var buf bytes.Buffer
	_ = WriteFrame(&buf, TypeReportRequest, 1, &ReportRequest{Nonce: []byte{1, 2, 3}})
	f.Add(buf.Bytes())
	buf.Reset()
	_ = WriteFrame(&buf, TypeReportResponse, 2, &ReportResponse{Report: []byte{1}, CertTable: []byte{2}})
	f.Add(buf.Bytes())
	buf.Reset()
	_ = WriteFrame(&buf, TypeError, 3, &Error{Message: "x"})
	f.Add(buf.Bytes())
	buf.Reset()
	_ = WriteFrame(&buf, TypeRecordRequest, 4, &RecordRequest{VM: "vm1"})
	f.Add(buf.Bytes())
	buf.Reset()
	_ = WriteFrame(&buf, TypeRecordResponse, 5, &RecordResponse{VM: "vm1", Record: []byte(`{"a":1}`)})
	f.Add(buf.Bytes())
	buf.Reset()
	_ = WriteFrame(&buf, TypeChainResponse, 6, &ChainResponse{VM: "vm1", ChainPEM: "x"})
	f.Add(buf.Bytes())
	f.Add([]byte("SNPA"))
	f.Fuzz(func(t *testing.T, data []byte) {
		fr, err := ReadFrame(bytes.NewReader(data))
		if err != nil {
			return
		}
		if len(fr.Payload) > MaxPayload {
			t.Fatalf("payload %d over limit", len(fr.Payload))
		}
		var req ReportRequest
		if fr.Decode(&req) == nil && req.Validate() != nil {
			t.Fatal("Decode accepted an invalid request")
		}
		if resp, err := DecodeReportResponse(fr); err == nil && resp.Validate() != nil {
			t.Fatal("DecodeReportResponse accepted an invalid response")
		}
		var p Provision
		if fr.Decode(&p) == nil && p.Validate() != nil {
			t.Fatal("Decode accepted an invalid provision")
		}
		var rr RecordRequest
		if fr.Decode(&rr) == nil && rr.Validate() != nil {
			t.Fatal("Decode accepted an invalid record request")
		}
		var rec RecordResponse
		if DecodeAnswer(fr, TypeRecordResponse, &rec) == nil && rec.Validate() != nil {
			t.Fatal("DecodeAnswer accepted an invalid record response")
		}
		var ch ChainResponse
		if DecodeAnswer(fr, TypeChainResponse, &ch) == nil && ch.Validate() != nil {
			t.Fatal("DecodeAnswer accepted an invalid chain response")
		}
		// The host's handler path: whatever the guest sends gets one bounded answer.
		if typ, msg := agentAnswer(fr, &fakeSource{}); typ == TypeError {
			if e := msg.(*Error); len(e.Message) > MaxMessage+64 {
				t.Fatalf("error answer of %d bytes", len(e.Message))
			}
		}
		_, _ = Resync(bufio.NewReader(bytes.NewReader(data)), 1<<16)
	})
}

type provSource struct {
	fakeSource
	got *Provision
}

func (p *provSource) Provision(pr *Provision) error { p.got = pr; return nil }

func TestProvision(t *testing.T) {
	src := &provSource{}
	c := pipe(t, src)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	f, err := Exchange(ctx, c, TypeProvision, 4, &Provision{Record: []byte(`{"name":"vm1"}`), ChainPEM: "pem"})
	if err != nil || f.Type != TypeAck {
		t.Fatalf("provision: %+v %v", f, err)
	}
	if string(src.got.Record) != `{"name":"vm1"}` || src.got.ChainPEM != "pem" {
		t.Fatalf("agent got %+v", src.got)
	}
	// Not a JSON object: refused by the agent.
	f, err = Exchange(ctx, c, TypeProvision, 5, map[string]any{"record": []int{1}})
	if err != nil || f.Type != TypeError {
		t.Fatalf("bad provision: %+v %v", f, err)
	}
	// An agent without a Provisioner says so.
	c2 := pipe(t, &fakeSource{})
	f, err = Exchange(ctx, c2, TypeProvision, 6, &Provision{Record: []byte(`{}`)})
	if err != nil || f.Type != TypeError {
		t.Fatalf("no provisioner: %+v %v", f, err)
	}
}
