package snp_test

import (
	"crypto/x509"
	"strings"
	"testing"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/verify/testdata"

	"github.com/snpd/snpd/snp"
	"github.com/snpd/snpd/snp/snptest"
)

func TestProductLineFromCPUID(t *testing.T) {
	for _, c := range []struct {
		family, model byte
		want          string
	}{
		{0x19, 0x01, "Milan"}, {0x19, 0x0f, "Milan"},
		{0x19, 0x10, "Genoa"}, {0x19, 0x11, "Genoa"}, {0x19, 0xa0, "Genoa"}, {0x19, 0xae, "Genoa"}, {0x19, 0xaf, ""},
		{0x1a, 0x02, "Turin"}, {0x1a, 0x11, "Turin"},
		{0x17, 0x31, ""}, {0x19, 0x21, ""}, {0x19, 0xb0, ""}, {0x1a, 0x12, ""}, {0, 0, ""},
	} {
		eax := abi.FmsToCpuid1Eax(c.family, c.model, 1)
		got, err := snp.ProductLineFromCPUID(eax)
		if got != c.want || (c.want == "") != (err != nil) {
			t.Errorf("family %#x model %#x: %q, %v; want %q", c.family, c.model, got, err, c.want)
		}
		if err != nil && (!strings.Contains(err.Error(), "no known SEV-SNP product line") || strings.Contains(err.Error(), "\n")) {
			t.Errorf("error %q", err)
		}
	}
}

// TestProductLineOf: the product line comes from the chip (report CPUID, VCEK), agrees or
// fails naming both, and is never guessed.
func TestProductLineOf(t *testing.T) {
	milan, err := snptest.NewSigner(snptest.SignerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	genoa, err := snptest.NewSigner(snptest.SignerOptions{ProductName: "Genoa-B1"})
	if err != nil {
		t.Fatal(err)
	}
	report := func(s *snptest.Signer, f snptest.Fields) *snp.Report {
		raw, err := s.Report(f)
		if err != nil {
			t.Fatal(err)
		}
		r, err := snp.DecodeReport(raw)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	v2 := report(milan, snptest.Fields{Policy: testPolicy})
	v3milan := report(milan, snptest.Fields{Policy: testPolicy, Version3: true})
	v3genoa := report(genoa, snptest.Fields{Policy: testPolicy, CPUID: [3]byte{0x19, 0x11, 0x1}})
	v3turin := report(milan, snptest.Fields{Policy: testPolicy, CPUID: [3]byte{0x1a, 0x02, 0x0}})
	v3rome := report(milan, snptest.Fields{Policy: testPolicy, CPUID: [3]byte{0x17, 0x31, 0x0}})
	realVCEK, err := x509.ParseCertificate(testdata.VcekBytes)
	if err != nil {
		t.Fatal(err)
	}
	real, err := snp.DecodeReport(testdata.AttestationBytes[:abi.ReportSize])
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		rep  *snp.Report
		cert *x509.Certificate
		want string // "" means an error containing errWant
		err  string
	}{
		{"v3 report alone", v3milan, nil, "Milan", ""},
		{"v3 Genoa report alone", v3genoa, nil, "Genoa", ""},
		{"v3 Turin report alone", v3turin, nil, "Turin", ""},
		{"VCEK alone", nil, milan.Vcek, "Milan", ""},
		{"Genoa VCEK alone", nil, genoa.Vcek, "Genoa", ""},
		{"VLEK alone", nil, milan.Vlek, "Milan", ""},
		{"v2 report with its VCEK", v2, milan.Vcek, "Milan", ""},
		{"real v2 Milan report with its real VCEK", real, realVCEK, "Milan", ""},
		{"agreeing v3 report and VCEK", v3genoa, genoa.Vcek, "Genoa", ""},
		{"report says Genoa, VCEK Milan", v3genoa, milan.Vcek, "", "the report's CPUID says Genoa but it is endorsed by a Milan VCEK"},
		{"report says Turin, VCEK Genoa", v3turin, genoa.Vcek, "", "CPUID says Turin but it is endorsed by a Genoa VCEK"},
		{"unknown CPU family", v3rome, milan.Vcek, "", "family 0x17 model 0x31 is no known SEV-SNP product line"},
		{"v2 report alone", v2, nil, "", "a version 2 report carries no CPUID and no VCEK or VLEK was given"},
		{"nothing", nil, nil, "", "neither a report nor a VCEK"},
		{"an ARK is no endorsement key", v2, milan.Ark, "", "not an endorsement key"},
	} {
		got, err := snp.ProductLineOf(c.rep, c.cert)
		if c.want != "" {
			if err != nil || got != c.want {
				t.Errorf("%s: %q, %v; want %s", c.name, got, err, c.want)
			}
			continue
		}
		if err == nil || got != "" || !strings.Contains(err.Error(), c.err) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: %q, %v; want one line containing %q", c.name, got, err, c.err)
		}
	}
}

func TestDecomposeTCB(t *testing.T) {
	const v = 0x73_08_0000_0000_00_03 // microcode 0x73, SNP 8 (Milan/Genoa), bootloader 3
	for _, line := range []string{"Milan", "Genoa"} {
		c, err := snp.DecomposeTCB(line, v)
		if err != nil || c != (snp.TCBComponents{BootLoader: 3, SNP: 8, Microcode: 0x73}) {
			t.Fatalf("%s: %+v %v", line, c, err)
		}
	}
	c, err := snp.DecomposeTCB("Turin", 0x73_000000_0a_09_02_01)
	if err != nil || c != (snp.TCBComponents{FMC: 1, HasFMC: true, BootLoader: 2, TEE: 9, SNP: 10, Microcode: 0x73}) {
		t.Fatalf("Turin: %+v %v", c, err)
	}
	if _, err := snp.DecomposeTCB("", v); err == nil {
		t.Fatal("a TCB decomposed without a product line")
	}
	if c, err := snp.DecomposeTCB("", 0); err != nil || c != (snp.TCBComponents{}) {
		t.Fatalf("zero TCB: %+v %v", c, err)
	}
}

// FuzzProductLineOf: arbitrary report bytes and certificate DER never panic it, and what
// it returns is a known product line or an error, never both or neither.
func FuzzProductLineOf(f *testing.F) {
	f.Add(testdata.AttestationBytes[:abi.ReportSize], testdata.VcekBytes)
	f.Add(make([]byte, abi.ReportSize), []byte{0x30})
	f.Fuzz(func(t *testing.T, raw, der []byte) {
		rep, _ := snp.DecodeReport(raw)
		cert, _ := x509.ParseCertificate(der)
		line, err := snp.ProductLineOf(rep, cert)
		switch {
		case err != nil && line != "":
			t.Fatalf("both %q and %v", line, err)
		case err == nil && line != "Milan" && line != "Genoa" && line != "Turin":
			t.Fatalf("product line %q without an error", line)
		}
	})
}
