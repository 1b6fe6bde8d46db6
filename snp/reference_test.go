package snp_test

import (
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/prototext"

	"github.com/google/go-sev-guest/abi"
	checkpb "github.com/google/go-sev-guest/proto/check"
	"github.com/google/go-sev-guest/verify/testdata"

	"github.com/snpd/snpd/snp"
	"github.com/snpd/snpd/snp/agentproto"
	"github.com/snpd/snpd/snp/launch"
	"github.com/snpd/snpd/snp/snptest"
)

// fixtureReference is the reference of the fixture's launch as a host configured with
// go-sev-guest's test roots (attestation.trusted_roots_file) builds it: a Reference has
// no field for roots, and no export may carry any (noRoots).
func fixtureReference(t testing.TB, fx *fixture) snp.Reference {
	return snp.Reference{
		Name:        "vm1",
		Measurement: fx.exp.Measurement,
		Policy:      fx.exp.Policy,
		HostData:    fx.exp.HostData,
		ProductLine: "Milan",
	}
}

// noRoots fails when an export carries a certificate or a CA bundle.
func noRoots(t *testing.T, format string, b []byte) {
	t.Helper()
	for _, bad := range []string{"BEGIN CERTIFICATE", "cabundle", "ca_bundle", "MII"} {
		if bytes.Contains(b, []byte(bad)) {
			t.Fatalf("the %s export carries trusted roots (%q):\n%s", format, bad, b)
		}
	}
}

func TestExportReferenceFormats(t *testing.T) {
	fx := newFixture(t)
	ref := fixtureReference(t, fx)
	ref.MinimumTCB = fx.signer.TCB

	b, err := snp.ExportReference(ref, snp.FormatJSON)
	if err != nil {
		t.Fatal(err)
	}
	noRoots(t, "json", b)
	var doc snp.ReferenceJSON
	if err := json.Unmarshal(b, &doc); err != nil || doc.Measurement != hex.EncodeToString(ref.Measurement) || doc.Policy != "0x30000" || doc.ProductLine != "Milan" {
		t.Fatalf("json: %v %+v", err, doc)
	}
	for _, want := range []string{"none included", "-product_key_path", "-product Milan"} {
		if !strings.Contains(doc.TrustedRoots, want) {
			t.Fatalf("json trusted_roots %q does not say %q", doc.TrustedRoots, want)
		}
	}
	if !strings.Contains(doc.ReportData, "uint16_be(len(nonce))") || !strings.Contains(doc.ReportData, "1..64") {
		t.Fatalf("json report_data %q", doc.ReportData)
	}

	b, err = snp.ExportReference(ref, snp.FormatTrustee)
	if err != nil {
		t.Fatal(err)
	}
	noRoots(t, "trustee", b)
	var msg struct{ Version, Type, Payload string }
	if err := json.Unmarshal(b, &msg); err != nil || msg.Version != "0.1.0" || msg.Type != "sample" {
		t.Fatalf("trustee message: %v %+v", err, msg)
	}
	payload, err := base64.StdEncoding.DecodeString(msg.Payload)
	if err != nil {
		t.Fatal(err)
	}
	var rv map[string]any
	if err := json.Unmarshal(payload, &rv); err != nil {
		t.Fatal(err)
	}
	// Lists where the policy uses `in`, numbers and booleans where it uses `==`.
	if m, ok := rv["snp_launch_measurement"].([]any); !ok || len(m) != 1 || m[0] != hex.EncodeToString(ref.Measurement) {
		t.Fatalf("snp_launch_measurement = %#v", rv["snp_launch_measurement"])
	}
	for k, want := range map[string]any{"snp_guest_abi_major": float64(0), "snp_guest_abi_minor": float64(0), "snp_smt_allowed": true, "snp_single_socket": false} {
		if rv[k] != want {
			t.Fatalf("%s = %#v, want %#v", k, rv[k], want)
		}
	}
	// The signer's TCB is bootloader 3, TEE 0, SNP 8, microcode 115: each list runs from
	// there to 255.
	for k, min := range map[string]int{"snp_bootloader": 3, "snp_tee_svn": 0, "snp_snp_svn": 8, "snp_microcode": 115} {
		l, ok := rv[k].([]any)
		if !ok || len(l) != 256-min || l[0] != float64(min) || l[len(l)-1] != float64(255) {
			t.Fatalf("%s = %v, want %d..255", k, rv[k], min)
		}
	}
	for _, k := range []string{"snp_smt_enabled", "snp_tsme_enabled", "snp_host_data", "snp_policy_debug_allowed", "snp_policy_migrate_ma", "snp_id_key_digest"} {
		if _, ok := rv[k]; ok {
			t.Fatalf("%s exported (unknown platform fact, or a key nothing in Trustee reads)", k)
		}
	}
	on, off := true, false
	ref.SMTEnabled, ref.TSMEEnabled = &on, &off
	if rv, err := snp.TrusteeReferenceValues(ref); err != nil || rv["snp_smt_enabled"] != true || rv["snp_tsme_enabled"] != false {
		t.Fatalf("platform facts: %v %v", rv, err)
	}
	// A Turin minimum TCB is laid out differently: FMC 7:0, bootloader 15:8, TEE 23:16,
	// SNP 31:24, microcode 63:56.
	turin := ref
	turin.ProductLine, turin.MinimumTCB = "Turin", 0x48_000000_04030201
	if rv, err := snp.TrusteeReferenceValues(turin); err != nil || rv["snp_bootloader"].([]int)[0] != 2 || rv["snp_tee_svn"].([]int)[0] != 3 || rv["snp_snp_svn"].([]int)[0] != 4 || rv["snp_microcode"].([]int)[0] != 0x48 {
		t.Fatalf("Turin TCB lists: %v %v", rv, err)
	}
	turin.ProductLine = ""
	if _, err := snp.ExportReference(turin, snp.FormatTrustee); err == nil || !strings.Contains(err.Error(), "product line") {
		t.Fatalf("a minimum TCB without a product line: %v", err)
	}

	b, err = snp.ExportReference(ref, snp.FormatSevGuestCheck)
	if err != nil {
		t.Fatal(err)
	}
	noRoots(t, "sev-guest-check", b)
	var cfg checkpb.Config
	if err := prototext.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(cfg.GetPolicy().GetMeasurement(), ref.Measurement) || !cfg.GetRootOfTrust().GetDisallowNetwork() || cfg.GetPolicy().GetVmpl().GetValue() != 0 ||
		len(cfg.GetRootOfTrust().GetCabundles()) != 0 || len(cfg.GetRootOfTrust().GetCabundlePaths()) != 0 || cfg.GetRootOfTrust().GetProductLine() != "Milan" {
		t.Fatalf("check config %v", &cfg)
	}
	// Without recorded host data the config requires HOST_DATA to be zero, as snpd does.
	if c, err := snp.CheckConfig(snp.Reference{Name: "x", Measurement: ref.Measurement, Policy: ref.Policy}); err != nil || !bytes.Equal(c.GetPolicy().GetHostData(), make([]byte, 32)) {
		t.Fatalf("check config without host data: %v %v", c, err)
	}
	for _, want := range []string{".textproto", "-report_data", "-product Milan", "-product_key_path", "no trusted roots"} {
		if !strings.Contains(string(b), want) {
			t.Fatalf("the check config's comment does not mention %q:\n%s", want, b)
		}
	}

	if _, err := snp.ExportReference(ref, snp.FormatLaunchLog); err == nil {
		t.Fatal("launch-log without updates accepted")
	}
	if _, err := snp.ExportReference(ref, "yaml"); err == nil || !strings.Contains(err.Error(), "unknown format") {
		t.Fatalf("unknown format: %v", err)
	}
	ref.Measurement = ref.Measurement[:47]
	if _, err := snp.ExportReference(ref, snp.FormatJSON); err == nil {
		t.Fatal("short measurement accepted")
	}
}

// TestLaunchLogReplays: the launch log of a real measurement (Debian's OVMF, 2 vCPUs,
// EPYC-v4) replays to the same digest with ReplayLaunchLog, which recomputes the PAGE_INFO
// chain independently of Measure; a changed entry does not.
func TestLaunchLogReplays(t *testing.T) {
	fw, err := os.Open(filepath.Join("testdata", "firmware", "ovmf-bookworm-2022.11.fd"))
	if err != nil {
		t.Fatal(err)
	}
	defer fw.Close()
	st, _ := fw.Stat()
	sig, err := launch.CPUSignature("EPYC-v4")
	if err != nil {
		t.Fatal(err)
	}
	m, err := launch.Measure(launch.MeasureInput{Mode: launch.ModeSNP, Firmware: fw, FirmwareSize: st.Size(), VCPUs: 2, VCPUSig: sig, GuestFeatures: 1, Log: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Updates) == 0 {
		t.Fatal("launch.Measure with Log: true recorded no page updates")
	}
	ref := snp.Reference{Name: "vm1", Measurement: m.Digest, Policy: 0x30000, Updates: m.Updates}
	b, err := snp.ExportReference(ref, snp.FormatLaunchLog)
	if err != nil {
		t.Fatal(err)
	}
	d, err := snp.ReplayLaunchLog(b)
	if err != nil || !bytes.Equal(d, m.Digest) {
		t.Fatalf("replay: %x %v, want %x", d, err, m.Digest)
	}
	var l snp.LaunchLog
	_ = json.Unmarshal(b, &l)
	l.Updates[len(l.Updates)/2].GPA = "0x1000"
	tampered, _ := json.Marshal(l)
	if _, err := snp.ReplayLaunchLog(tampered); err == nil {
		t.Fatal("tampered launch log replayed to the recorded digest")
	}
}

// buildCheckTool builds go-sev-guest's tools/check (the version in go.mod, v0.15.0) from
// the module cache, as daemon/attest_e2e_test.go does.
func buildCheckTool(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/google/go-sev-guest").Output()
	if err != nil {
		t.Fatalf("locating go-sev-guest: %v", err)
	}
	dir := strings.TrimSpace(string(out))
	bin := filepath.Join(t.TempDir(), "check")
	cmd := exec.Command("go", "build", "-o", bin, "./tools/check")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building go-sev-guest's check tool in %s: %v\n%s", dir, err, b)
	}
	return bin
}

// checkRunner runs the check tool with the config file cfg on report+table.
type checkRunner struct {
	t     *testing.T
	check string
	dir   string
}

func (c checkRunner) run(name string, report, table []byte, args ...string) (string, error) {
	c.t.Helper()
	in := filepath.Join(c.dir, name+".bin")
	if err := os.WriteFile(in, append(bytes.Clone(report), table...), 0o644); err != nil {
		c.t.Fatal(err)
	}
	cmd := exec.Command(c.check, append([]string{"-in", in}, args...)...)
	out, err := cmd.CombinedOutput()
	c.t.Logf("%s: exit %v: %s", strings.Join(cmd.Args, " "), err, bytes.TrimSpace(out))
	return string(out), err
}

func writeFile(t *testing.T, path string, b []byte) string {
	t.Helper()
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestCheckToolRefusesTestChainWithExportUnchanged: the sev-guest-check export of a host
// whose trusted roots are go-sev-guest's publicly known test roots, fed unchanged to
// go-sev-guest v0.15.0's real check tool, makes it refuse a report signed with that test
// chain (check falls back to AMD's roots, as it must). Pinning the test roots with check's
// own -product_key_path and -product flags (a verifier's choice, not the host's) makes
// the same report pass, and then the measurement, debug bit, signature and -report_data
// nonce binding each still fail on their own.
func TestCheckToolRefusesTestChainWithExportUnchanged(t *testing.T) {
	if testing.Short() {
		t.Skip("builds go-sev-guest's check tool; skipped with -short")
	}
	c := checkRunner{t: t, check: buildCheckTool(t), dir: t.TempDir()}
	fx := newFixture(t)
	cfgText, err := snp.ExportReference(fixtureReference(t, fx), snp.FormatSevGuestCheck)
	if err != nil {
		t.Fatal(err)
	}
	cfg := writeFile(t, filepath.Join(c.dir, "vm1.textproto"), cfgText)
	// The verifier's own pin: the test ASK then ARK, PEM (AMD's KDS cert_chain order).
	pinned := []string{"-product_key_path", writeFile(t, filepath.Join(c.dir, "ask_ark.pem"), snptest.PEM(fx.signer.Ask, fx.signer.Ark)), "-product", "Milan"}
	table := fx.signer.CertTable()
	good := fx.report(t, fx.fields)

	out, err := c.run("unchanged", good, table, "-config", cfg)
	if err == nil {
		t.Fatalf("check accepted a report signed with go-sev-guest's public test key using snpd's export unchanged:\n%s", out)
	}
	if !strings.Contains(out, "VCEK") || strings.Contains(out, "MEASUREMENT") {
		t.Fatalf("check refused for another reason than the untrusted chain:\n%s", out)
	}
	if out, err := c.run("pinned", good, table, append([]string{"-config", cfg}, pinned...)...); err != nil {
		t.Fatalf("check refused the matching report with the test roots pinned by flag: %v\n%s", err, out)
	}
	// -report_data binds the nonce the export cannot carry.
	nonceRD := hex.EncodeToString(fx.fields.ReportData[:])
	if out, err := c.run("nonce", good, table, append([]string{"-config", cfg, "-report_data", nonceRD}, pinned...)...); err != nil {
		t.Fatalf("check refused the report with its own REPORT_DATA: %v\n%s", err, out)
	}
	other, err := agentproto.BindReportData([]byte("another verifier's nonce"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := c.run("nonce", good, table, append([]string{"-config", cfg, "-report_data", hex.EncodeToString(other[:])}, pinned...)...); err == nil || !strings.Contains(out, "REPORT_DATA") {
		t.Fatalf("check with another nonce's REPORT_DATA: %v\n%s", err, out)
	}
	f := fx.fields
	f.Measurement[5] ^= 0x40
	if out, err := c.run("measurement", fx.report(t, f), table, append([]string{"-config", cfg}, pinned...)...); err == nil || !strings.Contains(out, "MEASUREMENT") {
		t.Fatalf("check on another measurement: %v\n%s", err, out)
	}
	f = fx.fields
	f.Policy |= 1 << 19 // debug
	if out, err := c.run("debug", fx.report(t, f), table, append([]string{"-config", cfg}, pinned...)...); err == nil || !strings.Contains(out, "debug") {
		t.Fatalf("check on a debug report: %v\n%s", err, out)
	}
	bad := bytes.Clone(good)
	bad[0x90] ^= 1 // measurement byte changed after signing
	if out, err := c.run("tampered", bad, table, append([]string{"-config", cfg}, pinned...)...); err == nil {
		t.Fatalf("check accepted a tampered report:\n%s", out)
	}
	// check reads a config as text only from a *.textproto file: the same bytes under
	// another name do not parse (binary protobuf), which is why the export says so.
	plain := writeFile(t, filepath.Join(c.dir, "vm1.conf"), cfgText)
	if out, err := c.run("plain", good, table, append([]string{"-config", plain}, pinned...)...); err == nil || !strings.Contains(out, "deserialize") {
		t.Fatalf("check with the config under a name not ending in .textproto: %v\n%s", err, out)
	}
}

// TestCheckToolGenoaNeedsProduct: for a Genoa host the export names Genoa and says to run
// check with -product Genoa. With the verifier's pinned (test) Genoa roots, check refuses a
// Genoa report without that flag (it keys the pinned roots by its default, Milan) and
// accepts it with the flag, as the export says.
func TestCheckToolGenoaNeedsProduct(t *testing.T) {
	if testing.Short() {
		t.Skip("builds go-sev-guest's check tool; skipped with -short")
	}
	c := checkRunner{t: t, check: buildCheckTool(t), dir: t.TempDir()}
	s, err := snptest.NewSigner(snptest.SignerOptions{ProductName: "Genoa-B1"})
	if err != nil {
		t.Fatal(err)
	}
	fx := newFixture(t)
	f := fx.fields
	f.CPUID = [3]byte{0x19, 0x11, 0x1} // Genoa B1
	raw, err := s.Report(f)
	if err != nil {
		t.Fatal(err)
	}
	ref := fixtureReference(t, fx)
	ref.ProductLine = "Genoa"
	cfgText, err := snp.ExportReference(ref, snp.FormatSevGuestCheck)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(cfgText), "-product Genoa\n") {
		t.Fatalf("the Genoa export does not say -product Genoa:\n%s", cfgText)
	}
	cfg := writeFile(t, filepath.Join(c.dir, "vm1.textproto"), cfgText)
	pin := writeFile(t, filepath.Join(c.dir, "ask_ark.pem"), snptest.PEM(s.Ask, s.Ark))
	if out, err := c.run("noflag", raw, s.CertTable(), "-config", cfg, "-product_key_path", pin); err == nil {
		t.Fatalf("check accepted a Genoa report with Genoa roots but without -product Genoa:\n%s", out)
	}
	if out, err := c.run("flag", raw, s.CertTable(), "-config", cfg, "-product_key_path", pin, "-product", "Genoa"); err != nil {
		t.Fatalf("check with -product Genoa as the export says: %v\n%s", err, out)
	}
	if out, err := c.run("unpinned", raw, s.CertTable(), "-config", cfg, "-product", "Genoa"); err == nil {
		t.Fatalf("check accepted the Genoa test chain without the verifier pinning it:\n%s", out)
	}
}

// TestCheckToolAcceptsRealMilanReport: go-sev-guest's real Milan report (verify/testdata,
// a report snpd did not make, signed by a real AMD chip) passes check with the export of
// its own values used unchanged (check's embedded AMD roots; the VCEK from the same
// testdata in the certificate table), also with its REPORT_DATA given by -report_data, and
// fails with another measurement or another REPORT_DATA.
func TestCheckToolAcceptsRealMilanReport(t *testing.T) {
	if testing.Short() {
		t.Skip("builds go-sev-guest's check tool; skipped with -short")
	}
	c := checkRunner{t: t, check: buildCheckTool(t), dir: t.TempDir()}
	raw := testdata.AttestationBytes[:abi.ReportSize]
	rep, err := snp.DecodeReport(raw)
	if err != nil {
		t.Fatal(err)
	}
	unhex := func(s string) []byte { b, _ := hex.DecodeString(s); return b }
	line, err := snp.ProductLineOf(rep, mustCert(t, testdata.VcekBytes))
	if err != nil || line != "Milan" {
		t.Fatalf("product line of the real report: %q %v", line, err)
	}
	ref := snp.Reference{Name: "real", Measurement: unhex(rep.Measurement), Policy: rep.Policy, HostData: unhex(rep.HostData), ProductLine: line}
	cfgText, err := snp.ExportReference(ref, snp.FormatSevGuestCheck)
	if err != nil {
		t.Fatal(err)
	}
	cfg := writeFile(t, filepath.Join(c.dir, "real.textproto"), cfgText)
	table := (&snp.CertTable{VCEK: testdata.VcekBytes}).Marshal()
	// Without -product, check expects a Milan-B1 VCEK (its default) and this one is
	// Milan-B0: hence the export's advice to pass -product LINE, or -product_name with the
	// VCEK's exact product name.
	if out, err := c.run("default", raw, table, "-config", cfg); err == nil || !strings.Contains(out, "stepping") {
		t.Fatalf("check without -product on a Milan-B0 report: %v\n%s", err, out)
	}
	if out, err := c.run("name", raw, table, "-config", cfg, "-product_name", "Milan-B0"); err != nil {
		t.Fatalf("check with -product_name Milan-B0: %v\n%s", err, out)
	}
	if out, err := c.run("real", raw, table, "-config", cfg, "-product", "Milan"); err != nil {
		t.Fatalf("check refused the real Milan report with the export unchanged: %v\n%s", err, out)
	}
	if out, err := c.run("real", raw, table, "-config", cfg, "-product", "Milan", "-report_data", rep.ReportData); err != nil {
		t.Fatalf("check refused the real Milan report with its REPORT_DATA: %v\n%s", err, out)
	}
	if out, err := c.run("real", raw, table, "-config", cfg, "-product", "Milan", "-report_data", strings.Repeat("ab", 64)); err == nil || !strings.Contains(out, "REPORT_DATA") {
		t.Fatalf("check with another REPORT_DATA: %v\n%s", err, out)
	}
	ref.Measurement = bytes.Clone(ref.Measurement)
	ref.Measurement[0] ^= 1
	cfgText, err = snp.ExportReference(ref, snp.FormatSevGuestCheck)
	if err != nil {
		t.Fatal(err)
	}
	cfg = writeFile(t, filepath.Join(c.dir, "other.textproto"), cfgText)
	if out, err := c.run("real", raw, table, "-config", cfg, "-product", "Milan"); err == nil || !strings.Contains(out, "MEASUREMENT") {
		t.Fatalf("check with another measurement: %v\n%s", err, out)
	}
}

func mustCert(t testing.TB, der []byte) *x509.Certificate {
	t.Helper()
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// FuzzReplayLaunchLog: arbitrary launch-log documents never panic the replayer, and a
// replay that succeeds returns the digest the document claims.
func FuzzReplayLaunchLog(f *testing.F) {
	f.Add([]byte(`{"name":"x","algorithm":"","measurement":"00","updates":[{"type":"NORMAL","gpa":"0x1000","contents":"` + strings.Repeat("00", 48) + `"}]}`))
	f.Add([]byte(`{"updates":[]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := snp.ReplayLaunchLog(data)
		if err != nil {
			return
		}
		var l snp.LaunchLog
		if json.Unmarshal(data, &l) != nil || !strings.EqualFold(hex.EncodeToString(d), l.Measurement) {
			t.Fatal("replay succeeded with a digest other than the document's")
		}
	})
}

// TestExportsSayNotConfidential: a reference for a launch that ran without SEV-SNP says
// so in every format a verifier reads, and an SEV-SNP one says it is confidential (json)
// or carries no such note (trustee, sev-guest-check).
func TestExportsSayNotConfidential(t *testing.T) {
	fx := newFixture(t)
	why := "the launch record is not confidential (platform none)"
	for _, notConf := range []string{"", why} {
		ref := fixtureReference(t, fx)
		ref.NotConfidential = notConf
		b, err := snp.ExportReference(ref, snp.FormatJSON)
		if err != nil {
			t.Fatal(err)
		}
		var doc snp.ReferenceJSON
		if err := json.Unmarshal(b, &doc); err != nil || doc.Confidential != (notConf == "") || doc.Note != notConf || !bytes.Contains(b, []byte(`"confidential"`)) {
			t.Fatalf("json (not confidential %q): %v\n%s", notConf, err, b)
		}
		b, err = snp.ExportReference(ref, snp.FormatTrustee)
		if err != nil {
			t.Fatal(err)
		}
		var msg map[string]any
		if err := json.Unmarshal(b, &msg); err != nil {
			t.Fatal(err)
		}
		if notConf != "" && (msg["confidential"] != false || msg["note"] != why) || notConf == "" && (msg["confidential"] != nil || msg["note"] != nil) {
			t.Fatalf("trustee (not confidential %q):\n%s", notConf, b)
		}
		b, err = snp.ExportReference(ref, snp.FormatSevGuestCheck)
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(string(b), "# NOT CONFIDENTIAL: "+why) != (notConf != "") {
			t.Fatalf("sev-guest-check (not confidential %q):\n%s", notConf, b)
		}
	}
}
