package guestchan

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/snpd/snpd/daemon/guestchan/guestchantest"
	"github.com/snpd/snpd/snp/agentproto"
)

// sessionRecords serves a distinct record per VM name, as managerRecord does for
// running VMs.
func sessionRecords(name string) ([]byte, error) {
	if name == "gone" {
		return nil, errors.New("vm gone is not running")
	}
	return []byte(fmt.Sprintf(`{"name":%q,"expected_digest":"%x"}`, name, name)), nil
}

// TestGuestSessionOwnRecordOnly: on VM vm1's serial session the guest gets vm1's record
// even when it names another VM; the chain is refused until snpd holds one; host
// challenges travel on the same single connection.
func TestGuestSessionOwnRecordOnly(t *testing.T) {
	q := guestchantest.NewChardev(t)
	g := &GuestSessions{Record: sessionRecords}
	defer g.Close()
	s := g.StartSerial("vm1", q.Socket)
	if again := g.StartSerial("vm1", q.Socket); again != s {
		t.Fatal("a second StartSerial replaced the running session")
	}
	guest, _ := q.Guest(t)
	for _, claim := range []string{"", "vm1", "vm2", "../vm2"} {
		r, err := guestchantest.AskRecord(t, guest, claim)
		if err != nil {
			t.Fatalf("record (claiming %q): %v", claim, err)
		}
		var rec struct{ Name string }
		if err := json.Unmarshal(r.Record, &rec); err != nil || r.VM != "vm1" || rec.Name != "vm1" {
			t.Fatalf("claiming %q got vm %q record %s", claim, r.VM, r.Record)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	f, err := guest.Call(ctx, agentproto.TypeChainRequest, &agentproto.ChainRequest{})
	var cr agentproto.ChainResponse
	if err == nil {
		err = agentproto.DecodeAnswer(f, agentproto.TypeChainResponse, &cr)
	}
	var re *agentproto.RemoteError
	if !errors.As(err, &re) || !strings.HasPrefix(re.Message, "no certificates cached") {
		t.Fatalf("chain without certificates: %v", err)
	}
	g.RememberChain("vm2", "-----BEGIN CERTIFICATE-----\nvm2\n-----END CERTIFICATE-----\n")
	if f, err = guest.Call(ctx, agentproto.TypeChainRequest, &agentproto.ChainRequest{}); err != nil || f.Type != agentproto.TypeError {
		t.Fatalf("vm1 got vm2's chain: %+v %v", f, err)
	}
	g.RememberChain("vm1", "-----BEGIN CERTIFICATE-----\nvm1\n-----END CERTIFICATE-----\n")
	f, err = guest.Call(ctx, agentproto.TypeChainRequest, &agentproto.ChainRequest{})
	if err == nil {
		err = agentproto.DecodeAnswer(f, agentproto.TypeChainResponse, &cr)
	}
	if err != nil || cr.VM != "vm1" || !strings.Contains(cr.ChainPEM, "vm1") {
		t.Fatalf("chain: %+v %v", cr, err)
	}
	// A host challenge goes over the session (QEMU serves one client at a time).
	gc := GuestChannel{SerialSocket: q.Socket, Session: s, Timeout: 5 * time.Second}
	if _, err := gc.Challenge(context.Background(), []byte("nonce"), nil); err == nil || !strings.Contains(err.Error(), "guest has no SEV-SNP report device") {
		t.Fatalf("challenge through the session: %v", err)
	}
	if err := gc.Ping(context.Background()); err != nil {
		t.Fatalf("ping through the session: %v", err)
	}
	// Many verifiers at once: each waits its turn on the session, none is "busy".
	errc := make(chan error, 3*agentproto.MaxQueued)
	for range cap(errc) {
		go func() { errc <- gc.Ping(context.Background()) }()
	}
	for range cap(errc) {
		if err := <-errc; err != nil {
			t.Fatalf("concurrent ping: %v", err)
		}
	}
	if n := q.Accepts(); n != 1 {
		t.Fatalf("snpd opened %d connections to agent.sock, want 1", n)
	}
}

// TestGuestSessionReconnects: when the connection drops (QEMU's chardev closed it),
// the session dials again with backoff; a challenge issued meanwhile waits for the new
// connection; Stop ends the session and no dial follows.
func TestGuestSessionReconnects(t *testing.T) {
	q := guestchantest.NewChardev(t)
	g := &GuestSessions{Record: sessionRecords}
	defer g.Close()
	s := g.StartSerial("vm1", q.Socket)
	_, raw := q.Guest(t)
	raw.Close()
	gc := GuestChannel{SerialSocket: q.Socket, Session: s, Timeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- gc.Ping(context.Background()) }()
	guest, raw2 := q.Guest(t)
	if err := <-errc; err != nil {
		t.Fatalf("ping across the reconnect: %v", err)
	}
	if r, err := guestchantest.AskRecord(t, guest, ""); err != nil || r.VM != "vm1" {
		t.Fatalf("record after reconnect: %+v %v", r, err)
	}
	g.Stop("vm1")
	_ = raw2.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := raw2.Read(make([]byte, 1)); err == nil {
		t.Fatal("the session's connection stayed open after Stop")
	}
	time.Sleep(3 * sessionBackoffMin)
	if n := q.Accepts(); n != 2 {
		t.Fatalf("%d connections after Stop, want 2", n)
	}
	if g.Session("vm1") != nil {
		t.Fatal("session still registered after Stop")
	}
	if _, err := s.Call(ctxT(t, time.Second), agentproto.TypePing, &agentproto.Ping{}); !errors.Is(err, agentproto.ErrClosed) {
		t.Fatalf("call on a stopped session: %v", err)
	}
}

// TestGuestSessionBoundsGuestInput: a frame announcing more than MaxPayload, garbage,
// an unknown field and a host-only request type each get an error answer and the
// session keeps serving; a flood is rate limited.
func TestGuestSessionBoundsGuestInput(t *testing.T) {
	q := guestchantest.NewChardev(t)
	g := &GuestSessions{Record: sessionRecords}
	defer g.Close()
	g.StartSerial("vm1", q.Socket)
	c := q.Raw(t)
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	var h [agentproto.HeaderSize]byte
	copy(h[:], agentproto.Magic)
	h[4], h[5] = agentproto.Version, byte(agentproto.TypeRecordRequest)
	binary.BigEndian.PutUint32(h[12:], agentproto.MaxPayload+1)
	if _, err := c.Write(append(h[:], "garbage"...)); err != nil {
		t.Fatal(err)
	}
	f, err := agentproto.ReadFrame(c)
	if err != nil || f.Type != agentproto.TypeError || !strings.Contains(string(f.Payload), "too large") {
		t.Fatalf("oversized frame: %+v %v", f, err)
	}
	ctx := ctxT(t, 5*time.Second)
	for _, tc := range []struct {
		t    agentproto.Type
		msg  any
		want string
	}{
		{agentproto.TypeRecordRequest, map[string]any{"vm": "vm1", "as_root": true}, "unknown field"},
		{agentproto.TypeRecordRequest, map[string]any{"vm": strings.Repeat("v", 100)}, "vm name is 100 bytes"},
		{agentproto.TypeReportRequest, &agentproto.ReportRequest{Nonce: []byte{1}}, "unsupported request type"},
		{agentproto.TypeRecordRequest, &agentproto.RecordRequest{}, `"vm":"vm1"`},
	} {
		f, err := agentproto.Exchange(ctx, c, tc.t, 7, tc.msg)
		if err != nil || !strings.Contains(string(f.Payload), tc.want) {
			t.Fatalf("%v %v: got %+v %v, want %q", tc.t, tc.msg, f, err, tc.want)
		}
	}
	limited := 0
	for i := 0; i < 2*guestBurst; i++ {
		f, err := agentproto.Exchange(ctx, c, agentproto.TypeRecordRequest, uint32(100+i), &agentproto.RecordRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if f.Type == agentproto.TypeError && strings.Contains(string(f.Payload), "rate limited") {
			limited++
		}
	}
	if limited == 0 || limited > guestBurst+5 {
		t.Fatalf("%d of %d rapid requests rate limited", limited, 2*guestBurst)
	}
}

// TestGuestVsockCIDMapping: over the fake vsock listener a connection speaks for the VM
// launched with its peer CID (whatever name it claims); an unknown CID and a forgotten
// one are refused with one error line.
func TestGuestVsockCIDMapping(t *testing.T) {
	g := &GuestSessions{Record: sessionRecords}
	defer g.Close()
	g.SetCID("vm1", 42)
	g.SetCID("vm2", 43)
	l := guestchantest.NewListener()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.ServeGuests(ctx, l) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ServeGuests: %v", err)
		}
	}()
	ask := func(cid uint32, claim string) (*agentproto.Frame, error) {
		c, err := l.Dial(cid)
		if err != nil {
			return nil, err
		}
		defer c.Close()
		return agentproto.Exchange(ctxT(t, 5*time.Second), c, agentproto.TypeRecordRequest, 1, &agentproto.RecordRequest{VM: claim})
	}
	for cid, want := range map[uint32]string{42: "vm1", 43: "vm2"} {
		f, err := ask(cid, "vm2")
		var r agentproto.RecordResponse
		if err == nil {
			err = agentproto.DecodeAnswer(f, agentproto.TypeRecordResponse, &r)
		}
		if err != nil || r.VM != want || !strings.Contains(string(r.Record), `"name":"`+want+`"`) {
			t.Fatalf("CID %d: %+v %v, want %s's record", cid, r, err, want)
		}
	}
	// A refused guest is told why before the connection closes.
	refused := func(cid uint32) (*agentproto.Frame, error) {
		c, err := l.Dial(cid)
		if err != nil {
			return nil, err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		f, err := agentproto.ReadFrame(c)
		if err == nil {
			if _, err := agentproto.ReadFrame(c); err == nil {
				t.Errorf("CID %d: connection stayed open after the refusal", cid)
			}
		}
		return f, err
	}
	f, err := refused(44)
	if err != nil || f.Type != agentproto.TypeError || !strings.Contains(string(f.Payload), "vsock CID 44 belongs to no running VM") {
		t.Fatalf("unknown CID: %+v %v", f, err)
	}
	g.Stop("vm1")
	if f, err = refused(42); err != nil || f.Type != agentproto.TypeError {
		t.Fatalf("CID of a stopped VM: %+v %v", f, err)
	}
	// A CID moves with its VM: relaunching vm2 on CID 42 frees 43.
	g.SetCID("vm2", 42)
	if _, ok := g.VMForCID(43); ok {
		t.Fatal("old CID still mapped")
	}
	if name, ok := g.VMForCID(42); !ok || name != "vm2" {
		t.Fatalf("CID 42 -> %q", name)
	}
}

// FuzzGuestRequest feeds arbitrary bytes from a guest to snpd's answer path: no panic,
// every answer encodes within the frame limit, and a record or chain answer is always
// about the VM that owns the channel.
func FuzzGuestRequest(f *testing.F) {
	for _, seed := range []struct {
		t   agentproto.Type
		msg any
	}{
		{agentproto.TypeRecordRequest, &agentproto.RecordRequest{VM: "vm2"}},
		{agentproto.TypeChainRequest, &agentproto.ChainRequest{}},
		{agentproto.TypeReportRequest, &agentproto.ReportRequest{Nonce: []byte{1}}},
		{agentproto.TypeRecordResponse, &agentproto.RecordResponse{VM: "vm2", Record: []byte(`{}`)}},
	} {
		var buf bytes.Buffer
		_ = agentproto.WriteFrame(&buf, seed.t, 1, seed.msg)
		f.Add(buf.Bytes())
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fr, err := agentproto.ReadFrame(bytes.NewReader(data))
		if err != nil {
			return
		}
		g := &GuestSessions{Record: sessionRecords}
		g.RememberChain("vm1", "-----BEGIN CERTIFICATE-----\nvm1\n-----END CERTIFICATE-----\n")
		typ, msg := g.handler("vm1")(context.Background(), fr)
		var out bytes.Buffer
		if err := agentproto.WriteFrame(&out, typ, fr.ID, msg); err != nil {
			t.Fatalf("answer does not encode: %v", err)
		}
		switch m := msg.(type) {
		case *agentproto.RecordResponse:
			if m.VM != "vm1" || !strings.Contains(string(m.Record), `"name":"vm1"`) {
				t.Fatalf("answered for %q: %s", m.VM, m.Record)
			}
		case *agentproto.ChainResponse:
			if m.VM != "vm1" || !strings.Contains(m.ChainPEM, "vm1") {
				t.Fatalf("chain for %q", m.VM)
			}
		case *agentproto.Error:
			if len(m.Message) > agentproto.MaxMessage {
				t.Fatalf("error of %d bytes", len(m.Message))
			}
		default:
			t.Fatalf("unexpected answer %T", msg)
		}
	})
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
