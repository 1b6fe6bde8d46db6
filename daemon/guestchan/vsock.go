package guestchan

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/mdlayher/vsock"

	"github.com/snpd/snpd/snp/agentproto"
)

// GuestListener yields guest-initiated connections with the peer's vsock context id.
// VsockListen is the real one; tests use guestchantest.Listener.
type GuestListener interface {
	// Accept waits for the next connection and returns it with the peer's CID.
	Accept() (net.Conn, uint32, error)
	// Close stops the listener; a blocked Accept returns an error.
	Close() error
}

type vsockListener struct{ l *vsock.Listener }

func (v vsockListener) Accept() (net.Conn, uint32, error) {
	c, err := v.l.Accept()
	if err != nil {
		return nil, 0, err
	}
	a, ok := c.RemoteAddr().(*vsock.Addr)
	if !ok {
		c.Close()
		return nil, 0, fmt.Errorf("accepting vsock connection: peer address %T", c.RemoteAddr())
	}
	return c, a.ContextID, nil
}

func (v vsockListener) Close() error { return v.l.Close() }

// VsockListen listens for guest-initiated connections on vsock port (any CID). It fails
// on hosts without vsock (no /dev/vsock or no vhost-vsock transport); snpd then runs
// without the vsock path.
func VsockListen(port uint32) (GuestListener, error) {
	l, err := vsock.Listen(port, nil)
	if err != nil {
		return nil, fmt.Errorf("listening on vsock port %d: %w", port, err)
	}
	return vsockListener{l}, nil
}

// Bounds of the vsock path: a guest connection idle longer than vsockIdle is closed, and
// a CID may hold at most vsockPerCID connections at once.
const (
	vsockIdle   = 30 * time.Second
	vsockPerCID = 4
)

// idleConn bounds each read with vsockIdle.
type idleConn struct{ net.Conn }

func (c idleConn) Read(p []byte) (int, error) {
	_ = c.SetReadDeadline(time.Now().Add(vsockIdle))
	return c.Conn.Read(p)
}

// ServeGuests answers guest-initiated requests on l until ctx ends or l fails. Each
// connection speaks for the VM launched with the peer's CID (recorded with SetCID); a
// connection from any other CID is refused with one Error frame and closed.
func (g *GuestSessions) ServeGuests(ctx context.Context, l GuestListener) error {
	stop := context.AfterFunc(ctx, func() { _ = l.Close() })
	defer stop()
	var mu sync.Mutex
	open := map[uint32]int{}
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, cid, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("accepting guest connection: %w", err)
		}
		name, ok := g.VMForCID(cid)
		mu.Lock()
		busy := open[cid] >= vsockPerCID
		if ok && !busy {
			open[cid]++
		}
		mu.Unlock()
		if !ok || busy {
			msg := fmt.Sprintf("refused: vsock CID %d belongs to no running VM", cid)
			if busy {
				msg = fmt.Sprintf("refused: CID %d already has %d connections", cid, vsockPerCID)
			}
			g.log().Warn("guest vsock connection refused", "cid", cid, "reason", msg)
			_ = c.SetWriteDeadline(time.Now().Add(time.Second))
			_ = agentproto.WriteFrame(c, agentproto.TypeError, 0, &agentproto.Error{Message: msg})
			c.Close()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() {
				mu.Lock()
				open[cid]--
				mu.Unlock()
			}()
			defer c.Close()
			err := agentproto.NewConn(idleConn{c}, g.handler(name)).Run(ctx)
			var ne net.Error
			if err != nil && !errors.Is(err, net.ErrClosed) && !(errors.As(err, &ne) && ne.Timeout()) && ctx.Err() == nil {
				g.log().Debug("guest vsock connection ended", "vm", name, "cid", cid, "err", err)
			}
		}()
	}
}
