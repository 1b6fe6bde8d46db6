package daemon

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/snpd/snpd/config"
	"github.com/snpd/snpd/daemon/api"
	"github.com/snpd/snpd/snp"
	"github.com/snpd/snpd/snp/agentproto"
)

// TestReferenceProductLineFromRecord: the exports name the product line the launch read
// from the host's CPUID (a Genoa host's record exports Genoa although the guest's vCPU
// model is EPYC-v4), a record without one (made before snpd recorded it) exports none
// instead of a guess from the vCPU model, and a report endorsed by another line's VCEK
// fails the certificate-chain check naming both.
func TestReferenceProductLineFromRecord(t *testing.T) {
	fx := newAttestFixture(t)
	fx.rec.CPUModel, fx.rec.ProductLine = "EPYC-v4", snp.ProductGenoa
	var doc snp.ReferenceJSON
	b, err := fx.att.Reference("vm1", snp.FormatJSON)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &doc); err != nil || doc.ProductLine != snp.ProductGenoa || !strings.Contains(doc.TrustedRoots, "-product Genoa") {
		t.Fatalf("json export of a Genoa host's record: %v\n%s", err, b)
	}
	b, err = fx.att.Reference("vm1", snp.FormatSevGuestCheck)
	if err != nil || !strings.Contains(string(b), `product_line:`) || !strings.Contains(string(b), `"Genoa"`) || !strings.Contains(string(b), "-product Genoa") {
		t.Fatalf("check export of a Genoa host's record: %v\n%s", err, b)
	}

	// The test signer is a Milan chip: its report does not belong to a Genoa host.
	nonce := []byte("product line nonce")
	f := fx.fields
	rd, err := agentproto.BindReportData(nonce, nil)
	if err != nil {
		t.Fatal(err)
	}
	f.ReportData = rd
	rep, err := fx.signer.Report(f)
	if err != nil {
		t.Fatal(err)
	}
	req := &api.VerifyRequest{VM: "vm1", Report: rep, CertTable: fx.signer.CertTable(), Nonce: hex.EncodeToString(nonce)}
	vr, err := fx.att.VerifyReport(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if c := findCheck(vr.Verdict, snp.CheckCertificate); vr.Verdict.OK || c.OK || !strings.Contains(c.Reason, "Milan") || !strings.Contains(c.Reason, "Genoa") {
		t.Fatalf("a Milan report against a Genoa record: %+v", vr.Verdict)
	}
	fx.rec.ProductLine = snp.ProductMilan
	if vr, err = fx.att.VerifyReport(context.Background(), req); err != nil || !vr.Verdict.OK {
		t.Fatalf("a Milan report against a Milan record: %v %+v", err, vr.Verdict)
	}

	// An old record: no product line, whatever the vCPU model says.
	for _, model := range []string{"EPYC-v4", "EPYC-Genoa", "qemu64"} {
		fx.rec.CPUModel, fx.rec.ProductLine = model, ""
		b, err := fx.att.Reference("vm1", snp.FormatJSON)
		if err != nil {
			t.Fatal(err)
		}
		doc = snp.ReferenceJSON{}
		if err := json.Unmarshal(b, &doc); err != nil || doc.ProductLine != "" || !strings.Contains(doc.TrustedRoots, "unknown to snpd") {
			t.Fatalf("json export of a record without a product line (vCPU model %s): %v\n%s", model, err, b)
		}
	}
}

// findCheck returns the verdict's check named name (zero when absent).
func findCheck(v api.Verdict, name string) api.Check {
	for _, c := range v.Checks {
		if c.Name == name {
			return c
		}
	}
	return api.Check{}
}

// TestTrusteeExportCarriesPlatformFacts: attestation.platform_smt_enabled and
// platform_tsme_enabled in snpd.toml reach the trustee export as the booleans
// snp_smt_enabled and snp_tsme_enabled Trustee's default policy compares; unset, they are
// left out.
func TestTrusteeExportCarriesPlatformFacts(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		toml     string
		smt, tsm any
	}{
		{"[attestation]\nplatform_smt_enabled = true\nplatform_tsme_enabled = false\n", true, false},
		{"[attestation]\nplatform_tsme_enabled = true\n", nil, true},
		{"", nil, nil},
	} {
		path := filepath.Join(dir, "snpd.toml")
		if err := os.WriteFile(path, []byte("state_dir = \"state\"\n"+c.toml), 0o644); err != nil {
			t.Fatal(err)
		}
		cfg, err := config.LoadDaemon(path)
		if err != nil {
			t.Fatal(err)
		}
		fx := newAttestFixture(t)
		a, err := NewAttestor(cfg, nil, fx.att.Lookup)
		if err != nil {
			t.Fatal(err)
		}
		b, err := a.Reference("vm1", snp.FormatTrustee)
		if err != nil {
			t.Fatal(err)
		}
		var msg struct{ Payload []byte }
		var rv map[string]any
		if err := json.Unmarshal(b, &msg); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(msg.Payload, &rv); err != nil {
			t.Fatal(err)
		}
		if rv["snp_smt_enabled"] != c.smt || rv["snp_tsme_enabled"] != c.tsm {
			t.Errorf("%q: snp_smt_enabled %v, snp_tsme_enabled %v; want %v, %v", c.toml, rv["snp_smt_enabled"], rv["snp_tsme_enabled"], c.smt, c.tsm)
		}
		if _, ok := rv["snp_smt_enabled"]; ok != (c.smt != nil) {
			t.Errorf("%q: snp_smt_enabled present %v", c.toml, ok)
		}
	}
}
