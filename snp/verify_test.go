package snp_test

import (
	"bytes"
	"context"
	"crypto/sha512"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	sgtest "github.com/google/go-sev-guest/testing"
	"github.com/google/go-sev-guest/verify/testdata"

	"github.com/snpd/snpd/snp"
	"github.com/snpd/snpd/snp/agentproto"
	"github.com/snpd/snpd/snp/snptest"
)

// testNow is inside every fake certificate's validity (created 2024-01-01).
var testNow = time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)

const testPolicy = 0x30000 // SMT allowed, reserved bit 17: QEMU's default

type fixture struct {
	signer *snptest.Signer
	roots  *snp.Roots
	fields snptest.Fields
	exp    snp.Expected
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	s, err := snptest.NewSigner(snptest.SignerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	roots, err := snp.ParseRoots(s.RootsPEM())
	if err != nil {
		t.Fatal(err)
	}
	nonce := []byte("verifier-nonce-0123456789abcdef")
	rd, err := agentproto.BindReportData(nonce, nil)
	if err != nil {
		t.Fatal(err)
	}
	f := snptest.Fields{Policy: testPolicy, ReportData: rd}
	f.Measurement = sha512.Sum384([]byte("launch digest"))
	copy(f.HostData[:], bytes.Repeat([]byte{0x5a}, 32))
	exp := snp.Expected{
		Measurement: f.Measurement[:],
		Policy:      testPolicy,
		HostData:    f.HostData[:],
		Nonce:       nonce,
		MinimumTCB:  0,
	}
	return &fixture{signer: s, roots: roots, fields: f, exp: exp}
}

func (fx *fixture) verifier() *snp.Verifier {
	return &snp.Verifier{Roots: fx.roots, Now: func() time.Time { return testNow }}
}

func (fx *fixture) report(t testing.TB, f snptest.Fields) []byte {
	t.Helper()
	r, err := fx.signer.Report(f)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestVerifyFakeSignedReportPasses(t *testing.T) {
	fx := newFixture(t)
	v := fx.verifier()
	raw := fx.report(t, fx.fields)
	for i := 0; i < 2; i++ { // second pass uses the cached chain
		vd := v.Verify(context.Background(), raw, fx.signer.CertTable(), fx.exp)
		if !vd.OK {
			t.Fatalf("pass %d: verdict failed: %+v", i, vd.Failed())
		}
		if len(vd.Checks) != 14 || !vd.Confidential || !vd.Get(snp.CheckConfidential).OK {
			t.Fatalf("got %d checks (confidential %v), want 14 with a passing %s", len(vd.Checks), vd.Confidential, snp.CheckConfidential)
		}
		if vd.Endorsement == nil || vd.Endorsement.Kind != snp.KindVCEK || !strings.Contains(vd.ChainPEM, "BEGIN CERTIFICATE") {
			t.Fatalf("endorsement %+v, chain %q", vd.Endorsement, vd.ChainPEM)
		}
		if vd.Report.Measurement != hex.EncodeToString(fx.fields.Measurement[:]) {
			t.Fatal("decoded measurement differs")
		}
	}
}

// TestVerifyNonConfidentialRecordNeverPlainlyPasses: a report that matches a launch
// record that is not confidential (platform none) fails, on the "confidential" check
// alone, with the record's reason, even when the report is otherwise perfect (it cannot
// be the evidence for a guest that ran without SEV-SNP). Asked explicitly, the check
// passes saying so, and the verdict still says it is not confidential.
func TestVerifyNonConfidentialRecordNeverPlainlyPasses(t *testing.T) {
	fx := newFixture(t)
	v := fx.verifier()
	raw := fx.report(t, fx.fields)
	exp := fx.exp
	exp.NotConfidential = "the launch record is not confidential (platform none)"
	vd := v.Verify(context.Background(), raw, fx.signer.CertTable(), exp)
	if vd.OK || vd.Confidential {
		t.Fatalf("a non-confidential record's verdict: ok %v, confidential %v", vd.OK, vd.Confidential)
	}
	if f := vd.Failed(); len(f) != 1 || f[0].Name != snp.CheckConfidential || f[0].Reason != exp.NotConfidential {
		t.Fatalf("failed checks %+v; want only %s saying %q", f, snp.CheckConfidential, exp.NotConfidential)
	}
	// Even a report that does not decode says it.
	if vd := v.Verify(context.Background(), raw[:100], nil, exp); vd.OK || vd.Get(snp.CheckConfidential).OK || vd.Get(snp.CheckConfidential).Name == "" {
		t.Fatalf("short report: %+v", vd.Checks)
	}
	exp.AllowNonConfidential = true
	vd = v.Verify(context.Background(), raw, fx.signer.CertTable(), exp)
	c := vd.Get(snp.CheckConfidential)
	if !vd.OK || vd.Confidential || !c.OK || !strings.Contains(c.Reason, "platform none") || !strings.Contains(c.Reason, "caller allowed") {
		t.Fatalf("allowed: ok %v, confidential %v, check %+v", vd.OK, vd.Confidential, c)
	}
}

// TestVerifyDeviations: each single deviation from the launch record or the platform fails,
// and the check that catches it says why. Only that check (and go-sev-guest's own
// validation, which sees the same deviation) may fail.
func TestVerifyDeviations(t *testing.T) {
	fx := newFixture(t)
	other, err := snptest.NewSigner(snptest.SignerOptions{NewVCEKKey: true, ChipID: [64]byte{0xee}})
	if err != nil {
		t.Fatal(err)
	}
	type tc struct {
		name    string
		mutate  func(f *snptest.Fields, e *snp.Expected)
		certs   func() []byte
		now     time.Time
		raw     func([]byte) []byte
		check   string
		reason  string
		alsoBad []string
	}
	cases := []tc{
		{name: "measurement", mutate: func(f *snptest.Fields, e *snp.Expected) { f.Measurement[0] ^= 1 },
			check: snp.CheckMeasurement, reason: "MEASUREMENT is"},
		{name: "debug bit", mutate: func(f *snptest.Fields, e *snp.Expected) { f.Policy |= 1 << 19 },
			check: snp.CheckPolicy, reason: "POLICY is 0xb0000", alsoBad: []string{snp.CheckPolicyCeiling}},
		{name: "debug bit within record but over ceiling", mutate: func(f *snptest.Fields, e *snp.Expected) {
			f.Policy |= 1 << 19
			e.Policy = f.Policy
			c := uint64(testPolicy)
			e.PolicyCeiling = &c
		}, check: snp.CheckPolicyCeiling, reason: "debug allowed"},
		{name: "host-data", mutate: func(f *snptest.Fields, e *snp.Expected) { f.HostData[31] ^= 0x80 },
			check: snp.CheckHostData, reason: "HOST_DATA is"},
		{name: "nonce", mutate: func(f *snptest.Fields, e *snp.Expected) { e.Nonce = []byte("another nonce") },
			check: snp.CheckReportData, reason: "does not bind the nonce"},
		{name: "vmpl", mutate: func(f *snptest.Fields, e *snp.Expected) { f.VMPL = 1 },
			check: snp.CheckVMPL, reason: "VMPL is 1, want 0"},
		{name: "tcb below minimum", mutate: func(f *snptest.Fields, e *snp.Expected) {
			e.MinimumTCB = fx.signer.TCB + 1<<56 // microcode SPL one above
		}, check: snp.CheckMinimumTCB, reason: "below the minimum"},
		{name: "tcb differs from certificate", mutate: func(f *snptest.Fields, e *snp.Expected) {
			f.ReportedTCB = fx.signer.TCB - 1<<56
		}, check: snp.CheckCertificateTCB, reason: "differs from the VCEK's TCB"},
		{name: "wrong chip's VCEK", certs: other.CertTable,
			check: snp.CheckSignature, reason: "signature", alsoBad: []string{snp.CheckCertificateTCB}},
		{name: "expired certificate", now: time.Date(2031, 6, 1, 0, 0, 0, 0, time.UTC),
			check: snp.CheckCertificate, reason: "expired"},
		{name: "truncated report", raw: func(b []byte) []byte { return b[:len(b)-1] },
			check: snp.CheckReportFormat, reason: "1183 bytes, want 1184"},
		{name: "unexpected ID block", mutate: func(f *snptest.Fields, e *snp.Expected) { f.IDKeyDigest[0] = 1 },
			check: snp.CheckIDKeys, reason: "no ID block"},
		{name: "ID key digest differs", mutate: func(f *snptest.Fields, e *snp.Expected) {
			f.IDKeyDigest[0] = 1
			e.IDKeyDigest = bytes.Repeat([]byte{2}, 48)
		}, check: snp.CheckIDKeys, reason: "ID_KEY_DIGEST is"},
		{name: "no cert anywhere", certs: func() []byte { return nil },
			check: snp.CheckCertificate, reason: "KDS fetching is off"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f, e := fx.fields, fx.exp
			if c.mutate != nil {
				c.mutate(&f, &e)
			}
			raw := fx.report(t, f)
			if c.raw != nil {
				raw = c.raw(raw)
			}
			certs := fx.signer.CertTable()
			if c.certs != nil {
				certs = c.certs()
			}
			v := fx.verifier()
			if !c.now.IsZero() {
				v.Now = func() time.Time { return c.now }
			}
			vd := v.Verify(context.Background(), raw, certs, e)
			if vd.OK {
				t.Fatal("deviation passed verification")
			}
			got := vd.Get(c.check)
			if got.Name == "" || got.OK || !strings.Contains(got.Reason, c.reason) {
				t.Fatalf("check %s = %+v, want failed with %q; all failures: %+v", c.check, got, c.reason, vd.Failed())
			}
			allowed := map[string]bool{c.check: true, snp.CheckGoSevGuestValid: true}
			for _, a := range c.alsoBad {
				allowed[a] = true
			}
			for _, fc := range vd.Failed() {
				if !allowed[fc.Name] && !strings.HasPrefix(fc.Reason, "not checked") {
					t.Errorf("unrelated check %s failed: %s", fc.Name, fc.Reason)
				}
			}
		})
	}
}

// TestVerifyMeasurementNeverPassesWithout: an expectation without a measurement fails.
func TestVerifyNeedsMeasurement(t *testing.T) {
	fx := newFixture(t)
	e := fx.exp
	e.Measurement = nil
	vd := fx.verifier().Verify(context.Background(), fx.report(t, fx.fields), fx.signer.CertTable(), e)
	if vd.OK || vd.Get(snp.CheckMeasurement).OK {
		t.Fatal("verdict passed without an expected measurement")
	}
}

// TestVerifyCertFromCache: a guest that gives no certificate table is verified with the VCEK
// imported into the cache.
func TestVerifyCertFromCache(t *testing.T) {
	fx := newFixture(t)
	cache := &snp.CertCache{Dir: t.TempDir(), Roots: fx.roots}
	if _, err := cache.Import(fx.signer.CertTable(), testNow); err != nil {
		t.Fatal(err)
	}
	v := fx.verifier()
	v.Cache = cache
	vd := v.Verify(context.Background(), fx.report(t, fx.fields), nil, fx.exp)
	if !vd.OK {
		t.Fatalf("%+v", vd.Failed())
	}
}

// TestVerifyVLEK: a VLEK-signed report verifies through the ASVK.
func TestVerifyVLEK(t *testing.T) {
	fx := newFixture(t)
	f := fx.fields
	f.SignWithVLEK = true
	vd := fx.verifier().Verify(context.Background(), fx.report(t, f), fx.signer.CertTable(), fx.exp)
	if !vd.OK || vd.Endorsement.Kind != snp.KindVLEK {
		t.Fatalf("%+v", vd.Failed())
	}
}

// TestVerifyRealMilanReport: the real Milan report shipped in go-sev-guest's testdata
// verifies offline against AMD's real roots at a fixed time (its VCEK from the same
// testdata), with the expectations read off the report itself.
func TestVerifyRealMilanReport(t *testing.T) {
	raw := testdata.AttestationBytes[:abi.ReportSize]
	rep, err := snp.DecodeReport(raw)
	if err != nil {
		t.Fatal(err)
	}
	unhex := func(s string) []byte { b, _ := hex.DecodeString(s); return b }
	cache := &snp.CertCache{Dir: t.TempDir()}
	now := time.Date(2023, 6, 1, 0, 0, 0, 0, time.UTC)
	if _, err := cache.Import(testdata.VcekBytes, now); err != nil {
		t.Fatalf("importing the real VCEK against AMD's roots: %v", err)
	}
	exp := snp.Expected{
		Measurement: unhex(rep.Measurement),
		Policy:      rep.Policy,
		ReportData:  unhex(rep.ReportData),
		HostData:    unhex(rep.HostData),
	}
	v := &snp.Verifier{Cache: cache, Now: func() time.Time { return now }}
	vd := v.Verify(context.Background(), raw, nil, exp)
	if !vd.OK {
		t.Fatalf("real Milan report failed: %+v", vd.Failed())
	}
	if vd.Endorsement.ProductLine != "Milan" {
		t.Fatalf("product line %q", vd.Endorsement.ProductLine)
	}
	// One flipped bit in the measurement expectation fails it, and one flipped bit in the
	// signed part of the report fails the signature.
	exp.Measurement[0] ^= 1
	if vd := v.Verify(context.Background(), raw, nil, exp); vd.OK || vd.Get(snp.CheckMeasurement).OK {
		t.Fatal("wrong measurement passed")
	}
	exp.Measurement[0] ^= 1
	bad := bytes.Clone(raw)
	bad[0x50] ^= 1
	exp.ReportData = unhex(hex.EncodeToString(bad[0x50:0x90]))
	if vd := v.Verify(context.Background(), bad, nil, exp); vd.OK || vd.Get(snp.CheckSignature).OK {
		t.Fatalf("tampered report passed: %+v", vd.Checks)
	}
}

// TestVerifyFetchesFromKDSOnlyWhenConfigured: with no certificate anywhere, a Verifier
// without a Getter fails closed; with one (go-sev-guest's test getter standing in for
// AMD's KDS) it fetches the VCEK by chip id and TCB, verifies and caches it.
func TestVerifyFetchesFromKDSOnlyWhenConfigured(t *testing.T) {
	fx := newFixture(t)
	f := fx.fields
	f.Version3 = true
	raw := fx.report(t, f)
	url := kds.VCEKCertURL("Milan", fx.signer.ChipID[:], kds.TCBVersion(fx.signer.TCB))
	getter := sgtest.SimpleGetter(map[string][]byte{url: fx.signer.Vcek.Raw})
	cache := &snp.CertCache{Dir: t.TempDir(), Roots: fx.roots}

	offline := fx.verifier()
	offline.Cache = cache
	if vd := offline.Verify(context.Background(), raw, nil, fx.exp); vd.OK || vd.Get(snp.CheckCertificate).OK {
		t.Fatal("verified without any VCEK and without KDS")
	}
	online := fx.verifier()
	online.Cache, online.Getter = cache, getter
	if vd := online.Verify(context.Background(), raw, nil, fx.exp); !vd.OK {
		t.Fatalf("with KDS: %+v", vd.Failed())
	}
	if der, err := cache.VCEK(fx.signer.ChipID[:], fx.signer.TCB); err != nil || !bytes.Equal(der, fx.signer.Vcek.Raw) {
		t.Fatalf("fetched VCEK not cached: %v", err)
	}
	// Now offline works from the cache.
	if vd := offline.Verify(context.Background(), raw, nil, fx.exp); !vd.OK {
		t.Fatalf("offline after caching: %+v", vd.Failed())
	}
}

// TestVerifyProductLineOnEveryReport: a report whose CPUID says Genoa but that is signed
// with a Milan VCEK is refused by a fresh Verifier, and still refused after a correct
// report has put that VCEK's verified chain in the cache (go-sev-guest v0.15.0 ties a
// report's product line to its roots only when it verifies a chain, i.e. the first time).
func TestVerifyProductLineOnEveryReport(t *testing.T) {
	fx := newFixture(t)
	certs := fx.signer.CertTable()
	genoa := fx.fields
	genoa.CPUID = [3]byte{0x19, 0x11, 0x1} // Genoa B1
	bad := fx.report(t, genoa)
	milan := fx.fields
	milan.Version3 = true
	good := fx.report(t, milan)
	refused := func(v *snp.Verifier, when string) {
		t.Helper()
		vd := v.Verify(context.Background(), bad, certs, fx.exp)
		if vd.OK {
			t.Fatalf("%s: a report claiming Genoa, signed by a Milan VCEK, passed", when)
		}
		c := vd.Get(snp.CheckCertificate)
		if c.OK || !strings.Contains(c.Reason, "CPUID says Genoa") || !strings.Contains(c.Reason, "Milan VCEK") {
			t.Fatalf("%s: %s = %+v, want the product line named; failures %+v", when, snp.CheckCertificate, c, vd.Failed())
		}
	}
	v := fx.verifier()
	refused(v, "fresh verifier")
	for i := 0; i < 2; i++ { // the second pass is served from the cache
		if vd := v.Verify(context.Background(), good, certs, fx.exp); !vd.OK {
			t.Fatalf("correct Milan report, pass %d: %+v", i, vd.Failed())
		}
	}
	refused(v, "after a correct report cached the chain")
	// A report naming no known product line at all.
	odd := fx.fields
	odd.CPUID = [3]byte{0x17, 0x31, 0x0} // Zen 2 (Rome): no SEV-SNP
	if vd := v.Verify(context.Background(), fx.report(t, odd), certs, fx.exp); vd.OK || !strings.Contains(vd.Get(snp.CheckCertificate).Reason, "no known SEV-SNP product line") {
		t.Fatalf("report from an unknown family: %+v", vd.Get(snp.CheckCertificate))
	}
}

// TestVerifyExpectedProductLine: with the launch host's product line in the expectation,
// a report endorsed by another line's key is refused naming both, cached chain or not.
func TestVerifyExpectedProductLine(t *testing.T) {
	fx := newFixture(t)
	v := fx.verifier()
	raw := fx.report(t, fx.fields)
	for i, line := range []string{"Milan", "", "Genoa", "Milan"} {
		e := fx.exp
		e.ProductLine = line
		vd := v.Verify(context.Background(), raw, fx.signer.CertTable(), e)
		c := vd.Get(snp.CheckCertificate)
		if line == "Genoa" {
			if vd.OK || c.OK || !strings.Contains(c.Reason, "endorsed by a Milan VCEK but the launch record's host is a Genoa") {
				t.Fatalf("pass %d: %s = %+v", i, snp.CheckCertificate, c)
			}
			continue
		}
		if !vd.OK {
			t.Fatalf("pass %d, line %q: %+v", i, line, vd.Failed())
		}
	}
}

// TestVerifySignerKindOnEveryReport: a VLEK-signed report given the (cached, verified)
// VCEK as its VLEK is refused with both kinds named, not merely on the signature.
func TestVerifySignerKindOnEveryReport(t *testing.T) {
	fx := newFixture(t)
	v := fx.verifier()
	if vd := v.Verify(context.Background(), fx.report(t, fx.fields), fx.signer.CertTable(), fx.exp); !vd.OK {
		t.Fatalf("%+v", vd.Failed())
	}
	f := fx.fields
	f.SignWithVLEK = true
	swapped := (&snp.CertTable{ARK: fx.signer.Ark.Raw, ASK: fx.signer.Ask.Raw, VLEK: fx.signer.Vcek.Raw}).Marshal()
	vd := v.Verify(context.Background(), fx.report(t, f), swapped, fx.exp)
	if c := vd.Get(snp.CheckCertificate); vd.OK || c.OK || !strings.Contains(c.Reason, "signed by its VLEK but the certificate given for it is a VCEK") {
		t.Fatalf("VLEK report with a VCEK: %+v", c)
	}
}

// TestVerifyIDKeyRefusalsNameTheField: with no ID block in the launch record, each field
// of the report that says otherwise is named, alone: AUTHOR_KEY_EN alone is not "ID key
// digests".
func TestVerifyIDKeyRefusalsNameTheField(t *testing.T) {
	fx := newFixture(t)
	for _, c := range []struct {
		name    string
		mutate  func(*snptest.Fields)
		want    string
		notWant string
	}{
		{"AUTHOR_KEY_EN only", func(f *snptest.Fields) { f.AuthorKeyEn = true }, "the launch record has no ID block but the report has AUTHOR_KEY_EN set", "DIGEST"},
		{"ID key digest only", func(f *snptest.Fields) { f.IDKeyDigest[3] = 7 }, "the report has ID_KEY_DIGEST 000000070000", "AUTHOR"},
		{"author key digest only", func(f *snptest.Fields) { f.AuthorKeyDigest[0] = 9 }, "the report has AUTHOR_KEY_DIGEST 0900", "ID_KEY"},
		{"all three", func(f *snptest.Fields) { f.IDKeyDigest[0], f.AuthorKeyDigest[0], f.AuthorKeyEn = 1, 1, true },
			"ID_KEY_DIGEST 0100000000000000…, AUTHOR_KEY_DIGEST 0100000000000000…, AUTHOR_KEY_EN set", "carries"},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := fx.fields
			c.mutate(&f)
			vd := fx.verifier().Verify(context.Background(), fx.report(t, f), fx.signer.CertTable(), fx.exp)
			got := vd.Get(snp.CheckIDKeys)
			if vd.OK || got.OK || !strings.Contains(got.Reason, c.want) || strings.Contains(got.Reason, c.notWant) {
				t.Fatalf("%s = %+v, want %q and not %q", snp.CheckIDKeys, got, c.want, c.notWant)
			}
		})
	}
	// With an ID block but no author key, an author key digest without AUTHOR_KEY_EN is
	// named too.
	f := fx.fields
	f.IDKeyDigest[0], f.AuthorKeyDigest[0] = 1, 2
	e := fx.exp
	e.IDKeyDigest = f.IDKeyDigest[:]
	vd := fx.verifier().Verify(context.Background(), fx.report(t, f), fx.signer.CertTable(), e)
	if got := vd.Get(snp.CheckIDKeys); got.OK || !strings.Contains(got.Reason, "AUTHOR_KEY_DIGEST is 0200") {
		t.Fatalf("author key digest without author key: %+v", got)
	}
}

// TestVerifyReportDataRefusals: an out-of-range nonce is refused by the binding itself
// (its 16-bit length would wrap at 65536 bytes), and an exact REPORT_DATA that differs is
// reported as such, not as a nonce problem.
func TestVerifyReportDataRefusals(t *testing.T) {
	fx := newFixture(t)
	raw := fx.report(t, fx.fields)
	for _, n := range []int{65, 65536, 65536 + 31} {
		e := fx.exp
		e.Nonce = bytes.Repeat([]byte{'n'}, n)
		vd := fx.verifier().Verify(context.Background(), raw, fx.signer.CertTable(), e)
		if got := vd.Get(snp.CheckReportData); vd.OK || got.OK || !strings.Contains(got.Reason, "want 1..64") {
			t.Fatalf("%d-byte nonce: %+v", n, got)
		}
	}
	e := fx.exp
	e.Nonce, e.ReportData = nil, bytes.Repeat([]byte{1}, 64)
	vd := fx.verifier().Verify(context.Background(), raw, fx.signer.CertTable(), e)
	if got := vd.Get(snp.CheckReportData); got.OK || !strings.Contains(got.Reason, "differs from the expected REPORT_DATA 0101") || strings.Contains(got.Reason, "nonce") {
		t.Fatalf("exact REPORT_DATA: %+v", got)
	}
	e.ReportData = fx.fields.ReportData[:]
	if vd := fx.verifier().Verify(context.Background(), raw, fx.signer.CertTable(), e); !vd.OK {
		t.Fatalf("matching exact REPORT_DATA: %+v", vd.Failed())
	}
}

// FuzzVerify: arbitrary report and certificate-table bytes never panic the Verifier, and
// with no trusted roots nothing ever passes. (No roots keeps RSA out of the loop: under the
// fuzzer's coverage instrumentation one RSA-4096 operation takes seconds. The chain checks
// themselves are covered by the tests above.)
func FuzzVerify(f *testing.F) {
	raw := testdata.AttestationBytes[:abi.ReportSize]
	f.Add(raw, (&snp.CertTable{VCEK: testdata.VcekBytes}).Marshal())
	f.Add(raw, []byte(nil))
	rep, err := snp.DecodeReport(raw)
	if err != nil {
		f.Fatal(err)
	}
	exp := snp.Expected{Policy: rep.Policy, ReportData: rep.Proto().GetReportData(), Measurement: rep.Proto().GetMeasurement(), IDKeyDigest: make([]byte, 48)}
	v := &snp.Verifier{Roots: &snp.Roots{}, Now: func() time.Time { return time.Date(2023, 6, 1, 0, 0, 0, 0, time.UTC) }}
	f.Fuzz(func(t *testing.T, raw, table []byte) {
		vd := v.Verify(context.Background(), raw, table, exp)
		if vd.OK {
			t.Fatalf("a report passed with no trusted roots: %+v", vd.Checks)
		}
		for _, c := range vd.Checks {
			if c.Name == "" || strings.Contains(c.Reason, "\n") {
				t.Fatalf("check %+v: unnamed or more than one line", c)
			}
		}
	})
}
