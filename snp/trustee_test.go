package snp_test

// Trustee's own default SNP appraisal policy, evaluated with OPA against claims derived
// from reports the way Trustee derives them, with snpd's trustee export registered as
// Trustee's RVPS would store it.
//
// The claim derivation and the RVPS sample extractor below are Go ports of Trustee at
// commit 78962cd416dcc8a32f9377e0066a28fe21420f69 (confidential-containers/trustee):
//
//   - deps/verifier/src/snp/mod.rs: parse_tee_evidence (the claim names and encodings:
//     policy fields from the guest policy bits, reported_tcb_* from REPORTED_TCB in the
//     processor generation's layout, platform_* from PLATFORM_INFO, hex for byte fields,
//     init_data = HOST_DATA) and get_processor_generation (family/model to Milan, Genoa,
//     Turin);
//   - attestation-service/src/ear_token/broker.rs: transform_claims (init_data and
//     report_data move to the top level, the rest under the TEE's name "snp") and the
//     query_reference_value extension (the stored value, null when absent);
//   - rvps/src/lib.rs and rvps/src/extractors/sample/mod.rs: the message (version
//     "0.1.0", type, base64 payload) and the sample extractor (payload: a JSON object,
//     each member stored under its name as-is).
//
// Trustee evaluates the policy with regorus; OPA implements the same Rego.

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"testing"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/verify/testdata"
	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/types"

	"github.com/snpd/snpd/snp"
	"github.com/snpd/snpd/snp/snptest"
)

// trusteePolicy is Trustee's default CPU appraisal policy from ../shared.
const trusteePolicy = "testdata/trustee/ear_default_policy_cpu.rego"

// rvpsRegister ports Rvps::verify_and_extract with the sample extractor: it returns the
// reference values a message stores, by name.
func rvpsRegister(message []byte) (map[string]any, error) {
	var m struct {
		Version *string `json:"version"`
		Payload string  `json:"payload"`
		Type    string  `json:"type"`
	}
	if err := json.Unmarshal(message, &m); err != nil {
		return nil, fmt.Errorf("parse message: %w", err)
	}
	version := "0.1.0" // serde default
	if m.Version != nil {
		version = *m.Version
	}
	if version != "0.1.0" {
		return nil, fmt.Errorf("version unmatched: need 0.1.0, given %s", version)
	}
	if m.Type != "sample" {
		return nil, fmt.Errorf("could not find extractor for %s", m.Type)
	}
	payload, err := base64.StdEncoding.DecodeString(m.Payload)
	if err != nil {
		return nil, fmt.Errorf("base64 decode: %w", err)
	}
	var rvs map[string]any
	if err := json.Unmarshal(payload, &rvs); err != nil {
		return nil, fmt.Errorf("deserialize sample provenance: %w", err)
	}
	if rvs == nil {
		return nil, errors.New("deserialize sample provenance: not a JSON object")
	}
	return rvs, nil
}

// trusteeInput ports parse_tee_evidence and transform_claims: the policy input for a raw
// report, straight from the ATTESTATION_REPORT layout.
func trusteeInput(raw []byte) (map[string]any, error) {
	if len(raw) != abi.ReportSize {
		return nil, fmt.Errorf("report is %d bytes", len(raw))
	}
	le := binary.LittleEndian
	version := le.Uint32(raw[0x00:])
	policy := le.Uint64(raw[0x08:])
	platInfo := le.Uint64(raw[0x40:])
	tcb := raw[0x180:0x188] // REPORTED_TCB
	// get_processor_generation reads CPUID_FAM_ID and CPUID_MOD_ID (version 3+). Trustee
	// refuses older reports at verification; for claims, a version 2 report is parsed with
	// the legacy (Milan/Genoa) layout as virtee's sev crate does.
	turin := false
	if version >= 3 {
		fam, mod := raw[0x188], raw[0x189]
		switch {
		case fam == 0x19 && (mod <= 0x0f || mod >= 0x10 && mod <= 0x1f || mod >= 0xa0 && mod < 0xaf):
		case fam == 0x1a && mod <= 0x11:
			turin = true
		default:
			return nil, fmt.Errorf("processor family %#x model %#x not supported", fam, mod)
		}
	}
	bl, tee, snpSVN, ucode := tcb[0], tcb[1], tcb[6], tcb[7] // TcbVersion::from_legacy_bytes
	if turin {
		bl, tee, snpSVN, ucode = tcb[1], tcb[2], tcb[3], tcb[7] // from_turin_bytes
	}
	bit := func(v uint64, n uint) bool { return v&(1<<n) != 0 }
	claims := map[string]any{
		"policy_abi_major":        int(policy >> 8 & 0xff),
		"policy_abi_minor":        int(policy & 0xff),
		"policy_smt_allowed":      bit(policy, 16),
		"policy_migrate_ma":       bit(policy, 18),
		"policy_debug_allowed":    bit(policy, 19),
		"policy_single_socket":    bit(policy, 20),
		"reported_tcb_bootloader": int(bl),
		"reported_tcb_tee":        int(tee),
		"reported_tcb_snp":        int(snpSVN),
		"reported_tcb_microcode":  int(ucode),
		"platform_tsme_enabled":   bit(platInfo, 1),
		"platform_smt_enabled":    bit(platInfo, 0),
		"measurement":             hex.EncodeToString(raw[0x90:0xc0]),
		"chip_id":                 hex.EncodeToString(raw[0x1a0:0x1e0]),
	}
	return map[string]any{
		"snp":                 claims,
		"init_data":           hex.EncodeToString(raw[0xc0:0xe0]),
		"init_data_claims":    map[string]any{},
		"report_data":         hex.EncodeToString(raw[0x50:0x90]),
		"runtime_data_claims": map[string]any{},
	}, nil
}

// appraise evaluates Trustee's policy on a report with the reference values rvs and
// returns its trust claims (executables, hardware, configuration, ...).
func appraise(t *testing.T, policy []byte, raw []byte, rvs map[string]any) map[string]int {
	t.Helper()
	input, err := trusteeInput(raw)
	if err != nil {
		t.Fatal(err)
	}
	query := rego.Function1(&rego.Function{Name: "query_reference_value", Decl: types.NewFunction(types.Args(types.S), types.A)},
		func(_ rego.BuiltinContext, id *ast.Term) (*ast.Term, error) {
			s, ok := id.Value.(ast.String)
			if !ok {
				return nil, errors.New("query_reference_value extension parameter must be a string")
			}
			v, ok := rvs[string(s)]
			if !ok {
				return ast.NullTerm(), nil
			}
			val, err := ast.InterfaceToValue(v)
			if err != nil {
				return nil, err
			}
			return ast.NewTerm(val), nil
		})
	rs, err := rego.New(rego.Query("data.policy.trust_claims"), rego.Module("ear_default_policy_cpu.rego", string(policy)), query, rego.Input(input)).Eval(context.Background())
	if err != nil {
		t.Fatalf("evaluating Trustee's policy: %v", err)
	}
	if len(rs) != 1 || len(rs[0].Expressions) != 1 {
		t.Fatalf("policy result %+v", rs)
	}
	obj, ok := rs[0].Expressions[0].Value.(map[string]any)
	if !ok {
		t.Fatalf("trust_claims is %T", rs[0].Expressions[0].Value)
	}
	out := map[string]int{}
	for k, v := range obj {
		n, ok := v.(json.Number)
		if !ok {
			t.Fatalf("trust claim %s is %T", k, v)
		}
		i, err := n.Int64()
		if err != nil {
			t.Fatal(err)
		}
		out[k] = int(i)
	}
	return out
}

// affirming is AR4SI's "affirming" tier of a trustworthiness claim (2..31).
func affirming(v int) bool { return v >= 2 && v <= 31 }

// register exports ref in the trustee format and stores it as Trustee's RVPS does.
func register(t *testing.T, ref snp.Reference) map[string]any {
	t.Helper()
	msg, err := snp.ExportReference(ref, snp.FormatTrustee)
	if err != nil {
		t.Fatal(err)
	}
	rvs, err := rvpsRegister(msg)
	if err != nil {
		t.Fatalf("registering snpd's export with the RVPS sample extractor: %v", err)
	}
	return rvs
}

// TestTrusteeDefaultPolicyAffirmsMatchingReport: with only snpd's trustee export as
// reference values, Trustee's default policy affirms every appraisal tier for a report that
// matches the launch (executables 3, hardware 2, configuration 2 with the platform's SMT
// and TSME state known, 3 without), and not for a changed measurement (executables 33), a
// debug policy (configuration 36) or a TCB below the host's minimum (hardware 97). The
// real Milan report from go-sev-guest's testdata (debug set by its launcher) gets its
// measurement and TCB affirmed and its configuration not.
func TestTrusteeDefaultPolicyAffirmsMatchingReport(t *testing.T) {
	policy := snptest.ReadShared(t, trusteePolicy)
	fx := newFixture(t)
	f := fx.fields
	f.Version3 = true
	f.PlatformInfo = 1 // SMT enabled, TSME disabled
	good := fx.report(t, f)
	on, off := true, false
	ref := fixtureReference(t, fx)
	ref.MinimumTCB = fx.signer.TCB
	ref.SMTEnabled, ref.TSMEEnabled = &on, &off

	want := func(name string, got map[string]int, exe, hw, cfg int) {
		t.Helper()
		if got["executables"] != exe || got["hardware"] != hw || got["configuration"] != cfg {
			t.Fatalf("%s: trust claims %v, want executables %d, hardware %d, configuration %d", name, got, exe, hw, cfg)
		}
	}
	got := appraise(t, policy, good, register(t, ref))
	want("matching report", got, 3, 2, 2)
	for _, k := range []string{"executables", "hardware", "configuration"} {
		if !affirming(got[k]) {
			t.Fatalf("%s = %d is not affirming", k, got[k])
		}
	}

	unknown := ref
	unknown.SMTEnabled, unknown.TSMEEnabled = nil, nil
	want("matching report, platform SMT/TSME unknown", appraise(t, policy, good, register(t, unknown)), 3, 2, 3)

	// A TCB above the minimum is still affirmed: the lists hold every SPL from the minimum.
	older := ref
	older.MinimumTCB = fx.signer.TCB - 1<<56 // microcode one below the report's
	want("report above the minimum TCB", appraise(t, policy, good, register(t, older)), 3, 2, 2)

	m := f
	m.Measurement[0] ^= 1
	got = appraise(t, policy, fx.report(t, m), register(t, ref))
	want("changed measurement", got, 33, 2, 2)

	d := f
	d.Policy |= 1 << 19 // debug
	debug := fx.report(t, d)
	want("debug policy", appraise(t, policy, debug, register(t, ref)), 3, 2, 36)
	// Even if the launch record itself had the debug policy, the policy refuses it.
	dref := ref
	dref.Policy = d.Policy
	want("debug policy in the record too", appraise(t, policy, debug, register(t, dref)), 3, 2, 36)

	newer := ref
	newer.MinimumTCB = fx.signer.TCB + 1<<56 // microcode one above the report's
	want("TCB below the minimum", appraise(t, policy, good, register(t, newer)), 3, 97, 2)

	// Turin lays REPORTED_TCB out differently (FMC, bootloader, TEE, SNP in bytes 0..3).
	tf := f
	tf.CPUID = [3]byte{0x1a, 0x02, 0x0}
	tf.ReportedTCB = 0x48_000000_04_03_02_01
	turinRef := ref
	turinRef.ProductLine, turinRef.MinimumTCB = "Turin", tf.ReportedTCB
	want("Turin report", appraise(t, policy, fx.report(t, tf), register(t, turinRef)), 3, 2, 2)

	// The real Milan report, and a reference from its own launch values.
	raw := testdata.AttestationBytes[:abi.ReportSize]
	rep, err := snp.DecodeReport(raw)
	if err != nil {
		t.Fatal(err)
	}
	realRef := snp.Reference{Name: "real", Measurement: bytes.Clone(raw[0x90:0xc0]), Policy: rep.Policy, MinimumTCB: rep.ReportedTCB.Raw, ProductLine: "Milan",
		SMTEnabled: &on, TSMEEnabled: &off}
	want("real Milan report (debug)", appraise(t, policy, raw, register(t, realRef)), 3, 2, 36)
}

// TestRVPSSampleExtractorPort: the ported extractor refuses what Trustee's refuses, so
// the test above cannot pass on a message Trustee would not store.
func TestRVPSSampleExtractorPort(t *testing.T) {
	for _, bad := range []string{
		`{"version":"0.2.0","type":"sample","payload":"e30="}`,
		`{"type":"swid","payload":"e30="}`,
		`{"type":"sample","payload":"not base64"}`,
		`{"type":"sample","payload":"W10="}`, // [] is no JSON object
	} {
		if _, err := rvpsRegister([]byte(bad)); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
	if rvs, err := rvpsRegister([]byte(`{"type":"sample","payload":"eyJhIjpbMV19"}`)); err != nil || len(rvs) != 1 {
		t.Fatalf("default version: %v %v", rvs, err)
	}
}
