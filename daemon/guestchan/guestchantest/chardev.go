package guestchantest

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/snpd/snpd/snp/agentproto"
)

// Chardev stands in for QEMU's chardev server on a VM's agent.sock: it accepts snpd's
// connections one at a time and hands each to the test as the guest's end.
type Chardev struct {
	// Socket is the path of the fake agent.sock (in a short temporary directory: unix
	// socket paths are limited to 107 bytes).
	Socket string

	l       net.Listener
	conns   chan net.Conn
	accepts atomic.Int32
}

// NewChardev listens on a fresh agent.sock; everything is removed at the end of t.
func NewChardev(t testing.TB) *Chardev {
	t.Helper()
	dir, err := os.MkdirTemp("", "snpd-gs-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	q := &Chardev{Socket: filepath.Join(dir, "agent.sock"), conns: make(chan net.Conn, 4)}
	if q.l, err = net.Listen("unix", q.Socket); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.l.Close() })
	go func() {
		for {
			c, err := q.l.Accept()
			if err != nil {
				return
			}
			q.accepts.Add(1)
			q.conns <- c
		}
	}()
	return q
}

// Accepts is how many connections snpd has made so far.
func (q *Chardev) Accepts() int { return int(q.accepts.Load()) }

// Raw returns the next connection snpd made, unserved: the test speaks for the guest
// byte by byte. It fails t after 10 s; the connection is closed at the end of t.
func (q *Chardev) Raw(t testing.TB) net.Conn {
	t.Helper()
	select {
	case c := <-q.conns:
		t.Cleanup(func() { c.Close() })
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("snpd did not connect to agent.sock")
	}
	return nil
}

// Guest returns the next connection snpd made, served by an agent Conn (challenges
// answered by the refusal a host without SEV-SNP gives) that the guest also uses for
// its own requests, and the raw connection under it. It fails t after 10 s.
func (q *Chardev) Guest(t testing.TB) (*agentproto.Conn, net.Conn) {
	t.Helper()
	c := q.Raw(t)
	gc := agentproto.NewConn(c, agentproto.AgentHandler(NoDevice{}))
	go func() { _ = gc.Run(context.Background()) }()
	return gc, c
}

// NoDevice is a guest report source without a SEV-SNP device, as on this machine.
type NoDevice struct{}

// GetReport always refuses, as snp-agent does in a guest without /dev/sev-guest.
func (NoDevice) GetReport([64]byte) ([]byte, []byte, error) {
	return nil, nil, errors.New("guest has no SEV-SNP report device")
}

// AskRecord asks snpd for the launch record as the guest, claiming to be VM claim ("":
// none), and returns the answer (bounded to 5 s).
func AskRecord(t testing.TB, c *agentproto.Conn, claim string) (*agentproto.RecordResponse, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	f, err := c.Call(ctx, agentproto.TypeRecordRequest, &agentproto.RecordRequest{VM: claim})
	if err != nil {
		return nil, err
	}
	var r agentproto.RecordResponse
	if err := agentproto.DecodeAnswer(f, agentproto.TypeRecordResponse, &r); err != nil {
		return nil, err
	}
	return &r, nil
}
