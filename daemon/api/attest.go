package api

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"net/url"
	"time"
)

// Attestation API paths.
const (
	// VerifyPath takes POST VerifyRequest and answers VerifyResponse.
	VerifyPath = "/v1/verify"
	// CertsPath lists (GET) and imports (POST CertImportRequest) AMD certificates.
	CertsPath = "/v1/certs"
)

// AttestationPath is GET /v1/vms/{name}/attestation?nonce=HEX.
func AttestationPath(name string, nonce []byte) string {
	return "/v1/vms/" + url.PathEscape(name) + "/attestation?nonce=" + hex.EncodeToString(nonce)
}

// ReferencePath is GET /v1/vms/{name}/reference?format=FORMAT (json, trustee,
// sev-guest-check, launch-log); the body is the document itself.
func ReferencePath(name, format string) string {
	return "/v1/vms/" + url.PathEscape(name) + "/reference?format=" + url.QueryEscape(format)
}

// Check is one verification check's result.
type Check struct {
	// Name identifies the check (measurement, policy, host-data, report-data, vmpl,
	// signature, certificate-chain, ...).
	Name string `json:"name"`
	OK   bool   `json:"ok"`
	// Reason says what was checked, or why it failed (one line).
	Reason string `json:"reason"`
}

// Verdict is the result of verifying one report against a launch record.
type Verdict struct {
	// OK is true only when every check passed.
	OK bool `json:"ok"`
	// Confidential is false when the launch record is not confidential (platform
	// "none"): the check "confidential" then fails, unless the caller asked to verify such
	// a record (VerifyRequest.AllowNonConfidential), and this stays false either way.
	Confidential bool    `json:"confidential"`
	Checks       []Check `json:"checks"`
}

// AttestResponse is the body of GET /v1/vms/{name}/attestation: the evidence, what it
// was checked against, and the verdict. A verdict that failed is still a 200 response;
// OK tells.
type AttestResponse struct {
	VM string `json:"vm"`
	// Nonce is the challenge sent to the guest (hex); REPORT_DATA binds it as
	// SHA-512("snpd-attest-v1" || 0x00 || uint16_be(len(nonce)) || nonce).
	Nonce string `json:"nonce"`
	// Report is the raw attestation report, base64 (1184 bytes).
	Report []byte `json:"report"`
	// CertTable is the certificate table the guest returned (base64; empty: none).
	CertTable []byte `json:"cert_table,omitempty"`
	// Decoded is the report's fields (snp.Report as JSON).
	Decoded json.RawMessage `json:"decoded,omitempty"`
	// ChainPEM is the endorsement key and its trusted chain (PEM), when it verified.
	ChainPEM string `json:"chain_pem,omitempty"`
	// Reference is the reference values the report was checked against (json format).
	Reference json.RawMessage `json:"reference"`
	Verdict   Verdict         `json:"verdict"`
	// At is when the guest answered.
	At time.Time `json:"at"`
	// Provisioned tells whether the guest agent accepted its launch record and chain
	// (readable in the guest with `snp-agent record|chain`).
	Provisioned bool `json:"provisioned"`
}

// VerifyRequest is the body of POST /v1/verify: a report obtained elsewhere, checked
// against VM's launch record.
type VerifyRequest struct {
	// VM names a VM defined in snpd, LibvirtDomain a libvirt domain registered with snpd
	// (GET /v1/libvirt/domains): exactly one of the two.
	VM            string `json:"vm,omitempty"`
	LibvirtDomain string `json:"libvirt_domain,omitempty"`
	// Report is the raw report (base64), optionally followed by a certificate table.
	Report []byte `json:"report"`
	// CertTable is a GHCB certificate table (base64; empty: use the cache).
	CertTable []byte `json:"cert_table,omitempty"`
	// Nonce (hex) and UserData (hex) are what the report was bound to. ReportData (hex, 64
	// bytes) instead gives REPORT_DATA exactly. With none, the report-data check fails.
	Nonce      string `json:"nonce,omitempty"`
	UserData   string `json:"user_data,omitempty"`
	ReportData string `json:"report_data,omitempty"`
	// AllowNonConfidential asks to verify against a launch record that is not
	// confidential (platform "none"): its "confidential" check then passes, saying so,
	// instead of failing. Verdict.Confidential stays false.
	AllowNonConfidential bool `json:"allow_non_confidential,omitempty"`
}

// VerifyResponse is the body of a POST /v1/verify answer.
type VerifyResponse struct {
	// VM or LibvirtDomain echoes the request's.
	VM            string          `json:"vm,omitempty"`
	LibvirtDomain string          `json:"libvirt_domain,omitempty"`
	Decoded       json.RawMessage `json:"decoded,omitempty"`
	ChainPEM      string          `json:"chain_pem,omitempty"`
	Reference     json.RawMessage `json:"reference"`
	Verdict       Verdict         `json:"verdict"`
}

// CertImportRequest is the body of POST /v1/certs.
type CertImportRequest struct {
	// Data is PEM, DER, or a GHCB certificate table (base64 in JSON), at most 64 KiB.
	Data []byte `json:"data"`
}

// CertInfo describes one cached AMD certificate.
type CertInfo struct {
	// Kind is ARK, ASK, ASVK, VCEK or VLEK.
	Kind        string `json:"kind"`
	ProductLine string `json:"product_line"`
	// ChipID is the VCEK's HWID (hex); TCB its TCB_VERSION (hex).
	ChipID   string    `json:"chip_id,omitempty"`
	TCB      string    `json:"tcb,omitempty"`
	Subject  string    `json:"subject"`
	NotAfter time.Time `json:"not_after"`
	SHA256   string    `json:"sha256"`
}

// CertList is the body of GET /v1/certs and of a POST /v1/certs answer.
type CertList struct {
	Certs []CertInfo `json:"certs"`
}

// Attest challenges VM name's guest with nonce and returns the verified evidence.
func (c *Client) Attest(ctx context.Context, name string, nonce []byte) (*AttestResponse, error) {
	var out AttestResponse
	if err := c.Do(ctx, "GET", AttestationPath(name, nonce), nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Verify checks a report against a VM's launch record.
func (c *Client) Verify(ctx context.Context, req *VerifyRequest) (*VerifyResponse, error) {
	var out VerifyResponse
	if err := c.Do(ctx, "POST", VerifyPath, req, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// ImportCerts sends certificates to snpd's cache.
func (c *Client) ImportCerts(ctx context.Context, data []byte) (*CertList, error) {
	var out CertList
	if err := c.Do(ctx, "POST", CertsPath, &CertImportRequest{Data: data}, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// ListCerts lists snpd's cached certificates.
func (c *Client) ListCerts(ctx context.Context) (*CertList, error) {
	var out CertList
	if err := c.Do(ctx, "GET", CertsPath, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}
