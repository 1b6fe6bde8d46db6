package agentproto

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// ReportSource produces a raw attestation report for a 64-byte REPORT_DATA, with the
// certificate table the platform supplied (nil: none). snp-agent implements it with
// go-sev-guest's QuoteProvider.
type ReportSource interface {
	GetReport(reportData [64]byte) (report, certTable []byte, err error)
}

// Provisioner is implemented by a ReportSource that keeps what snpd provisions (the
// guest's launch record and chain). Without it, Provision is answered with an error.
type Provisioner interface {
	Provision(p *Provision) error
}

// AgentName is sent in Pong.
const AgentName = "snp-agent"

// maxResync bounds how many stray bytes a reader discards looking for a frame boundary.
const maxResync = 1 << 20

// Serve answers requests read from rw until rw returns an error (io.EOF on a clean
// close) or ctx ends. Every request gets exactly one answer; a report the source cannot
// produce is answered with TypeError carrying the source's error text. A framing error
// is answered with TypeError (id 0) and Serve resynchronizes on the next frame magic.
// It is Conn.Run with AgentHandler: one read loop serves both.
func Serve(ctx context.Context, rw io.ReadWriter, src ReportSource) error {
	return NewConn(rw, AgentHandler(src)).Run(ctx)
}

// AgentHandler answers the host's requests (report, provision, ping) from src, as Serve
// does, for use with Conn.
func AgentHandler(src ReportSource) Handler {
	return func(_ context.Context, f *Frame) (Type, any) { return agentAnswer(f, src) }
}

func agentAnswer(f *Frame, src ReportSource) (Type, any) {
	switch f.Type {
	case TypePing:
		var p Ping
		if err := f.Decode(&p); err != nil {
			return TypeError, &Error{Message: truncate(err.Error())}
		}
		return TypePong, &Pong{Agent: AgentName}
	case TypeProvision:
		var p Provision
		if err := f.Decode(&p); err != nil {
			return TypeError, &Error{Message: truncate(err.Error())}
		}
		pv, ok := src.(Provisioner)
		if !ok {
			return TypeError, &Error{Message: "this agent keeps no provisioned record"}
		}
		if err := pv.Provision(&p); err != nil {
			return TypeError, &Error{Message: truncate(err.Error())}
		}
		return TypeAck, &Ack{}
	case TypeReportRequest:
		var req ReportRequest
		if err := f.Decode(&req); err != nil {
			return TypeError, &Error{Message: truncate(err.Error())}
		}
		rd, err := BindReportData(req.Nonce, req.UserData)
		if err != nil {
			return TypeError, &Error{Message: truncate(err.Error())}
		}
		report, certs, err := src.GetReport(rd)
		if err != nil {
			return TypeError, &Error{Message: truncate(err.Error())}
		}
		resp := &ReportResponse{Report: report, CertTable: certs}
		if err := resp.Validate(); err != nil {
			return TypeError, &Error{Message: "report device answer: " + err.Error()}
		}
		return TypeReportResponse, resp
	}
	return TypeError, &Error{Message: fmt.Sprintf("unsupported request type %v", f.Type)}
}

func truncate(s string) string {
	if len(s) > MaxMessage {
		return s[:MaxMessage]
	}
	return s
}

// Exchange sends one request on conn and returns the answer frame with the same id,
// skipping stale frames with other ids (left over from an earlier, timed-out exchange on
// a virtio-serial port) and the peer's own requests. The whole exchange is bounded by ctx's deadline, which it sets
// on conn; a zero deadline is refused so a silent guest cannot hang the caller.
func Exchange(ctx context.Context, conn net.Conn, t Type, id uint32, msg any) (*Frame, error) {
	deadline, ok := ctx.Deadline()
	if !ok {
		return nil, errors.New("agent exchange needs a deadline")
	}
	if err := conn.SetDeadline(deadline); err != nil {
		return nil, fmt.Errorf("setting deadline: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if err := WriteFrame(conn, t, id, msg); err != nil {
		return nil, err
	}
	br := bufio.NewReaderSize(conn, 4096)
	for skipped := 0; ; skipped++ {
		f, err := ReadFrame(br)
		if err != nil {
			var ve ErrVersion
			if errors.As(err, &ve) {
				return nil, fmt.Errorf("reading agent answer: %w", err)
			}
			if ctx.Err() != nil {
				return nil, fmt.Errorf("waiting for the guest agent: %w", ctx.Err())
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return nil, fmt.Errorf("waiting for the guest agent: %w", context.DeadlineExceeded)
			}
			return nil, fmt.Errorf("reading agent answer: %w", err)
		}
		if f.ID == id && !f.Type.IsRequest() {
			return f, nil
		}
		// A request from the peer (a guest asking snpd on the same stream) is not the
		// answer; whoever serves the peer's requests answers it.
		if skipped > 16 {
			return nil, errors.New("reading agent answer: too many stray frames")
		}
	}
}
