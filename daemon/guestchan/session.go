package guestchan

import (
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/snpd/snpd/daemon/api"
	"github.com/snpd/snpd/snp"
	"github.com/snpd/snpd/snp/agentproto"
)

// Reconnect backoff of a serial session: the first retry after sessionBackoffMin,
// doubling up to sessionBackoffMax.
const (
	sessionBackoffMin = 100 * time.Millisecond
	sessionBackoffMax = 5 * time.Second
)

// Guest request rate limit per VM: guestBurst requests at once, then one per
// guestRefill. Written by hand (a token bucket is ten lines) rather than adding
// golang.org/x/time to the module for it.
const (
	guestBurst  = 20
	guestRefill = 100 * time.Millisecond
)

// ErrNoCertificates is the answer to a guest's chain request when snpd holds none.
var ErrNoCertificates = errors.New("no certificates cached for this VM (an operator imports them with snpctl certs import)")

// GuestSessions keeps one guest-channel session per running VM with a virtio-serial
// channel, and answers guests' own requests (launch record, certificate chain) on it and
// on vsock. It also routes host challenges through the session, since QEMU serves the
// agent socket to one client at a time. Safe for concurrent use; the zero value is not
// usable: set Record and call Close when done.
type GuestSessions struct {
	// Record returns the launch record (api.LaunchRecord JSON) of VM name's current run,
	// or an error if it is not running.
	Record func(name string) ([]byte, error)
	// Cache is the certificate cache consulted for a chain when no attestation of the VM
	// has been verified yet (nil: none).
	Cache *snp.CertCache
	// Log receives connection events (nil: discarded).
	Log *slog.Logger

	mu       sync.Mutex
	sessions map[string]*GuestSession
	cids     map[uint32]string
	chains   map[string]string
	limits   map[string]*tokenBucket
	closed   bool
}

func (g *GuestSessions) log() *slog.Logger {
	if g.Log == nil {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return g.Log
}

func (g *GuestSessions) init() {
	if g.sessions == nil {
		g.sessions = map[string]*GuestSession{}
		g.cids = map[uint32]string{}
		g.chains = map[string]string{}
		g.limits = map[string]*tokenBucket{}
	}
}

// GuestSession is snpd's connection to one VM's agent over its virtio-serial socket:
// dialled after launch and after reattach, redialled with backoff on EOF, ended when the
// VM exits (Stop).
type GuestSession struct {
	// VM is the name of the VM that owns the channel; every guest request on it is
	// answered about this VM only.
	VM string
	// Socket is the VM's agent.sock.
	Socket string

	g      *GuestSessions
	cancel context.CancelFunc
	done   chan struct{}

	mu   sync.Mutex
	conn *agentproto.Conn
	up   chan struct{} // closed when conn is set; replaced when it goes
	// turn admits one host request at a time: the agent queues only
	// agentproto.MaxQueued, so concurrent verifiers wait here (within their deadline)
	// rather than being answered "busy".
	turn chan struct{}
}

// StartSerial starts (or keeps) the session of VM name on socket. Starting a session
// for a VM that already has one on the same socket is a no-op.
func (g *GuestSessions) StartSerial(name, socket string) *GuestSession {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.init()
	if g.closed {
		return nil
	}
	if s, ok := g.sessions[name]; ok {
		if s.Socket == socket {
			return s
		}
		s.stop()
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &GuestSession{VM: name, Socket: socket, g: g, cancel: cancel, done: make(chan struct{}), up: make(chan struct{}), turn: make(chan struct{}, 1)}
	g.sessions[name] = s
	go s.run(ctx)
	return s
}

// SetCID records the vsock guest CID VM name was launched with (0: none), so a vsock
// connection from that CID speaks for it. A CID is owned by one VM at a time.
func (g *GuestSessions) SetCID(name string, cid uint32) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.init()
	for c, n := range g.cids {
		if n == name || c == cid {
			delete(g.cids, c)
		}
	}
	if cid > 2 {
		g.cids[cid] = name
	}
}

// Stop ends VM name's session and forgets its CID and remembered chain (the VM exited).
func (g *GuestSessions) Stop(name string) {
	g.mu.Lock()
	g.init()
	s := g.sessions[name]
	delete(g.sessions, name)
	delete(g.chains, name)
	delete(g.limits, name)
	for c, n := range g.cids {
		if n == name {
			delete(g.cids, c)
		}
	}
	g.mu.Unlock()
	if s != nil {
		s.stop()
	}
}

// Session returns VM name's serial session (nil: none).
func (g *GuestSessions) Session(name string) *GuestSession {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.sessions[name]
}

// VMForCID returns the VM launched with vsock guest CID cid.
func (g *GuestSessions) VMForCID(cid uint32) (string, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	n, ok := g.cids[cid]
	return n, ok
}

// RememberChain keeps the chain (PEM) that verified VM name's latest report, served to
// its guest until the VM stops.
func (g *GuestSessions) RememberChain(name, chainPEM string) {
	if chainPEM == "" {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.init()
	g.chains[name] = chainPEM
}

// Close ends every session. Guests are untouched (only snpd's connections close).
func (g *GuestSessions) Close() {
	g.mu.Lock()
	g.init()
	g.closed = true
	ss := g.sessions
	g.sessions = map[string]*GuestSession{}
	g.mu.Unlock()
	for _, s := range ss {
		s.stop()
	}
}

func (s *GuestSession) stop() {
	s.cancel()
	<-s.done
}

// Connected tells whether the session currently holds a connection.
func (s *GuestSession) Connected() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conn != nil
}

func (s *GuestSession) run(ctx context.Context) {
	defer close(s.done)
	backoff := sessionBackoffMin
	logged := false
	for ctx.Err() == nil {
		var d net.Dialer
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		c, err := d.DialContext(dctx, "unix", s.Socket)
		cancel()
		if err == nil {
			conn := agentproto.NewConn(c, s.g.handler(s.VM))
			s.mu.Lock()
			s.conn = conn
			close(s.up)
			s.mu.Unlock()
			s.g.log().Info("guest channel connected", "vm", s.VM)
			began := time.Now()
			err = conn.Run(ctx)
			c.Close()
			s.mu.Lock()
			s.conn = nil
			s.up = make(chan struct{})
			s.mu.Unlock()
			if time.Since(began) > 10*time.Second {
				backoff = sessionBackoffMin
			}
			logged = false
		}
		if ctx.Err() != nil {
			return
		}
		if !logged {
			s.g.log().Info("guest channel disconnected; reconnecting", "vm", s.VM, "err", err)
			logged = true
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(backoff*2, sessionBackoffMax)
	}
}

// Call sends a host request to the VM's agent on the session, waiting (within ctx) for
// the connection if it is being re-established.
func (s *GuestSession) Call(ctx context.Context, t agentproto.Type, msg any) (*agentproto.Frame, error) {
	select {
	case s.turn <- struct{}{}:
		defer func() { <-s.turn }()
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for the guest channel of %s: %w", s.VM, ctx.Err())
	}
	for {
		s.mu.Lock()
		conn, up := s.conn, s.up
		s.mu.Unlock()
		if conn != nil {
			f, err := conn.Call(ctx, t, msg)
			if errors.Is(err, agentproto.ErrClosed) && ctx.Err() == nil {
				// Reconnecting: wait for this connection to wind down, then for the next.
				select {
				case <-conn.Done():
					continue
				case <-ctx.Done():
				}
			}
			return f, err
		}
		select {
		case <-up:
		case <-s.done:
			return nil, fmt.Errorf("guest channel of %s: %w", s.VM, agentproto.ErrClosed)
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for the guest channel of %s: %w", s.VM, ctx.Err())
		}
	}
}

// handler answers VM name's guest requests. name is fixed by the channel the request
// came on; nothing in the request can change it.
func (g *GuestSessions) handler(name string) agentproto.Handler {
	return func(_ context.Context, f *agentproto.Frame) (agentproto.Type, any) {
		fail := func(msg string) (agentproto.Type, any) {
			if len(msg) > agentproto.MaxMessage {
				msg = msg[:agentproto.MaxMessage]
			}
			return agentproto.TypeError, &agentproto.Error{Message: msg}
		}
		if !g.allow(name) {
			return fail("rate limited: too many requests from this guest")
		}
		switch f.Type {
		case agentproto.TypeRecordRequest:
			var req agentproto.RecordRequest
			if err := f.Decode(&req); err != nil {
				return fail(err.Error())
			}
			if g.Record == nil {
				return fail("launch records are not available")
			}
			rec, err := g.Record(name)
			if err != nil {
				return fail("no launch record: " + err.Error())
			}
			resp := &agentproto.RecordResponse{VM: name, Record: rec}
			if err := resp.Validate(); err != nil {
				return fail("launch record: " + err.Error())
			}
			return agentproto.TypeRecordResponse, resp
		case agentproto.TypeChainRequest:
			var req agentproto.ChainRequest
			if err := f.Decode(&req); err != nil {
				return fail(err.Error())
			}
			chain, err := g.chain(name)
			if err != nil {
				return fail(err.Error())
			}
			resp := &agentproto.ChainResponse{VM: name, ChainPEM: chain}
			if err := resp.Validate(); err != nil {
				return fail("certificate chain: " + err.Error())
			}
			return agentproto.TypeChainResponse, resp
		}
		return fail(fmt.Sprintf("unsupported request type %v (snpd answers record and chain requests)", f.Type))
	}
}

// chain is the chain that verified VM name's latest report, else every certificate in
// the cache (the guest picks its VCEK by the chip id in its own report), else
// ErrNoCertificates.
func (g *GuestSessions) chain(name string) (string, error) {
	g.mu.Lock()
	c := g.chains[name]
	g.mu.Unlock()
	if c != "" {
		return c, nil
	}
	if g.Cache == nil {
		return "", ErrNoCertificates
	}
	infos, err := g.Cache.List()
	if err != nil {
		return "", fmt.Errorf("reading the certificate cache: %w", err)
	}
	var b strings.Builder
	for _, info := range infos {
		der, err := os.ReadFile(info.Path)
		if err != nil {
			continue
		}
		block := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
		if b.Len()+len(block) > agentproto.MaxChainPEM {
			break
		}
		b.Write(block)
	}
	if b.Len() == 0 {
		return "", ErrNoCertificates
	}
	return b.String(), nil
}

func (g *GuestSessions) allow(name string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.init()
	tb := g.limits[name]
	if tb == nil {
		tb = &tokenBucket{tokens: guestBurst, last: time.Now()}
		g.limits[name] = tb
	}
	return tb.take(time.Now())
}

// tokenBucket allows guestBurst requests at once and one more per guestRefill.
type tokenBucket struct {
	tokens float64
	last   time.Time
}

func (b *tokenBucket) take(now time.Time) bool {
	b.tokens = min(guestBurst, b.tokens+float64(now.Sub(b.last))/float64(guestRefill))
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// Fleet is what Watch follows: every VM's state changes and, per running VM, how its
// agent is reached. The daemon's Manager provides it.
type Fleet interface {
	// Subscribe returns the state changes of every VM (vm "") and a cancel function; the
	// channel is closed when the fleet shuts down.
	Subscribe(vm string) (<-chan api.Event, func())
	// Names lists every defined VM.
	Names() ([]string, error)
	// Channel tells how VM name's agent is reached in its current run: the path of its
	// virtio-serial agent socket ("" when it was launched without one) and its vsock
	// guest CID (0: none). ok is false when the VM is not running.
	Channel(name string) (socket string, cid uint32, ok bool)
}

// Watch keeps the sessions in step with the fleet until ctx ends or the fleet closes
// its event stream: a session for each running VM with a serial channel (after launch
// and after reattach), its CID recorded for vsock, both dropped when the VM exits. It
// reconciles every VM at start, on each state change and every 30 s (events can be
// dropped).
func (g *GuestSessions) Watch(ctx context.Context, f Fleet) {
	events, cancel := f.Subscribe("")
	defer cancel()
	g.reconcileAll(f)
	tick := time.NewTicker(30 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-events:
			if !ok {
				return
			}
			g.reconcile(f, ev.VM)
		case <-tick.C:
			g.reconcileAll(f)
		}
	}
}

func (g *GuestSessions) reconcileAll(f Fleet) {
	names, err := f.Names()
	if err != nil {
		g.log().Warn("listing vms for guest sessions", "err", err)
		return
	}
	for _, n := range names {
		g.reconcile(f, n)
	}
}

func (g *GuestSessions) reconcile(f Fleet, name string) {
	socket, cid, ok := f.Channel(name)
	if !ok {
		g.Stop(name)
		return
	}
	g.SetCID(name, cid)
	if socket != "" {
		g.StartSerial(name, socket)
	}
}
