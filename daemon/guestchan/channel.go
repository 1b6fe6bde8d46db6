package guestchan

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	"github.com/mdlayher/vsock"

	"github.com/snpd/snpd/snp/agentproto"
)

// DefaultAgentTimeout bounds one guest-agent exchange when the caller's context has no
// deadline.
const DefaultAgentTimeout = 10 * time.Second

// ErrNoGuestChannel means the VM was launched without a guest channel (no virtio-serial
// port and no vsock CID), so snpd cannot reach an agent in it.
var ErrNoGuestChannel = errors.New("VM has no guest channel (set [channel] serial or vsock_cid)")

// GuestChannel reaches the snp-agent of one VM. The zero value is unusable; fill in at least
// one of SerialSocket and VsockCID.
type GuestChannel struct {
	// SerialSocket is the path of the VM's agent.sock (empty: no virtio-serial port).
	SerialSocket string
	// VsockCID is the guest CID snpd assigned at launch (0: no vsock device). CIDs 0..2
	// (hypervisor, local, host) are refused.
	VsockCID uint32
	// VsockPort is the port the agent listens on (config guest_channel.vsock_port).
	VsockPort uint32
	// Timeout bounds one exchange when ctx has no earlier deadline (0: DefaultAgentTimeout).
	Timeout time.Duration
	// Session is the VM's serial session (nil: none). When set, exchanges go over it
	// instead of dialling SerialSocket: QEMU serves the socket to one client at a time,
	// and the session holds that connection.
	Session *GuestSession
}

// exchange sends one request and returns the answer frame, over the session when there
// is one, else on a fresh connection.
func (g GuestChannel) exchange(ctx context.Context, t agentproto.Type, msg any) (*agentproto.Frame, error) {
	if g.Session != nil {
		f, err := g.Session.Call(ctx, t, msg)
		if err != nil && ctx.Err() != nil {
			return nil, fmt.Errorf("waiting for the guest agent: %w", ctx.Err())
		}
		return f, err
	}
	conn, err := g.dial(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return agentproto.Exchange(ctx, conn, t, exchangeID.Add(1), msg)
}

var exchangeID atomic.Uint32

func (g GuestChannel) dial(ctx context.Context) (net.Conn, error) {
	// The serial port is preferred: it needs no vsock support in the guest kernel and is
	// bound to this VM's QEMU by a path only snpd can reach.
	if g.SerialSocket != "" {
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", g.SerialSocket)
		if err != nil {
			return nil, fmt.Errorf("dialing guest channel %s: %w", g.SerialSocket, err)
		}
		return c, nil
	}
	if g.VsockCID != 0 {
		if g.VsockCID <= vsock.Host {
			return nil, fmt.Errorf("dialing guest channel: refusing vsock CID %d (not a guest)", g.VsockCID)
		}
		c, err := vsock.Dial(g.VsockCID, g.VsockPort, nil)
		if err != nil {
			return nil, fmt.Errorf("dialing guest vsock %d:%d: %w", g.VsockCID, g.VsockPort, err)
		}
		return c, nil
	}
	return nil, ErrNoGuestChannel
}

// Challenge sends the verifier's nonce (and optional user data, nil: none) to the guest
// agent and returns its report and certificate table. The agent's own refusal (for example
// "guest has no SEV-SNP report device") comes back as an error whose text is the agent's
// message. The exchange is bounded by ctx and g.Timeout.
func (g GuestChannel) Challenge(ctx context.Context, nonce, userData []byte) (*agentproto.ReportResponse, error) {
	req := &agentproto.ReportRequest{Nonce: nonce, UserData: userData}
	if err := req.Validate(); err != nil {
		return nil, fmt.Errorf("challenging guest: %w", err)
	}
	ctx, cancel := g.withTimeout(ctx)
	defer cancel()
	f, err := g.exchange(ctx, agentproto.TypeReportRequest, req)
	if err != nil {
		return nil, fmt.Errorf("challenging guest: %w", err)
	}
	resp, err := agentproto.DecodeReportResponse(f)
	if err != nil {
		var re *agentproto.RemoteError
		if errors.As(err, &re) {
			return nil, fmt.Errorf("guest agent: %w", err)
		}
		return nil, fmt.Errorf("challenging guest: %w", err)
	}
	return resp, nil
}

// Provision gives the agent the VM's launch record (JSON) and certificate chain (PEM),
// which the agent keeps in its state directory (record.json, chain.pem). Guests can also
// ask for both at any time (`snp-agent record|chain`, answered by GuestSessions).
func (g GuestChannel) Provision(ctx context.Context, record []byte, chainPEM string) error {
	p := &agentproto.Provision{Record: record, ChainPEM: chainPEM}
	if err := p.Validate(); err != nil {
		return fmt.Errorf("provisioning guest: %w", err)
	}
	ctx, cancel := g.withTimeout(ctx)
	defer cancel()
	f, err := g.exchange(ctx, agentproto.TypeProvision, p)
	if err != nil {
		return fmt.Errorf("provisioning guest: %w", err)
	}
	switch f.Type {
	case agentproto.TypeAck:
		return nil
	case agentproto.TypeError:
		var e agentproto.Error
		if err := f.Decode(&e); err != nil {
			return fmt.Errorf("provisioning guest: %w", err)
		}
		return fmt.Errorf("provisioning guest: agent: %s", e.Message)
	}
	return fmt.Errorf("provisioning guest: unexpected %v answer", f.Type)
}

// Ping checks that an agent answers on the channel.
func (g GuestChannel) Ping(ctx context.Context) error {
	ctx, cancel := g.withTimeout(ctx)
	defer cancel()
	f, err := g.exchange(ctx, agentproto.TypePing, &agentproto.Ping{})
	if err != nil {
		return fmt.Errorf("pinging guest agent: %w", err)
	}
	if f.Type != agentproto.TypePong {
		return fmt.Errorf("pinging guest agent: got %v", f.Type)
	}
	return nil
}

func (g GuestChannel) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	t := g.Timeout
	if t <= 0 {
		t = DefaultAgentTimeout
	}
	return context.WithTimeout(ctx, t)
}

// NewNonce returns n random bytes for a challenge (n is 1..agentproto.MaxNonce).
func NewNonce(n int) ([]byte, error) {
	if n < agentproto.MinNonce || n > agentproto.MaxNonce {
		return nil, fmt.Errorf("nonce size %d out of range", n)
	}
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return nil, fmt.Errorf("reading random nonce: %w", err)
	}
	return b, nil
}
