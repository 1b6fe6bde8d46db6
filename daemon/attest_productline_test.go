package daemon

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"

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
