package agentproto

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"
)

// Handler answers one request frame received from the peer with the answer's type and
// message (any value WriteFrame can encode, for example an *Error). It must not block
// for long: requests of one Conn are handled one at a time.
type Handler func(ctx context.Context, f *Frame) (Type, any)

// ErrClosed is returned by Call once the connection's Run has ended.
var ErrClosed = errors.New("guest channel connection closed")

// DefaultWriteTimeout bounds one frame write when Conn.WriteTimeout is zero.
const DefaultWriteTimeout = 10 * time.Second

// MaxQueued bounds the requests from the peer waiting to be handled; further requests
// are answered with Error "busy" until the queue drains.
const MaxQueued = 4

// Conn is one connection on which both peers may send requests: it multiplexes answers
// to this side's Calls (by id) with the peer's requests (handed to a Handler, one at a
// time). Create it with NewConn, start Run, then Call from any goroutine.
type Conn struct {
	rw     io.ReadWriter
	handle Handler
	// WriteTimeout bounds each frame write on a connection with SetWriteDeadline (0:
	// DefaultWriteTimeout), so a peer that stops reading cannot block the writer forever.
	WriteTimeout time.Duration

	wmu     sync.Mutex
	mu      sync.Mutex
	pending map[uint32]chan *Frame
	nextID  uint32
	err     error
	done    chan struct{}
}

// NewConn returns a Conn over rw answering the peer's requests with h (nil: every
// request is answered "unsupported request type").
func NewConn(rw io.ReadWriter, h Handler) *Conn {
	return &Conn{rw: rw, handle: h, pending: map[uint32]chan *Frame{}, done: make(chan struct{})}
}

// Done is closed when Run has returned.
func (c *Conn) Done() <-chan struct{} { return c.done }

func (c *Conn) write(t Type, id uint32, msg any) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if d, ok := c.rw.(interface{ SetWriteDeadline(time.Time) error }); ok {
		to := c.WriteTimeout
		if to <= 0 {
			to = DefaultWriteTimeout
		}
		_ = d.SetWriteDeadline(time.Now().Add(to)) // not every file supports deadlines
	}
	return WriteFrame(c.rw, t, id, msg)
}

// Run reads frames until rw fails (io.EOF when the peer closed) or ctx ends, which it
// returns. Answers go to the waiting Call; requests to the Handler. A framing error is
// answered with Error (id 0) and the reader resynchronizes on the next frame magic. When
// Run returns, pending and later Calls fail with ErrClosed. Run may be called once.
func (c *Conn) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	reqs := make(chan *Frame, MaxQueued)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for f := range reqs {
			t, msg := TypeError, any(&Error{Message: fmt.Sprintf("unsupported request type %v", f.Type)})
			if c.handle != nil {
				t, msg = c.handle(ctx, f)
			}
			if err := c.write(t, f.ID, msg); err != nil {
				cancel() // the stream is out of sync: end Run (the read deadline unblocks it)
				for range reqs {
				}
				return
			}
		}
	}()
	err := c.readLoop(ctx, reqs)
	close(reqs)
	wg.Wait()
	cancel()
	c.mu.Lock()
	c.err = fmt.Errorf("%w: %w", ErrClosed, err)
	for id, ch := range c.pending {
		close(ch)
		delete(c.pending, id)
	}
	c.mu.Unlock()
	close(c.done)
	return err
}

func (c *Conn) readLoop(ctx context.Context, reqs chan<- *Frame) error {
	br := bufio.NewReaderSize(c.rw, HeaderSize+MaxPayload)
	stop := context.AfterFunc(ctx, func() {
		if d, ok := c.rw.(interface{ SetReadDeadline(time.Time) error }); ok {
			_ = d.SetReadDeadline(time.Unix(1, 0))
		}
	})
	defer stop()
	resync := false
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		var f *Frame
		var err error
		if resync {
			f, err = Resync(br, maxResync)
		} else {
			f, err = ReadFrame(br)
		}
		resync = false
		var ve ErrVersion
		switch {
		case err == nil:
		case errors.As(err, &ve):
			if f.Type.IsRequest() {
				if werr := c.write(TypeError, f.ID, &Error{Message: ve.Error()}); werr != nil {
					return werr
				}
			}
			continue
		case errors.Is(err, ErrBadMagic) || errors.Is(err, ErrTooLarge):
			if werr := c.write(TypeError, 0, &Error{Message: "framing error: " + err.Error()}); werr != nil {
				return werr
			}
			resync = true
			continue
		default:
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
		if f.Type.IsRequest() {
			select {
			case reqs <- f:
			default:
				if err := c.write(TypeError, f.ID, &Error{Message: "busy: too many requests in flight"}); err != nil {
					return err
				}
			}
			continue
		}
		c.mu.Lock()
		ch, ok := c.pending[f.ID]
		if ok {
			delete(c.pending, f.ID)
		}
		c.mu.Unlock()
		if ok {
			ch <- f // buffered 1; only this reader sends
		}
		// An answer nobody waits for (its Call timed out) is dropped.
	}
}

// Call sends request t with msg and returns the peer's answer (any type: use
// DecodeAnswer). ctx must carry a deadline; it bounds the whole call. An error wrapping
// ErrClosed means the connection is gone (the request may not have been sent).
func (c *Conn) Call(ctx context.Context, t Type, msg any) (*Frame, error) {
	if _, ok := ctx.Deadline(); !ok {
		return nil, errors.New("agent exchange needs a deadline")
	}
	if !t.IsRequest() {
		return nil, fmt.Errorf("%v is not a request", t)
	}
	ch := make(chan *Frame, 1)
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return nil, err
	}
	c.nextID++
	if c.nextID == 0 {
		c.nextID = 1
	}
	id := c.nextID
	c.pending[id] = ch
	c.mu.Unlock()
	forget := func() {
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
	}
	if err := c.write(t, id, msg); err != nil {
		forget()
		// A failed write leaves the stream unusable (Run ends soon): say it is closed
		// so a caller with another connection to come can retry there.
		return nil, fmt.Errorf("%w: %w", ErrClosed, err)
	}
	select {
	case f, ok := <-ch:
		if !ok {
			c.mu.Lock()
			err := c.err
			c.mu.Unlock()
			return nil, err
		}
		return f, nil
	case <-ctx.Done():
		forget()
		return nil, fmt.Errorf("waiting for the peer's answer to %v: %w", t, ctx.Err())
	}
}
