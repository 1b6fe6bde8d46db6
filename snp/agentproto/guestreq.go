package agentproto

import (
	"encoding/json"
	"fmt"
)

// MaxVMName bounds the VM name in guest requests and answers, in bytes.
const MaxVMName = 64

// IsRequest tells whether frames of type t ask for an answer (as opposed to being one).
// Conn routes requests to its Handler and answers to the pending Call with the same id.
func (t Type) IsRequest() bool {
	switch t {
	case TypeReportRequest, TypePing, TypeProvision, TypeRecordRequest, TypeChainRequest:
		return true
	}
	return false
}

// RecordRequest is the guest asking snpd for its own launch record.
type RecordRequest struct {
	// VM is the name the guest believes it has (empty: unknown). It is never used to
	// select a record: snpd answers for the VM that owns the channel, and the answer
	// names it. At most MaxVMName bytes.
	VM string `json:"vm,omitempty"`
}

// Validate checks the request's size.
func (r *RecordRequest) Validate() error {
	if len(r.VM) > MaxVMName {
		return fmt.Errorf("vm name is %d bytes, want at most %d", len(r.VM), MaxVMName)
	}
	return nil
}

// RecordResponse is snpd's answer to RecordRequest.
type RecordResponse struct {
	// VM is the name of the VM that owns the channel (1..MaxVMName bytes).
	VM string `json:"vm"`
	// Record is its launch record (api.LaunchRecord JSON: expected measurement, policy,
	// host-data, guest features, ID key digests, platform note), a JSON object of at
	// most MaxRecord bytes.
	Record json.RawMessage `json:"record"`
}

// Validate checks the sizes and that Record is a JSON object.
func (r *RecordResponse) Validate() error {
	if len(r.VM) == 0 || len(r.VM) > MaxVMName {
		return fmt.Errorf("vm name is %d bytes, want 1..%d", len(r.VM), MaxVMName)
	}
	if len(r.Record) == 0 || len(r.Record) > MaxRecord || r.Record[0] != '{' || !json.Valid(r.Record) {
		return fmt.Errorf("record must be a JSON object of 1..%d bytes", MaxRecord)
	}
	return nil
}

// ChainRequest is the guest asking snpd for the certificate chain it holds for the VM.
type ChainRequest struct{}

// ChainResponse is snpd's answer to ChainRequest. When snpd holds no certificates the
// answer is an Error ("no certificates cached ...") instead.
type ChainResponse struct {
	// VM is the name of the VM that owns the channel (1..MaxVMName bytes).
	VM string `json:"vm"`
	// ChainPEM is the VCEK/VLEK, ASK/ASVK and ARK in PEM, 1..MaxChainPEM bytes.
	ChainPEM string `json:"chain_pem"`
}

// Validate checks the sizes.
func (r *ChainResponse) Validate() error {
	if len(r.VM) == 0 || len(r.VM) > MaxVMName {
		return fmt.Errorf("vm name is %d bytes, want 1..%d", len(r.VM), MaxVMName)
	}
	if len(r.ChainPEM) == 0 || len(r.ChainPEM) > MaxChainPEM {
		return fmt.Errorf("chain is %d bytes, want 1..%d", len(r.ChainPEM), MaxChainPEM)
	}
	return nil
}

// DecodeAnswer decodes f, the answer to a request, strictly into want (a pointer to the
// expected answer struct, of type wantType). An Error frame becomes a *RemoteError; any
// other type is an error.
func DecodeAnswer(f *Frame, wantType Type, want any) error {
	switch f.Type {
	case wantType:
		return f.Decode(want)
	case TypeError:
		var e Error
		if err := f.Decode(&e); err != nil {
			return err
		}
		return &RemoteError{Message: e.Message}
	}
	return fmt.Errorf("unexpected %v frame, want %v", f.Type, wantType)
}
