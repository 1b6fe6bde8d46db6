// Package qmptest is a scripted fake QMP server for unit tests of code that drives QEMU
// through package qmp. It speaks the wire protocol like QEMU does: a greeting on
// connect, capabilities negotiation, one client at a time per socket (a second client
// is not greeted until the first leaves), replies echoing the request id, and "\r\n"
// line endings. Tests script it with canned replies or handler funcs per command, inject
// events or raw bytes, and read back the commands it received.
//
// Default behaviour mimics a QEMU started with -S: query-version answers 10.0.2,
// query-status starts at "prelaunch", cont emits RESUME before its reply, stop emits
// STOP, system_powerdown emits POWERDOWN, and quit replies, emits SHUTDOWN and hangs up.
// Unknown commands get a CommandNotFound error, as QEMU sends.
package qmptest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/snpd/snpd/qmp"
)

// HandlerFunc answers one command. ctx ends when the client's connection or the server
// closes. A nil ret with a nil error replies {"return": {}}. An error that is (or wraps)
// a *qmp.Error is sent with its class; any other error as a GenericError; ErrNoReply
// sends nothing at all (a command QEMU never answers).
type HandlerFunc func(ctx context.Context, args json.RawMessage) (ret any, err error)

// ErrNoReply makes a handler's command go unanswered.
var ErrNoReply = errors.New("qmptest: no reply")

// Hang is a handler that never answers (until the connection closes).
func Hang(ctx context.Context, _ json.RawMessage) (any, error) {
	<-ctx.Done()
	return nil, ErrNoReply
}

// Command is one command the server received.
type Command struct {
	// Name is the "execute" member.
	Name string
	// Args is the raw "arguments" member; nil when absent.
	Args json.RawMessage
}

// Server is a fake QMP server. Its methods are safe for concurrent use, including from
// handlers.
type Server struct {
	path string
	ln   *net.UnixListener
	dir  string

	mu        sync.Mutex
	version   qmp.VersionInfo
	greet     bool
	handlers  map[string]HandlerFunc
	received  []Command
	status    string
	conn      net.Conn
	connected chan struct{} // closed while a client is connected; replaced on disconnect
	closed    bool

	wmu sync.Mutex // serialises writes to the current connection
	wg  sync.WaitGroup
}

// Option configures a Server.
type Option func(*Server)

// WithVersion sets the QEMU version the server announces and query-version returns.
func WithVersion(major, minor, micro int) Option {
	return func(s *Server) {
		s.version.QEMU = qmp.VersionTriple{Major: major, Minor: minor, Micro: micro}
	}
}

// WithoutGreeting makes the server accept connections but never greet, as a hung QEMU
// (or a server that is not QEMU) would. (QEMU does not accept a second client while
// another one holds the monitor: the server's one-client-at-a-time accept loop does
// that.)
func WithoutGreeting() Option { return func(s *Server) { s.greet = false } }

// NewServer starts a server listening on a fresh unix socket (see Path) and closes it
// when the test ends.
func NewServer(tb testing.TB, opts ...Option) *Server {
	tb.Helper()
	// Not tb.TempDir: long test names overflow the 108-byte sun_path limit.
	dir, err := os.MkdirTemp("", "qmptest")
	if err != nil {
		tb.Fatalf("qmptest: creating socket dir: %v", err)
	}
	s := newServer(opts...)
	s.dir = dir
	s.path = filepath.Join(dir, "qmp.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: s.path, Net: "unix"})
	if err != nil {
		os.RemoveAll(dir)
		tb.Fatalf("qmptest: listening: %v", err)
	}
	s.ln = ln
	s.wg.Add(1)
	go s.acceptLoop()
	tb.Cleanup(s.Close)
	return s
}

// NewPipe returns a server already serving one end of a net.Pipe, and the other end for
// the client (qmp.NewClient). The server is closed when the test ends.
func NewPipe(tb testing.TB, opts ...Option) (*Server, net.Conn) {
	tb.Helper()
	s := newServer(opts...)
	server, client := net.Pipe()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.serve(server)
	}()
	tb.Cleanup(s.Close)
	return s, client
}

// ServeConn serves one client on c until it hangs up or the server closes. Use it for a
// connection made some other way (a socketpair fd); do not mix it with a concurrently
// connected socket client.
func (s *Server) ServeConn(c net.Conn) {
	s.wg.Add(1)
	defer s.wg.Done()
	s.serve(c)
}

func newServer(opts ...Option) *Server {
	s := &Server{
		greet:     true,
		handlers:  make(map[string]HandlerFunc),
		status:    qmp.RunStatePrelaunch,
		connected: make(chan struct{}),
	}
	s.version.QEMU = qmp.VersionTriple{Major: 10, Minor: 0, Micro: 2}
	s.version.Package = "qmptest"
	for _, o := range opts {
		o(s)
	}
	return s
}

// Path is the unix socket path to dial ("" for a NewPipe server).
func (s *Server) Path() string { return s.path }

// Handle sets the handler for command name, replacing any default.
func (s *Server) Handle(name string, h HandlerFunc) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.handlers[name] = h
}

// Reply makes command name answer ret (marshalled to JSON) every time.
func (s *Server) Reply(name string, ret any) {
	s.Handle(name, func(context.Context, json.RawMessage) (any, error) { return ret, nil })
}

// Fail makes command name answer a QMP error with class and desc every time.
func (s *Server) Fail(name, class, desc string) {
	s.Handle(name, func(context.Context, json.RawMessage) (any, error) {
		return nil, &qmp.Error{Class: class, Desc: desc}
	})
}

// Commands returns the commands received so far (including qmp_capabilities), oldest
// first.
func (s *Server) Commands() []Command {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Command(nil), s.received...)
}

// CommandNames returns the names of the commands received so far, oldest first.
func (s *Server) CommandNames() []string {
	var names []string
	for _, c := range s.Commands() {
		names = append(names, c.Name)
	}
	return names
}

// Status is the run state query-status reports (changed by cont and stop).
func (s *Server) Status() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status
}

// SetStatus sets the run state query-status reports.
func (s *Server) SetStatus(status string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status = status
}

// WaitConnected waits until a client is connected (greeted or not), or ctx ends.
func (s *Server) WaitConnected(ctx context.Context) error {
	s.mu.Lock()
	ch := s.connected
	s.mu.Unlock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Emit sends event name with data (marshalled to JSON; nil for none) to the connected
// client, timestamped now.
func (s *Server) Emit(name string, data any) error {
	ev := map[string]any{"event": name, "timestamp": timestamp(time.Now())}
	if data != nil {
		ev["data"] = data
	}
	b, err := json.Marshal(ev)
	if err != nil {
		return fmt.Errorf("qmptest: encoding event %s: %w", name, err)
	}
	return s.SendRaw(b)
}

// SendRaw writes line (a "\r\n" is appended) to the connected client verbatim: use it
// for malformed or unusual messages.
func (s *Server) SendRaw(line []byte) error {
	s.mu.Lock()
	c := s.conn
	s.mu.Unlock()
	if c == nil {
		return errors.New("qmptest: no client connected")
	}
	return s.write(c, line)
}

// Disconnect hangs up on the connected client, as QEMU does when it exits.
func (s *Server) Disconnect() {
	s.mu.Lock()
	c := s.conn
	s.mu.Unlock()
	if c != nil {
		c.Close()
	}
}

// Close stops the server, hangs up on the client and removes the socket. It is safe to
// call more than once.
func (s *Server) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	c := s.conn
	s.mu.Unlock()
	if s.ln != nil {
		s.ln.Close()
	}
	if c != nil {
		c.Close()
	}
	s.wg.Wait()
	if s.dir != "" {
		os.RemoveAll(s.dir)
	}
}

func (s *Server) acceptLoop() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		// One client at a time, like QEMU: the next Accept happens after this one leaves.
		s.serve(c)
	}
}

func (s *Server) write(c net.Conn, line []byte) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	_, err := c.Write(append(bytes.Clone(line), '\r', '\n'))
	return err
}

func timestamp(t time.Time) map[string]int64 {
	return map[string]int64{"seconds": t.Unix(), "microseconds": int64(t.Nanosecond() / 1000)}
}

// serve runs one client connection to its end.
func (s *Server) serve(c net.Conn) {
	ctx, cancel := context.WithCancel(context.Background())
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		cancel()
		c.Close()
		return
	}
	s.conn = c
	close(s.connected)
	greet := s.greet
	s.mu.Unlock()
	defer func() {
		cancel()
		c.Close()
		s.mu.Lock()
		s.conn = nil
		s.connected = make(chan struct{})
		s.mu.Unlock()
	}()

	if !greet {
		io.Copy(io.Discard, c) // hold the client until it or the server hangs up
		return
	}
	greeting, _ := json.Marshal(map[string]any{"QMP": map[string]any{
		"version": s.version, "capabilities": []string{"oob"},
	}})
	if s.write(c, greeting) != nil {
		return
	}
	// Requests are read in their own goroutine so that a handler blocked on ctx is
	// released when the client hangs up.
	reqs := make(chan request)
	go func() {
		defer close(reqs)
		defer cancel()
		dec := json.NewDecoder(c)
		for {
			var req request
			if err := dec.Decode(&req); err != nil {
				return
			}
			select {
			case reqs <- req:
			case <-ctx.Done():
				return
			}
		}
	}()
	negotiated := false
	for req := range reqs {
		s.mu.Lock()
		s.received = append(s.received, Command{Name: req.Execute, Args: req.Arguments})
		h := s.handlers[req.Execute]
		s.mu.Unlock()

		var ret any
		var err error
		switch {
		case !negotiated && req.Execute != "qmp_capabilities":
			err = &qmp.Error{Class: qmp.ClassCommandNotFound, Desc: "Expecting capabilities negotiation with 'qmp_capabilities'"}
		case h != nil:
			ret, err = h(ctx, req.Arguments)
		default:
			ret, err = s.builtin(c, req.Execute)
		}
		if req.Execute == "qmp_capabilities" && err == nil {
			negotiated = true
		}
		if errors.Is(err, ErrNoReply) {
			continue
		}
		if ret == nil {
			ret = struct{}{}
		}
		reply := map[string]any{}
		if err != nil {
			var qe *qmp.Error
			if !errors.As(err, &qe) {
				qe = &qmp.Error{Class: qmp.ClassGenericError, Desc: err.Error()}
			}
			reply["error"] = qe
		} else {
			reply["return"] = ret
		}
		if len(req.ID) > 0 {
			reply["id"] = req.ID
		}
		b, merr := json.Marshal(reply)
		if merr != nil {
			b, _ = json.Marshal(map[string]any{"error": &qmp.Error{Class: qmp.ClassGenericError, Desc: merr.Error()}, "id": req.ID})
		}
		if s.write(c, b) != nil {
			return
		}
		if req.Execute == "quit" && err == nil && h == nil {
			s.Emit(qmp.EventShutdown, qmp.ShutdownEvent{Guest: false, Reason: "host-qmp-quit"})
			return
		}
	}
}

type request struct {
	Execute   string          `json:"execute"`
	Arguments json.RawMessage `json:"arguments"`
	ID        json.RawMessage `json:"id"`
}

// builtin answers the commands with default behaviour.
func (s *Server) builtin(c net.Conn, name string) (any, error) {
	switch name {
	case "qmp_capabilities":
		return nil, nil
	case "query-version":
		return s.version, nil
	case "query-status":
		st := s.Status()
		return qmp.StatusInfo{Running: st == qmp.RunStateRunning, Status: st}, nil
	case "cont":
		s.SetStatus(qmp.RunStateRunning)
		return nil, s.Emit(qmp.EventResume, nil)
	case "stop":
		s.SetStatus(qmp.RunStatePaused)
		return nil, s.Emit(qmp.EventStop, nil)
	case "system_powerdown":
		return nil, s.Emit("POWERDOWN", nil)
	case "quit":
		return nil, nil
	}
	return nil, &qmp.Error{Class: qmp.ClassCommandNotFound, Desc: fmt.Sprintf("The command %s has not been found", name)}
}
