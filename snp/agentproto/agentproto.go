// Package agentproto is the versioned protocol spoken between snpd and snp-agent over
// the guest channel (a virtio-serial port named "org.snpd.agent.0", or vsock).
//
// # Framing
//
// Every message is one frame: a 16-byte header followed by a payload.
//
//	offset size field
//	0      4    magic "SNPA"
//	4      1    version (Version, currently 1)
//	5      1    message type (Type)
//	6      2    reserved, zero
//	8      4    request id, big endian (a response echoes its request's id)
//	12     4    payload length in bytes, big endian, at most MaxPayload
//	16     n    payload: one JSON object of the type's struct ([]byte fields are base64),
//	            decoded strictly (unknown fields are errors)
//
// A peer that receives a frame with another version answers TypeError
// ("unsupported protocol version N") and the exchange fails; nothing is guessed.
//
// # Exchanges
//
// A request is answered by exactly one frame with the same id. snpd sends ReportRequest,
// Provision or Ping and reads ReportResponse, Ack, Pong, or Error. Both sides bound
// each exchange with a timeout and every field with a size limit (see the Max constants).
// On vsock snpd dials the guest CID it assigned at launch, and on virtio-serial the
// per-VM unix socket QEMU serves, so an answer always belongs to that VM's guest.
//
// # Guest requests
//
// The agent may also ask snpd, at any time and on the same stream, for its own launch
// record (RecordRequest, answered by RecordResponse) and for the certificate chain snpd
// holds for it (ChainRequest, answered by ChainResponse, or Error "no certificates
// cached ..."). Requests and answers are told apart by their type (Type.IsRequest), so
// both directions share one connection (Conn multiplexes them by id); ids are chosen by
// the sender of the request and are only unique per direction. This was added within
// version 1: a peer that predates these types answers Error "unsupported request type"
// and ignores stray answers. snpd answers only about the VM that owns the channel (the
// per-VM socket, or the peer CID it assigned at launch); nothing in the request selects
// another VM.
//
// # REPORT_DATA binding
//
// The 64-byte REPORT_DATA the agent asks the AMD-SP to sign is exactly
//
//	SHA-512( "snpd-attest-v1" || 0x00 || uint16_be(len(nonce)) || nonce || user_data )
//
// where nonce is 1..MaxNonce bytes chosen by the verifier and user_data 0..MaxUserData
// bytes (empty when absent). ReportData computes it; a verifier recomputes it from the
// nonce it sent.
package agentproto

import (
	"bufio"
	"bytes"
	"crypto/sha512"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// Version is the protocol version this package speaks.
const Version = 1

// Magic starts every frame.
const Magic = "SNPA"

// HeaderSize is the frame header size in bytes.
const HeaderSize = 16

// Size limits, in bytes.
const (
	// MaxPayload bounds one frame's payload (the JSON object).
	MaxPayload = 64 << 10
	// MaxNonce and MinNonce bound the verifier's nonce.
	MaxNonce = 64
	MinNonce = 1
	// MaxUserData bounds the optional user data bound into REPORT_DATA.
	MaxUserData = 64
	// MaxReport bounds a raw attestation report (1184 bytes on current firmware).
	MaxReport = 4096
	// MaxCertTable bounds the GHCB certificate table returned with a report.
	MaxCertTable = 40 << 10
	// MaxMessage bounds an error message.
	MaxMessage = 1024
	// MaxRecord and MaxChainPEM bound what Provision carries.
	MaxRecord   = 32 << 10
	MaxChainPEM = 24 << 10
)

// BindingLabel is the domain-separation label hashed first into REPORT_DATA.
const BindingLabel = "snpd-attest-v1"

// Type is a message type.
type Type uint8

// Message types.
const (
	TypeReportRequest  Type = 1
	TypeReportResponse Type = 2
	TypeError          Type = 3
	TypePing           Type = 4
	TypePong           Type = 5
	TypeProvision      Type = 6
	TypeAck            Type = 7
	// Guest-initiated requests (see "Guest requests" in the package comment).
	TypeRecordRequest  Type = 8
	TypeRecordResponse Type = 9
	TypeChainRequest   Type = 10
	TypeChainResponse  Type = 11
)

func (t Type) String() string {
	switch t {
	case TypeReportRequest:
		return "report-request"
	case TypeReportResponse:
		return "report-response"
	case TypeError:
		return "error"
	case TypePing:
		return "ping"
	case TypePong:
		return "pong"
	case TypeProvision:
		return "provision"
	case TypeAck:
		return "ack"
	case TypeRecordRequest:
		return "record-request"
	case TypeRecordResponse:
		return "record-response"
	case TypeChainRequest:
		return "chain-request"
	case TypeChainResponse:
		return "chain-response"
	}
	return fmt.Sprintf("type-%d", uint8(t))
}

// ReportRequest asks the agent for an attestation report bound to Nonce and UserData.
type ReportRequest struct {
	// Nonce is the verifier's challenge, MinNonce..MaxNonce bytes.
	Nonce []byte `json:"nonce"`
	// UserData is optional extra data bound into REPORT_DATA, 0..MaxUserData bytes
	// (nil: none).
	UserData []byte `json:"user_data,omitempty"`
}

// ReportResponse carries the raw report the AMD-SP produced and the certificate table the
// platform gave with it (GHCB format; empty when the host supplied none).
type ReportResponse struct {
	// Report is the raw ATTESTATION_REPORT (1184 bytes on current firmware, at most MaxReport).
	Report []byte `json:"report"`
	// CertTable is the GHCB certificate table, at most MaxCertTable bytes (nil: none).
	CertTable []byte `json:"cert_table,omitempty"`
}

// Error is the agent's answer when it cannot produce a report.
type Error struct {
	// Message is a one-line reason, at most MaxMessage bytes.
	Message string `json:"message"`
}

// Provision gives the guest what snpd knows about it (its launch record and certificate
// chain), which the agent keeps as files for software in the guest. snpd sends it after
// each attestation; the agent answers Ack. A guest that wants them at another time asks
// with RecordRequest and ChainRequest.
type Provision struct {
	// Record is the launch record (api.LaunchRecord JSON), at most MaxRecord bytes.
	Record json.RawMessage `json:"record"`
	// ChainPEM is the VCEK/VLEK, ASK/ASVK and ARK (PEM), at most MaxChainPEM bytes
	// (empty: unknown).
	ChainPEM string `json:"chain_pem,omitempty"`
}

// Validate checks the sizes and that Record is a JSON object.
func (p *Provision) Validate() error {
	if len(p.Record) == 0 || len(p.Record) > MaxRecord || p.Record[0] != '{' || !json.Valid(p.Record) {
		return fmt.Errorf("record must be a JSON object of 1..%d bytes", MaxRecord)
	}
	if len(p.ChainPEM) > MaxChainPEM {
		return fmt.Errorf("chain is %d bytes, want at most %d", len(p.ChainPEM), MaxChainPEM)
	}
	return nil
}

// Ack answers Provision.
type Ack struct{}

// Ping asks whether the agent is alive; the agent answers Pong with its own version.
type Ping struct{}

// Pong answers Ping.
type Pong struct {
	// Agent names the agent build ("snp-agent").
	Agent string `json:"agent"`
}

// BindReportData returns the 64-byte REPORT_DATA bound to nonce (MinNonce..MaxNonce
// bytes) and userData (0..MaxUserData bytes); see the package comment for the exact
// construction. Any other size is an error: the nonce's length is hashed as 16 bits, so
// a longer nonce could make one REPORT_DATA bind two different (nonce, user data) pairs,
// and the function that computes the binding refuses it rather than trusting every
// caller to check first.
func BindReportData(nonce, userData []byte) ([64]byte, error) {
	var out [64]byte
	if len(nonce) < MinNonce || len(nonce) > MaxNonce {
		return out, fmt.Errorf("binding REPORT_DATA: nonce is %d bytes, want %d..%d", len(nonce), MinNonce, MaxNonce)
	}
	if len(userData) > MaxUserData {
		return out, fmt.Errorf("binding REPORT_DATA: user data is %d bytes, want at most %d", len(userData), MaxUserData)
	}
	h := sha512.New()
	h.Write([]byte(BindingLabel))
	h.Write([]byte{0})
	var n [2]byte
	binary.BigEndian.PutUint16(n[:], uint16(len(nonce)))
	h.Write(n[:])
	h.Write(nonce)
	h.Write(userData)
	copy(out[:], h.Sum(nil))
	return out, nil
}

// Validate checks the request's sizes.
func (r *ReportRequest) Validate() error {
	if len(r.Nonce) < MinNonce || len(r.Nonce) > MaxNonce {
		return fmt.Errorf("nonce is %d bytes, want %d..%d", len(r.Nonce), MinNonce, MaxNonce)
	}
	if len(r.UserData) > MaxUserData {
		return fmt.Errorf("user data is %d bytes, want at most %d", len(r.UserData), MaxUserData)
	}
	return nil
}

// Validate checks the response's sizes.
func (r *ReportResponse) Validate() error {
	if len(r.Report) == 0 || len(r.Report) > MaxReport {
		return fmt.Errorf("report is %d bytes, want 1..%d", len(r.Report), MaxReport)
	}
	if len(r.CertTable) > MaxCertTable {
		return fmt.Errorf("certificate table is %d bytes, want at most %d", len(r.CertTable), MaxCertTable)
	}
	return nil
}

// Validate checks the error's size.
func (e *Error) Validate() error {
	if len(e.Message) > MaxMessage {
		return fmt.Errorf("error message is %d bytes, want at most %d", len(e.Message), MaxMessage)
	}
	return nil
}

// Frame is one decoded frame.
type Frame struct {
	// Version is the sender's protocol version.
	Version uint8
	// Type is the message type.
	Type Type
	// ID pairs a response with its request.
	ID uint32
	// Payload is the raw JSON payload (at most MaxPayload bytes).
	Payload []byte
}

// Errors returned by ReadFrame.
var (
	// ErrBadMagic means the stream is not at a frame boundary (or not this protocol).
	ErrBadMagic = errors.New("bad frame magic")
	// ErrTooLarge means a frame announced a payload over MaxPayload.
	ErrTooLarge = errors.New("frame payload too large")
)

// ErrVersion is returned by ReadFrame for a frame of another protocol version; the frame's
// payload has been consumed so the stream stays in sync.
type ErrVersion struct{ Got uint8 }

func (e ErrVersion) Error() string { return fmt.Sprintf("unsupported protocol version %d", e.Got) }

// WriteFrame writes one frame of type t with id and the JSON encoding of msg.
func WriteFrame(w io.Writer, t Type, id uint32, msg any) error {
	payload, err := json.Marshal(msg)
	if err != nil {
		return fmt.Errorf("encoding %v: %w", t, err)
	}
	if len(payload) > MaxPayload {
		return fmt.Errorf("encoding %v: %w (%d bytes)", t, ErrTooLarge, len(payload))
	}
	buf := make([]byte, HeaderSize+len(payload))
	copy(buf, Magic)
	buf[4] = Version
	buf[5] = byte(t)
	binary.BigEndian.PutUint32(buf[8:], id)
	binary.BigEndian.PutUint32(buf[12:], uint32(len(payload)))
	copy(buf[HeaderSize:], payload)
	if _, err := w.Write(buf); err != nil {
		return fmt.Errorf("writing %v frame: %w", t, err)
	}
	return nil
}

// ReadFrame reads one frame. It never allocates more than HeaderSize+MaxPayload bytes.
func ReadFrame(r io.Reader) (*Frame, error) {
	var h [HeaderSize]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return nil, err
	}
	return readAfterHeader(r, h)
}

func readAfterHeader(r io.Reader, h [HeaderSize]byte) (*Frame, error) {
	if string(h[:4]) != Magic {
		return nil, ErrBadMagic
	}
	if h[6] != 0 || h[7] != 0 {
		return nil, errors.New("reserved header bytes are not zero")
	}
	n := binary.BigEndian.Uint32(h[12:])
	if n > MaxPayload {
		return nil, fmt.Errorf("%w: %d bytes", ErrTooLarge, n)
	}
	f := &Frame{Version: h[4], Type: Type(h[5]), ID: binary.BigEndian.Uint32(h[8:]), Payload: make([]byte, n)}
	if _, err := io.ReadFull(r, f.Payload); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("reading %d-byte payload: %w", n, err)
	}
	if f.Version != Version {
		return f, ErrVersion{Got: f.Version}
	}
	return f, nil
}

// Resync discards bytes from r until the frame magic is seen and then reads the frame that
// starts there. The agent uses it after a framing error on a virtio-serial port, whose
// stream survives host reconnects and may hold a partial frame. It gives up after limit
// discarded bytes.
func Resync(r *bufio.Reader, limit int) (*Frame, error) {
	var win []byte
	for i := 0; i < limit; i++ {
		b, err := r.ReadByte()
		if err != nil {
			return nil, err
		}
		win = append(win, b)
		if len(win) > len(Magic) {
			win = win[1:]
		}
		if string(win) == Magic {
			var h [HeaderSize]byte
			copy(h[:], Magic)
			if _, err := io.ReadFull(r, h[4:]); err != nil {
				return nil, err
			}
			return readAfterHeader(r, h)
		}
	}
	return nil, fmt.Errorf("resynchronizing: no frame magic in %d bytes", limit)
}

// Decode decodes f's payload strictly into msg (a pointer to one of this package's message
// structs) and validates its sizes.
func (f *Frame) Decode(msg any) error {
	dec := json.NewDecoder(bytes.NewReader(f.Payload))
	dec.DisallowUnknownFields()
	if err := dec.Decode(msg); err != nil {
		return fmt.Errorf("decoding %v payload: %w", f.Type, err)
	}
	if dec.More() {
		return fmt.Errorf("decoding %v payload: trailing data", f.Type)
	}
	if v, ok := msg.(interface{ Validate() error }); ok {
		if err := v.Validate(); err != nil {
			return fmt.Errorf("decoding %v payload: %w", f.Type, err)
		}
	}
	return nil
}

// RemoteError is an Error message received from the peer.
type RemoteError struct{ Message string }

func (e *RemoteError) Error() string { return e.Message }

// DecodeReportResponse interprets f as the answer to a report request: a ReportResponse, or
// a *RemoteError carrying the agent's Error message.
func DecodeReportResponse(f *Frame) (*ReportResponse, error) {
	switch f.Type {
	case TypeReportResponse:
		var r ReportResponse
		if err := f.Decode(&r); err != nil {
			return nil, err
		}
		return &r, nil
	case TypeError:
		var e Error
		if err := f.Decode(&e); err != nil {
			return nil, err
		}
		return nil, &RemoteError{Message: e.Message}
	}
	return nil, fmt.Errorf("unexpected %v frame in answer to a report request", f.Type)
}
