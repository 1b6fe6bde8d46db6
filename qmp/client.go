package qmp

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"reflect"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// DefaultMaxMessageBytes is the longest single QMP message (one line) a Client accepts
// when Options.MaxMessageBytes is 0: 64 MiB. QEMU 10.0's query-qmp-schema reply is
// about 237 KB.
const DefaultMaxMessageBytes = 64 << 20

// Options tune a Client. The zero value is ready to use.
type Options struct {
	// MaxMessageBytes bounds one message from QEMU, in bytes; a longer one closes the
	// connection with ErrMessageTooLarge. 0 means DefaultMaxMessageBytes.
	MaxMessageBytes int
	// CommandTimeout bounds a command whose context has no deadline, so a QEMU that
	// stops answering can never hang a caller forever. 0 means DefaultCommandTimeout; a
	// negative value disables it.
	CommandTimeout time.Duration
}

// DefaultCommandTimeout is the Options.CommandTimeout used when it is 0.
const DefaultCommandTimeout = 60 * time.Second

// Greeting is what QEMU announces when a client connects.
type Greeting struct {
	// Version is the QEMU version.
	Version VersionInfo
	// Capabilities are the QMP capabilities QEMU offers (e.g. "oob"); none are enabled.
	Capabilities []string
}

// Client is a QMP connection to one QEMU monitor. All methods are safe for concurrent
// use; commands may be issued from several goroutines (QEMU runs them in order).
type Client struct {
	conn     net.Conn
	greeting Greeting
	maxMsg   int
	cmdTO    time.Duration

	wmu sync.Mutex // serialises writes

	nextID atomic.Uint64

	mu      sync.Mutex
	pending map[uint64]chan message
	order   []uint64 // ids of pending commands, oldest first
	err     error    // why the connection ended; set once
	done    chan struct{}

	subMu      sync.Mutex
	subs       map[*Subscription]struct{}
	subsClosed bool
	dropped    uint64
}

// Dial connects to the QMP unix socket at path and negotiates capabilities. ctx bounds
// the dial and the handshake; if the greeting does not arrive in time the error wraps
// ErrNoGreeting, and ErrMonitorBusy when QEMU has not accepted the connection because
// another client holds the monitor; its message says which. After snpd restarts it
// reattaches to a running QEMU by dialing the same path again. opts may be nil.
func Dial(ctx context.Context, path string, opts *Options) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("dialing QMP socket: %w", err)
	}
	c, err := NewClient(ctx, conn, opts)
	if err != nil {
		return nil, fmt.Errorf("connecting to QMP socket %s: %w", path, err)
	}
	return c, nil
}

// NewClientFile connects over an already connected socket file descriptor (for example
// one end of a socketpair given to QEMU as -chardev socket,fd=N). The Client uses a
// duplicate of f; the caller still owns f and may close it once NewClientFile returns.
func NewClientFile(ctx context.Context, f *os.File, opts *Options) (*Client, error) {
	conn, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("using fd %d as QMP connection: %w", f.Fd(), err)
	}
	c, err := NewClient(ctx, conn, opts)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// NewClient reads the greeting on an established connection and negotiates
// capabilities, within ctx. The Client owns conn from then on (also on error: conn is
// closed). opts may be nil.
func NewClient(ctx context.Context, conn net.Conn, opts *Options) (*Client, error) {
	c := &Client{
		conn:    conn,
		maxMsg:  DefaultMaxMessageBytes,
		cmdTO:   DefaultCommandTimeout,
		pending: make(map[uint64]chan message),
		done:    make(chan struct{}),
		subs:    make(map[*Subscription]struct{}),
	}
	if opts != nil && opts.MaxMessageBytes > 0 {
		c.maxMsg = opts.MaxMessageBytes
	}
	if opts != nil && opts.CommandTimeout != 0 {
		c.cmdTO = opts.CommandTimeout
	}
	r := bufio.NewReaderSize(conn, 64<<10)
	if err := c.handshake(ctx, r); err != nil {
		conn.Close()
		return nil, err
	}
	go c.readLoop(r)
	return c, nil
}

// handshake reads the greeting and runs qmp_capabilities, honouring ctx by deadlines on
// the connection.
func (c *Client) handshake(ctx context.Context, r *bufio.Reader) (err error) {
	began := time.Now()
	if dl, ok := ctx.Deadline(); ok {
		c.conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { c.conn.SetDeadline(time.Unix(1, 0)) })
	defer func() {
		if !stop() || ctx.Err() != nil {
			// The context ended during the handshake; report that, not the I/O error.
			if err == nil {
				err = ctx.Err()
			}
		}
		if err == nil {
			c.conn.SetDeadline(time.Time{})
		}
	}()

	line, err := readLine(r, c.maxMsg)
	if err != nil {
		if isTimeout(err) || ctx.Err() != nil {
			cause := ctx.Err()
			if cause == nil {
				cause = context.DeadlineExceeded
			}
			ng := &noGreetingError{waited: time.Since(began), cause: cause}
			if p := remotePath(c.conn); p != "" {
				ng.state = diagnoseMonitor(p) // while the connection is still open: it is the evidence
			}
			return fmt.Errorf("waiting for QMP greeting: %w", ng)
		}
		if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
			err = ErrDisconnected // typically QEMU exited during startup
		}
		return fmt.Errorf("reading QMP greeting: %w", err)
	}
	m, err := decodeMessage(line)
	if err != nil {
		return fmt.Errorf("reading QMP greeting: %w", err)
	}
	if m.kind != kindGreeting {
		return errors.New("reading QMP greeting: first message is not a QMP greeting")
	}
	c.greeting = m.greeting

	id := c.nextID.Add(1)
	req, err := encodeRequest("qmp_capabilities", nil, id)
	if err != nil {
		return err
	}
	if _, err := c.conn.Write(req); err != nil {
		return fmt.Errorf("negotiating QMP capabilities: %w", err)
	}
	for {
		line, err := readLine(r, c.maxMsg)
		if err != nil {
			return fmt.Errorf("negotiating QMP capabilities: %w", err)
		}
		m, err := decodeMessage(line)
		if err != nil {
			return fmt.Errorf("negotiating QMP capabilities: %w", err)
		}
		if m.kind == kindEvent {
			continue // not expected before negotiation; harmless
		}
		if m.kind != kindReply || (m.id != 0 && m.id != id) {
			return errors.New("negotiating QMP capabilities: unexpected message")
		}
		if m.qmpErr != nil {
			return fmt.Errorf("negotiating QMP capabilities: %w", m.qmpErr)
		}
		return nil
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// readLine reads one newline-terminated message of at most max bytes (any length up to
// that, unlike bufio.Scanner's 64 KiB).
func readLine(r *bufio.Reader, max int) ([]byte, error) {
	var buf []byte
	for {
		frag, err := r.ReadSlice('\n')
		if len(buf)+len(frag) > max+2 { // +2: the "\r\n" QEMU ends lines with
			return nil, fmt.Errorf("%w: over %d bytes", ErrMessageTooLarge, max)
		}
		switch {
		case err == nil:
			if buf == nil {
				return bytes.Clone(frag), nil
			}
			return append(buf, frag...), nil
		case errors.Is(err, bufio.ErrBufferFull):
			buf = append(buf, frag...)
		case errors.Is(err, io.EOF) && len(buf)+len(frag) > 0:
			return nil, io.ErrUnexpectedEOF
		default:
			return nil, err
		}
	}
}

func encodeRequest(cmd string, args any, id uint64) ([]byte, error) {
	if isNil(args) {
		args = nil // a typed nil would marshal to "arguments": null, which QEMU rejects
	}
	req := struct {
		Execute   string `json:"execute"`
		Arguments any    `json:"arguments,omitempty"`
		ID        uint64 `json:"id"`
	}{cmd, args, id}
	b, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("encoding %s arguments: %w", cmd, err)
	}
	return append(b, '\n'), nil
}

// readLoop reads every message until the connection ends, routing replies to their
// commands and events to subscribers. It never blocks on a consumer.
func (c *Client) readLoop(r *bufio.Reader) {
	for {
		line, err := readLine(r, c.maxMsg)
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
				err = ErrDisconnected
			} else {
				err = fmt.Errorf("reading QMP socket: %w", err)
			}
			c.fail(err)
			return
		}
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		m, err := decodeMessage(line)
		if err != nil {
			c.fail(err)
			return
		}
		switch m.kind {
		case kindEvent:
			c.broadcast(m.event)
		case kindReply:
			c.deliver(m)
		default:
			c.fail(errors.New("decoding QMP message: unexpected greeting"))
			return
		}
	}
}

// deliver hands a reply to the command that sent its id (or, if QEMU sent none, to the
// oldest pending command). Replies to commands that gave up are discarded.
func (c *Client) deliver(m message) {
	c.mu.Lock()
	defer c.mu.Unlock()
	id := m.id
	if id == 0 {
		if len(c.order) == 0 {
			return
		}
		id = c.order[0]
	}
	ch, ok := c.pending[id]
	if !ok {
		return
	}
	c.removeLocked(id)
	ch <- m // buffered, capacity 1
}

func (c *Client) removeLocked(id uint64) {
	delete(c.pending, id)
	for i, v := range c.order {
		if v == id {
			c.order = append(c.order[:i], c.order[i+1:]...)
			break
		}
	}
}

// fail ends the connection with cause (the first cause wins).
func (c *Client) fail(cause error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = cause
	close(c.done)
	c.mu.Unlock()
	c.conn.Close()
	c.closeSubscriptions()
}

// Greeting returns what QEMU announced on connect.
func (c *Client) Greeting() Greeting { return c.greeting }

// Done is closed when the connection has ended (Close, QEMU exit, protocol error).
func (c *Client) Done() <-chan struct{} { return c.done }

// Err says why the connection ended; nil while it is open.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close ends the connection; pending commands fail with ErrClosed and subscriptions'
// channels are closed. It is safe to call more than once.
func (c *Client) Close() error {
	c.fail(ErrClosed)
	return nil
}

// closedErr is the error calls return after the connection ended.
func (c *Client) closedErr() error {
	c.mu.Lock()
	cause := c.err
	c.mu.Unlock()
	if cause == nil || errors.Is(cause, ErrClosed) {
		return ErrClosed
	}
	return fmt.Errorf("%w: %w", ErrClosed, cause)
}

// Execute runs the QMP command cmd with args (marshalled to JSON; nil for none) and
// decodes the "return" member into out (nil to discard it). It returns when the reply
// arrives or ctx ends, whichever is first (a ctx without a deadline gets
// Options.CommandTimeout); a late reply is discarded and the connection stays usable. A
// QMP error reply is returned as a wrapped *Error. If ctx ends while the request is
// still being written, the connection is closed (the stream would be out of step).
func (c *Client) Execute(ctx context.Context, cmd string, args, out any) error {
	raw, err := c.ExecuteRaw(ctx, cmd, args)
	if err != nil {
		return err
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("decoding %s reply: %w", cmd, err)
	}
	return nil
}

// ExecuteRaw is Execute returning the raw JSON "return" member.
func (c *Client) ExecuteRaw(ctx context.Context, cmd string, args any) (json.RawMessage, error) {
	if cmd == "" {
		return nil, errors.New("executing QMP command: empty command name")
	}
	id := c.nextID.Add(1)
	req, err := encodeRequest(cmd, args, id)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("executing %s: %w", cmd, err)
	}
	if _, ok := ctx.Deadline(); !ok && c.cmdTO > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.cmdTO)
		defer cancel()
	}

	ch := make(chan message, 1)
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return nil, fmt.Errorf("executing %s: %w", cmd, c.closedErr())
	}
	c.pending[id] = ch
	c.order = append(c.order, id)
	c.mu.Unlock()

	if err := c.write(ctx, req); err != nil {
		c.mu.Lock()
		c.removeLocked(id)
		c.mu.Unlock()
		return nil, fmt.Errorf("executing %s: %w", cmd, err)
	}

	select {
	case m := <-ch:
		if m.qmpErr != nil {
			return nil, fmt.Errorf("executing %s: %w", cmd, m.qmpErr)
		}
		return m.ret, nil
	case <-ctx.Done():
		c.mu.Lock()
		c.removeLocked(id)
		c.mu.Unlock()
		return nil, fmt.Errorf("executing %s: waiting for reply: %w", cmd, ctx.Err())
	case <-c.done:
		// The reply may have raced with the end of the connection.
		select {
		case m := <-ch:
			if m.qmpErr != nil {
				return nil, fmt.Errorf("executing %s: %w", cmd, m.qmpErr)
			}
			return m.ret, nil
		default:
		}
		return nil, fmt.Errorf("executing %s: %w", cmd, c.closedErr())
	}
}

// write sends one request, bounded by ctx. A write cut short leaves the stream in an
// unknown state, so it closes the connection.
func (c *Client) write(ctx context.Context, req []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if dl, ok := ctx.Deadline(); ok {
		c.conn.SetWriteDeadline(dl)
	}
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		c.conn.SetWriteDeadline(time.Unix(1, 0))
		close(fired)
	})
	_, err := c.conn.Write(req)
	if !stop() {
		// The context ended during the write: wait until its deadline is set so that
		// resetting it below cannot be overtaken and poison the next write.
		<-fired
	}
	c.conn.SetWriteDeadline(time.Time{})
	if err != nil {
		select {
		case <-c.done:
			return c.closedErr()
		default:
		}
		if ctx.Err() != nil {
			err = ctx.Err()
		} else if isTimeout(err) {
			// The only write deadline is ctx's; its timer may not have fired yet.
			err = context.DeadlineExceeded
		}
		c.fail(fmt.Errorf("writing QMP request: %w", err))
		return fmt.Errorf("writing request: %w", err)
	}
	return nil
}

// isNil reports whether v is nil or a nil pointer, map, slice or interface.
func isNil(v any) bool {
	if v == nil {
		return true
	}
	switch rv := reflect.ValueOf(v); rv.Kind() {
	case reflect.Pointer, reflect.Map, reflect.Slice, reflect.Interface:
		return rv.IsNil()
	}
	return false
}
