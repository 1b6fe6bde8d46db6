package snp

import (
	"crypto/sha512"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/google/go-sev-guest/abi"
	checkpb "github.com/google/go-sev-guest/proto/check"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/snpd/snpd/snp/launch"
)

// Reference formats accepted by ExportReference. None of them carries trusted roots:
// snpd runs on the host, and a root the host chose would let the host vouch for itself.
// Each says instead how the verifier pins AMD's roots (see docs/api.md).
const (
	// FormatJSON is snpd's own JSON (type ReferenceJSON).
	FormatJSON = "json"
	// FormatTrustee is a Confidential Containers Trustee RVPS message of type "sample":
	// {"version":"0.1.0","type":"sample","payload":base64(provenance)}, the provenance
	// mapping each reference-value name Trustee's default SNP policy reads to the value it
	// compares a claim with: a list where the policy tests membership (`in`), a number or
	// boolean where it tests equality (`==`). See TrusteeReferenceValues.
	FormatTrustee = "trustee"
	// FormatSevGuestCheck is a go-sev-guest check.Config textproto, what google's `check`
	// tool reads with -config from a file whose name ends in .textproto.
	FormatSevGuestCheck = "sev-guest-check"
	// FormatLaunchLog is every SNP_LAUNCH_UPDATE page update (type, GPA, content digest)
	// as JSON, so a verifier can recompute the launch digest itself (ReplayLaunchLog).
	FormatLaunchLog = "launch-log"
)

// ReferenceFormats lists the accepted formats.
var ReferenceFormats = []string{FormatJSON, FormatTrustee, FormatSevGuestCheck, FormatLaunchLog}

// Reference is what a verifier needs to appraise a guest's reports: the launch record's
// values and the host policy's constraints. It holds no trusted roots.
type Reference struct {
	// Name is the VM name.
	Name string
	// Measurement is the expected launch digest (48 bytes).
	Measurement []byte
	// Policy is the recorded guest policy (the ceiling in the check format, the exact ABI
	// version, SMT and single-socket bits in the trustee format).
	Policy uint64
	// HostData is the recorded HOST_DATA (32 bytes; nil: none).
	HostData []byte
	// IDKeyDigest and AuthorKeyDigest are the recorded ID block's key digests (48 bytes;
	// nil: none).
	IDKeyDigest, AuthorKeyDigest []byte
	// MinimumTCB is the least acceptable REPORTED_TCB, a TCB_VERSION in ProductLine's
	// layout (DecomposeTCB), compared component by component (0: none).
	MinimumTCB uint64
	// ProductLine is the chip's product line ("Milan", "Genoa", "Turin"), as ProductLineOf
	// or ProductLineFromCPUID determined it from the chip; empty: unknown. Exports name it
	// so the verifier knows which of AMD's roots to pin; they never carry the roots.
	ProductLine string
	// SMTEnabled and TSMEEnabled are the host platform's SMT and TSME state, the
	// PLATFORM_INFO bits SMT_EN (0) and TSME_EN (1) its reports carry (nil: unknown, left
	// out of the trustee format; Trustee's default policy then grades configuration 3, "no
	// known vulnerabilities", instead of 2, "approved").
	SMTEnabled, TSMEEnabled *bool
	// Updates are the launch's page updates (launch.Measurement.Updates with
	// launch.MeasureInput.Log); needed only for FormatLaunchLog.
	Updates []launch.PageUpdate
	// NotConfidential, when not empty, says why the launch is not confidential ("the
	// launch record is not confidential (platform none)"): the guest ran without SEV-SNP,
	// so no report vouches for it. Every format says so (see ExportReference). Empty: an
	// SEV-SNP launch.
	NotConfidential string
}

// ReportDataBinding describes how snpd binds a verifier's nonce into REPORT_DATA
// (agentproto.BindReportData).
const ReportDataBinding = `SHA-512("snpd-attest-v1" || 0x00 || uint16_be(len(nonce)) || nonce || user_data), nonce 1..64 bytes, user_data 0..64 bytes`

// ReferenceJSON is the FormatJSON document.
type ReferenceJSON struct {
	Name string `json:"name"`
	// Confidential is false when the launch ran without SEV-SNP (Note says why): no report
	// can vouch for such a guest, and these values describe what an SEV-SNP launch of the
	// same definition would measure.
	Confidential    bool   `json:"confidential"`
	Note            string `json:"note,omitempty"`
	Measurement     string `json:"measurement"`
	Policy          string `json:"policy"`
	HostData        string `json:"host_data,omitempty"`
	IDKeyDigest     string `json:"id_key_digest,omitempty"`
	AuthorKeyDigest string `json:"author_key_digest,omitempty"`
	MinimumTCB      string `json:"minimum_tcb,omitempty"`
	VMPL            int    `json:"vmpl"`
	ProductLine     string `json:"product_line,omitempty"`
	// TrustedRoots says that no roots are included and which the verifier must pin.
	TrustedRoots string `json:"trusted_roots"`
	// ReportData tells how REPORT_DATA binds a verifier's nonce.
	ReportData string `json:"report_data"`
}

// LaunchLog is the FormatLaunchLog document.
type LaunchLog struct {
	Name string `json:"name"`
	// Confidential and Note are as in ReferenceJSON.
	Confidential bool   `json:"confidential"`
	Note         string `json:"note,omitempty"`
	// Algorithm describes the chain: "SHA-384 over PAGE_INFO (SEV-SNP ABI spec, 8.17.2)".
	Algorithm string `json:"algorithm"`
	// Measurement is the final launch digest (hex).
	Measurement string           `json:"measurement"`
	Updates     []LaunchLogEntry `json:"updates"`
}

// LaunchLogEntry is one page update.
type LaunchLogEntry struct {
	// Type is NORMAL, VMSA, ZERO, UNMEASURED, SECRETS or CPUID.
	Type string `json:"type"`
	// GPA is the guest physical address, hex with 0x.
	GPA string `json:"gpa"`
	// Contents is the SHA-384 of the page for NORMAL and VMSA pages, zero otherwise (hex).
	Contents string `json:"contents"`
}

// ExportReference renders ref in one of ReferenceFormats. A reference that is not
// confidential (ref.NotConfidential) says so in every format: "confidential": false and
// a note in json and launch-log, the same two fields beside the trustee message's
// payload (the payload itself holds only what Trustee's policy reads), and a first
// comment line in the sev-guest-check config.
func ExportReference(ref Reference, format string) ([]byte, error) {
	if len(ref.Measurement) != 48 {
		return nil, fmt.Errorf("exporting reference: measurement is %d bytes, want 48", len(ref.Measurement))
	}
	switch format {
	case FormatJSON:
		return exportJSON(ref)
	case FormatTrustee:
		return exportTrustee(ref)
	case FormatSevGuestCheck:
		return exportCheck(ref)
	case FormatLaunchLog:
		return exportLaunchLog(ref)
	}
	return nil, fmt.Errorf("exporting reference: unknown format %q (want %s)", format, strings.Join(ReferenceFormats, ", "))
}

func hexOrEmpty(b []byte) string {
	if b == nil {
		return ""
	}
	return hex.EncodeToString(b)
}

// productFlag is the check flag naming productLine ("LINE" when unknown).
func productFlag(productLine string) string {
	if productLine == "" {
		return "-product LINE"
	}
	return "-product " + productLine
}

// rootsAdvice says which roots a verifier must pin for productLine, as the json export
// puts it.
func rootsAdvice(productLine string) string {
	line := productLine
	if line == "" {
		line = "the chip's product line (unknown to snpd: the VCEK's issuer is SEV-LINE)"
	}
	return "none included, on purpose: the host must not choose them. Pin AMD's ARK and ASK for " + line +
		" yourself; go-sev-guest check: " + productFlag(productLine) + " (AMD's roots embedded in go-sev-guest)" +
		" or -product_key_path ASK_ARK.pem with them"
}

func exportJSON(ref Reference) ([]byte, error) {
	doc := ReferenceJSON{
		Name:            ref.Name,
		Confidential:    ref.NotConfidential == "",
		Note:            ref.NotConfidential,
		Measurement:     hex.EncodeToString(ref.Measurement),
		Policy:          fmt.Sprintf("%#x", ref.Policy),
		HostData:        hexOrEmpty(ref.HostData),
		IDKeyDigest:     hexOrEmpty(ref.IDKeyDigest),
		AuthorKeyDigest: hexOrEmpty(ref.AuthorKeyDigest),
		ProductLine:     ref.ProductLine,
		TrustedRoots:    rootsAdvice(ref.ProductLine),
		ReportData:      ReportDataBinding,
	}
	if ref.MinimumTCB != 0 {
		doc.MinimumTCB = fmt.Sprintf("%#016x", ref.MinimumTCB)
	}
	return marshalIndent(doc)
}

func marshalIndent(v any) ([]byte, error) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encoding reference: %w", err)
	}
	return append(b, '\n'), nil
}

// TrusteeReferenceValues returns the reference values Trustee's default SNP appraisal
// policy (attestation-service/src/ear_token/ear_default_policy_cpu.rego) reads through
// query_reference_value, encoded as it compares them with the claims Trustee's SNP
// verifier derives from a report (deps/verifier/src/snp/mod.rs, parse_tee_evidence; both
// at trustee commit 78962cd416dcc8a32f9377e0066a28fe21420f69):
//
//   - snp_launch_measurement: list of one lowercase hex string (`measurement in`).
//   - snp_bootloader, snp_tee_svn, snp_snp_svn, snp_microcode: list of every SPL from the
//     minimum TCB's component up to 255 (`reported_tcb_* in`), i.e. "at least the
//     minimum"; with no minimum TCB every value 0..255.
//   - snp_guest_abi_major, snp_guest_abi_minor: numbers; snp_single_socket,
//     snp_smt_allowed: booleans (`policy_* ==`), from the recorded guest policy.
//   - snp_smt_enabled, snp_tsme_enabled: booleans (`platform_*_enabled ==`), only when
//     the Reference knows them.
//
// Nothing else: the policy checks debug and migrate-MA off itself; nothing in Trustee
// reads a HOST_DATA or ID/author key reference value (HOST_DATA is compared by Trustee's
// verifier with the init-data digest the guest presents, and reaches the policy as the
// init_data claim), so those are not exported and a Trustee verifier that needs them must
// add its own rules.
func TrusteeReferenceValues(ref Reference) (map[string]any, error) {
	if len(ref.Measurement) != 48 {
		return nil, fmt.Errorf("measurement is %d bytes, want 48", len(ref.Measurement))
	}
	pol, err := abi.ParseSnpPolicy(ref.Policy)
	if err != nil {
		return nil, fmt.Errorf("policy %#x: %w", ref.Policy, err)
	}
	tcb, err := DecomposeTCB(ref.ProductLine, ref.MinimumTCB)
	if err != nil {
		return nil, fmt.Errorf("minimum TCB: %w", err)
	}
	atLeast := func(min uint8) []int {
		out := make([]int, 0, 256-int(min))
		for v := int(min); v <= 255; v++ {
			out = append(out, v)
		}
		return out
	}
	rv := map[string]any{
		"snp_launch_measurement": []string{hex.EncodeToString(ref.Measurement)},
		"snp_bootloader":         atLeast(tcb.BootLoader),
		"snp_tee_svn":            atLeast(tcb.TEE),
		"snp_snp_svn":            atLeast(tcb.SNP),
		"snp_microcode":          atLeast(tcb.Microcode),
		"snp_guest_abi_major":    int(pol.ABIMajor),
		"snp_guest_abi_minor":    int(pol.ABIMinor),
		"snp_single_socket":      pol.SingleSocket,
		"snp_smt_allowed":        pol.SMT,
	}
	if ref.SMTEnabled != nil {
		rv["snp_smt_enabled"] = *ref.SMTEnabled
	}
	if ref.TSMEEnabled != nil {
		rv["snp_tsme_enabled"] = *ref.TSMEEnabled
	}
	return rv, nil
}

func exportTrustee(ref Reference) ([]byte, error) {
	rv, err := TrusteeReferenceValues(ref)
	if err != nil {
		return nil, fmt.Errorf("exporting reference: %w", err)
	}
	payload, err := json.Marshal(rv)
	if err != nil {
		return nil, fmt.Errorf("encoding reference: %w", err)
	}
	msg := struct {
		Version string `json:"version"`
		Type    string `json:"type"`
		Payload string `json:"payload"`
		// Confidential and Note appear only for a launch that is not confidential.
		Confidential *bool  `json:"confidential,omitempty"`
		Note         string `json:"note,omitempty"`
	}{Version: "0.1.0", Type: "sample", Payload: base64.StdEncoding.EncodeToString(payload)}
	if ref.NotConfidential != "" {
		no := false
		msg.Confidential, msg.Note = &no, ref.NotConfidential
	}
	return marshalIndent(msg)
}

// CheckConfig returns the go-sev-guest check.Config for ref: the recorded policy as the
// policy ceiling, the exact measurement and host data (all zero when none was recorded),
// VMPL 0, the minimum TCB, the ID and author key digests when an ID block was used,
// offline (disallow_network), the product line, and no trusted roots
// (root_of_trust.cabundles stays empty: the verifier pins them with check's
// -product_key_path, or check uses AMD's roots embedded in go-sev-guest). REPORT_DATA is
// not in it either: it binds a per-challenge nonce (check -report_data).
func CheckConfig(ref Reference) (*checkpb.Config, error) {
	if _, err := abi.ParseSnpPolicy(ref.Policy); err != nil {
		return nil, fmt.Errorf("policy %#x: %w", ref.Policy, err)
	}
	p := &checkpb.Policy{
		Policy:                    ref.Policy,
		Measurement:               ref.Measurement,
		Vmpl:                      wrapperspb.UInt32(0),
		MinimumTcb:                ref.MinimumTCB,
		PermitProvisionalFirmware: true,
	}
	p.HostData = ref.HostData
	if p.HostData == nil {
		p.HostData = make([]byte, 32) // none given at launch: the report's is all zero
	}
	if ref.IDKeyDigest != nil {
		p.RequireIdBlock = true
		p.TrustedIdKeyHashes = [][]byte{ref.IDKeyDigest}
		if ref.AuthorKeyDigest != nil {
			p.RequireAuthorKey = true
			p.TrustedAuthorKeyHashes = [][]byte{ref.AuthorKeyDigest}
		}
	}
	rot := &checkpb.RootOfTrust{DisallowNetwork: true, ProductLine: ref.ProductLine}
	return &checkpb.Config{RootOfTrust: rot, Policy: p}, nil
}

// checkHeader is the comment that starts the sev-guest-check export: how to run check
// with it, since the config alone cannot bind the nonce, and must not pin the roots.
func checkHeader(ref Reference) string {
	line := ref.ProductLine
	if line == "" {
		line = "unknown to snpd (the VCEK's issuer is SEV-LINE)"
	}
	file := ref.Name
	if file == "" {
		file = "vm"
	}
	file += ".textproto"
	var warn []string
	if ref.NotConfidential != "" {
		warn = []string{
			"# NOT CONFIDENTIAL: " + ref.NotConfidential + ". The guest ran without SEV-SNP:",
			"# no report can vouch for it, and this config describes what an SEV-SNP launch",
			"# of the same definition would measure.",
		}
	}
	return strings.Join(append(warn,
		"# go-sev-guest check.Config for VM "+strconv.Quote(ref.Name)+", exported by snpd. Product line: "+line+".",
		"# It carries no trusted roots, on purpose: the host must not choose them.",
		"# check reads a text config only from a file whose name ends in .textproto (any other",
		"# name is parsed as binary protobuf). Save this as "+file+", then:",
		"#   check -config "+file+" -in REPORT.bin -report_data HEX "+productFlag(ref.ProductLine),
		"# -report_data HEX (64 bytes) binds your fresh nonce, which this config cannot carry.",
		"#   snpd's binding: "+ReportDataBinding+".",
		"# -product LINE names the product line whose roots check trusts: AMD's ARK and ASK",
		"#   embedded in go-sev-guest. check ignores root_of_trust.product_line below; its default,",
		"#   -product_name Milan-B1, refuses Milan-B0 VCEKs, version 2 Genoa and Turin reports, and",
		"#   Genoa and Turin roots given with -product_key_path. -product_name with the VCEK's",
		"#   exact product name (Milan-B0, Genoa-B1, ...) works too.",
		"# -product_key_path ASK_ARK.pem (PEM, ASK then ARK, as AMD's KDS cert_chain) pins those",
		"#   roots for LINE instead of AMD's embedded ones.",
		"",
	), "\n")
}

func exportCheck(ref Reference) ([]byte, error) {
	cfg, err := CheckConfig(ref)
	if err != nil {
		return nil, fmt.Errorf("exporting reference: %w", err)
	}
	b, err := prototext.MarshalOptions{Multiline: true}.Marshal(cfg)
	if err != nil {
		return nil, fmt.Errorf("encoding check config: %w", err)
	}
	return append([]byte(checkHeader(ref)), b...), nil
}

func exportLaunchLog(ref Reference) ([]byte, error) {
	if len(ref.Updates) == 0 {
		return nil, errors.New("exporting reference: no page updates recorded (measure with Log)")
	}
	doc := LaunchLog{
		Name:         ref.Name,
		Confidential: ref.NotConfidential == "",
		Note:         ref.NotConfidential,
		Algorithm:    "SHA-384 over PAGE_INFO (SEV-SNP ABI spec, 8.17.2), starting from 48 zero bytes",
		Measurement:  hex.EncodeToString(ref.Measurement),
		Updates:      make([]LaunchLogEntry, len(ref.Updates)),
	}
	for i, u := range ref.Updates {
		doc.Updates[i] = LaunchLogEntry{Type: u.Type.String(), GPA: fmt.Sprintf("%#x", u.GPA), Contents: hex.EncodeToString(u.Contents[:])}
	}
	if last := ref.Updates[len(ref.Updates)-1].DigestAfter; hex.EncodeToString(last[:]) != doc.Measurement {
		return nil, errors.New("exporting reference: the page updates do not end at the recorded measurement")
	}
	return marshalIndent(doc)
}

// maxLaunchLogUpdates bounds a launch log read by ReplayLaunchLog (a 64 GiB guest's worth
// of 4 KiB pages would be 16M; firmware-sized launches are a few thousand).
const maxLaunchLogUpdates = 1 << 22

// ReplayLaunchLog recomputes the launch digest from a FormatLaunchLog document and
// returns it with an error when it differs from the document's measurement. It is
// written here independently of Measure (straight from the PAGE_INFO layout: DIGEST_CUR
// 48, CONTENTS 48, LENGTH u16 = 0x70, PAGE_TYPE u8, IMI_PAGE u8, VMPL3/2/1_PERMS u8 each,
// reserved u8, GPA u64, little endian) so it can check what Measure logged.
func ReplayLaunchLog(doc []byte) ([]byte, error) {
	var l LaunchLog
	if err := json.Unmarshal(doc, &l); err != nil {
		return nil, fmt.Errorf("parsing launch log: %w", err)
	}
	if len(l.Updates) > maxLaunchLogUpdates {
		return nil, fmt.Errorf("parsing launch log: %d updates, at most %d", len(l.Updates), maxLaunchLogUpdates)
	}
	types := map[string]byte{"NORMAL": 1, "VMSA": 2, "ZERO": 3, "UNMEASURED": 4, "SECRETS": 5, "CPUID": 6}
	var digest [48]byte
	var info [0x70]byte
	for i, u := range l.Updates {
		t, ok := types[u.Type]
		if !ok {
			return nil, fmt.Errorf("launch log update %d: unknown type %q", i, u.Type)
		}
		gpa, err := strconv.ParseUint(strings.TrimPrefix(u.GPA, "0x"), 16, 64)
		if err != nil {
			return nil, fmt.Errorf("launch log update %d: GPA %q: %w", i, u.GPA, err)
		}
		c, err := hex.DecodeString(u.Contents)
		if err != nil || len(c) != 48 {
			return nil, fmt.Errorf("launch log update %d: contents must be 48 bytes of hex", i)
		}
		clear(info[:])
		copy(info[0:48], digest[:])
		copy(info[48:96], c)
		binary.LittleEndian.PutUint16(info[0x60:], 0x70)
		info[0x62] = t
		binary.LittleEndian.PutUint64(info[0x68:], gpa)
		digest = sha512.Sum384(info[:])
	}
	if hex.EncodeToString(digest[:]) != strings.ToLower(l.Measurement) {
		return digest[:], fmt.Errorf("replayed launch digest %x differs from the log's measurement %s", digest, l.Measurement)
	}
	return digest[:], nil
}
