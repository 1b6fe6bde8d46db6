package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/mdlayher/vsock"

	"github.com/snpd/snpd/snp/agentproto"
)

// controlName is the agent's control socket in the state directory: `snp-agent
// record|chain` send their request there and the running agent relays it to snpd.
const controlName = "control.sock"

// hostTimeout bounds one request to snpd (waiting for the serial link included).
const hostTimeout = 15 * time.Second

// agent is the running agent: the report source and the link to snpd.
type agent struct {
	src *quoteSource
	// host is the serial connection to snpd while one is up (nil: none).
	host atomic.Pointer[agentproto.Conn]
	// hostVsockPort is the host's vsock port for guest requests (0: serial only).
	hostVsockPort uint32
}

// askHost sends one of this guest's requests to snpd: over the serial connection when
// snpd is connected (waiting for it within ctx), else over vsock to the host when
// configured.
func (a *agent) askHost(ctx context.Context, t agentproto.Type, msg any) (*agentproto.Frame, error) {
	for {
		if c := a.host.Load(); c != nil {
			f, err := c.Call(ctx, t, msg)
			if err == nil || !errors.Is(err, agentproto.ErrClosed) {
				return f, err
			}
		}
		if a.hostVsockPort != 0 {
			return askVsock(ctx, a.hostVsockPort, t, msg)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("snpd is not connected on the serial port: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// askVsock sends one request to snpd on the host (vsock CID 2, the only peer a guest
// has) and reads its answer.
func askVsock(ctx context.Context, port uint32, t agentproto.Type, msg any) (*agentproto.Frame, error) {
	c, err := vsock.Dial(vsock.Host, port, nil)
	if err != nil {
		return nil, fmt.Errorf("dialing snpd on vsock port %d: %w", port, err)
	}
	defer c.Close()
	return agentproto.Exchange(ctx, c, t, 1, msg)
}

// serveControl listens on path (0600: root only) and relays record and chain requests
// to snpd. Nothing else is accepted there.
func (a *agent) serveControl(ctx context.Context, path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", filepath.Dir(path), err)
	}
	_ = os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return fmt.Errorf("restricting %s: %w", path, err)
	}
	context.AfterFunc(ctx, func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(2 * hostTimeout))
				_ = agentproto.NewConn(c, a.relay).Run(ctx)
			}()
		}
	}()
	return nil
}

// relay forwards a local record or chain request to snpd and returns snpd's answer.
func (a *agent) relay(ctx context.Context, f *agentproto.Frame) (agentproto.Type, any) {
	var msg any
	switch f.Type {
	case agentproto.TypeRecordRequest:
		msg = &agentproto.RecordRequest{}
	case agentproto.TypeChainRequest:
		msg = &agentproto.ChainRequest{}
	default:
		return agentproto.TypeError, &agentproto.Error{Message: fmt.Sprintf("unsupported request type %v on the control socket", f.Type)}
	}
	if err := f.Decode(msg); err != nil {
		return agentproto.TypeError, &agentproto.Error{Message: err.Error()}
	}
	ctx, cancel := context.WithTimeout(ctx, hostTimeout)
	defer cancel()
	ans, err := a.askHost(ctx, f.Type, msg)
	if err != nil {
		return agentproto.TypeError, &agentproto.Error{Message: "asking snpd: " + err.Error()}
	}
	return ans.Type, json.RawMessage(ans.Payload)
}

// announceRecord asks snpd for this guest's launch record once it is reachable and logs
// the expected measurement (the console, when the agent is init).
func (a *agent) announceRecord(ctx context.Context) {
	deadline := time.Now().Add(10 * time.Minute)
	for ctx.Err() == nil && time.Now().Before(deadline) {
		rctx, cancel := context.WithTimeout(ctx, hostTimeout)
		f, err := a.askHost(rctx, agentproto.TypeRecordRequest, &agentproto.RecordRequest{})
		cancel()
		var resp agentproto.RecordResponse
		if err == nil {
			err = agentproto.DecodeAnswer(f, agentproto.TypeRecordResponse, &resp)
		}
		if err == nil {
			log.Print(describeRecord(&resp))
			return
		}
		var re *agentproto.RemoteError
		if errors.As(err, &re) {
			log.Printf("snpd refused the launch record: %v", err)
			return
		}
		sleep(ctx, 2*time.Second)
	}
}

// describeRecord is the one line logged for a record: VM name and expected measurement.
func describeRecord(r *agentproto.RecordResponse) string {
	var rec struct {
		ExpectedDigest string `json:"expected_digest"`
		Note           string `json:"note"`
	}
	_ = json.Unmarshal(r.Record, &rec)
	if rec.ExpectedDigest == "" {
		return fmt.Sprintf("launch record from snpd: vm %s, no expected measurement (%s)", r.VM, rec.Note)
	}
	return fmt.Sprintf("launch record from snpd: vm %s, expected measurement %s", r.VM, rec.ExpectedDigest)
}

// ask implements `snp-agent record|chain`: one request through the running agent's
// control socket (or straight to the host over vsock when hostVsockPort is set and no
// agent runs), the answer printed to out. It returns the exit code.
func ask(out, errOut io.Writer, stateDir string, hostVsockPort uint32, args []string) int {
	if len(args) != 1 || (args[0] != "record" && args[0] != "chain") {
		fmt.Fprintln(errOut, "usage: snp-agent [flags] record|chain")
		return 2
	}
	t, want, msg := agentproto.TypeRecordRequest, agentproto.TypeRecordResponse, any(&agentproto.RecordRequest{})
	if args[0] == "chain" {
		t, want, msg = agentproto.TypeChainRequest, agentproto.TypeChainResponse, &agentproto.ChainRequest{}
	}
	ctx, cancel := context.WithTimeout(context.Background(), hostTimeout+5*time.Second)
	defer cancel()
	f, err := askControl(ctx, filepath.Join(stateDir, controlName), t, msg)
	if err != nil && hostVsockPort != 0 && errors.Is(err, os.ErrNotExist) {
		f, err = askVsock(ctx, hostVsockPort, t, msg)
	}
	if err == nil {
		if args[0] == "record" {
			var r agentproto.RecordResponse
			if err = agentproto.DecodeAnswer(f, want, &r); err == nil {
				fmt.Fprintf(out, "%s\n", r.Record)
				return 0
			}
		} else {
			var r agentproto.ChainResponse
			if err = agentproto.DecodeAnswer(f, want, &r); err == nil {
				fmt.Fprint(out, r.ChainPEM)
				return 0
			}
		}
	}
	fmt.Fprintf(errOut, "snp-agent: %s: %v\n", args[0], err)
	return 1
}

func askControl(ctx context.Context, path string, t agentproto.Type, msg any) (*agentproto.Frame, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("the agent is not running (no %s): %w", path, err)
		}
		return nil, fmt.Errorf("dialing the agent: %w", err)
	}
	defer c.Close()
	return agentproto.Exchange(ctx, c, t, 1, msg)
}
