package snp_test

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/prototext"

	checkpb "github.com/google/go-sev-guest/proto/check"

	"github.com/snpd/snpd/snp"
	"github.com/snpd/snpd/snp/launch"
)

func fixtureReference(t testing.TB, fx *fixture) snp.Reference {
	return snp.Reference{
		Name:        "vm1",
		Measurement: fx.exp.Measurement,
		Policy:      fx.exp.Policy,
		HostData:    fx.exp.HostData,
		ProductLine: "Milan",
		CABundles:   fx.roots.CABundles("Milan"),
	}
}

func TestExportReferenceFormats(t *testing.T) {
	fx := newFixture(t)
	ref := fixtureReference(t, fx)

	b, err := snp.ExportReference(ref, snp.FormatJSON)
	if err != nil {
		t.Fatal(err)
	}
	var doc snp.ReferenceJSON
	if err := json.Unmarshal(b, &doc); err != nil || doc.Measurement != hex.EncodeToString(ref.Measurement) || doc.Policy != "0x30000" || len(doc.CABundles) != 2 {
		t.Fatalf("json: %v %+v", err, doc)
	}

	b, err = snp.ExportReference(ref, snp.FormatTrustee)
	if err != nil {
		t.Fatal(err)
	}
	var msg struct{ Version, Type, Payload string }
	if err := json.Unmarshal(b, &msg); err != nil || msg.Version != "0.1.0" || msg.Type != "sample" {
		t.Fatalf("trustee message: %v %+v", err, msg)
	}
	payload, err := base64.StdEncoding.DecodeString(msg.Payload)
	if err != nil {
		t.Fatal(err)
	}
	var prov map[string][]any
	if err := json.Unmarshal(payload, &prov); err != nil {
		t.Fatal(err)
	}
	if m := prov["snp_launch_measurement"]; len(m) != 1 || m[0] != hex.EncodeToString(ref.Measurement) {
		t.Fatalf("snp_launch_measurement = %v", m)
	}
	if v := prov["snp_smt_allowed"]; len(v) != 1 || v[0] != float64(1) {
		t.Fatalf("snp_smt_allowed = %v", v)
	}

	b, err = snp.ExportReference(ref, snp.FormatSevGuestCheck)
	if err != nil {
		t.Fatal(err)
	}
	var cfg checkpb.Config
	if err := prototext.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(cfg.GetPolicy().GetMeasurement(), ref.Measurement) || !cfg.GetRootOfTrust().GetDisallowNetwork() || cfg.GetPolicy().GetVmpl().GetValue() != 0 {
		t.Fatalf("check config %v", &cfg)
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

// buildCheckTool builds go-sev-guest v0.15.0's tools/check from the module cache.
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

// TestCheckToolInterop: google's check tool (go-sev-guest v0.15.0) accepts a report that
// matches the exported sev-guest-check policy and rejects tampered ones.
func TestCheckToolInterop(t *testing.T) {
	if testing.Short() {
		t.Skip("builds go-sev-guest's check tool; skipped with -short")
	}
	check := buildCheckTool(t)
	fx := newFixture(t)
	// The check tool verifies certificates at the current time: use a chain created now.
	ref := fixtureReference(t, fx)
	cfgText, err := snp.ExportReference(ref, snp.FormatSevGuestCheck)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "policy.textproto")
	if err := os.WriteFile(cfg, cfgText, 0o644); err != nil {
		t.Fatal(err)
	}
	run := func(name string, report []byte) (string, error) {
		in := filepath.Join(dir, name+".bin")
		if err := os.WriteFile(in, append(report, fx.signer.CertTable()...), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(check, "-config", cfg, "-in", in).CombinedOutput()
		return string(out), err
	}
	good := fx.report(t, fx.fields)
	if out, err := run("good", good); err != nil {
		t.Fatalf("check rejected a matching report: %v\n%s", err, out)
	}
	f := fx.fields
	f.Measurement[5] ^= 0x40
	if out, err := run("measurement", fx.report(t, f)); err == nil {
		t.Fatalf("check accepted a report with another measurement:\n%s", out)
	} else if !strings.Contains(out, "MEASUREMENT") {
		t.Fatalf("check failed for another reason: %s", out)
	}
	f = fx.fields
	f.Policy |= 1 << 19 // debug
	if out, err := run("debug", fx.report(t, f)); err == nil || !strings.Contains(out, "debug") {
		t.Fatalf("check on a debug report: %v\n%s", err, out)
	}
	bad := bytes.Clone(good)
	bad[0x90] ^= 1 // measurement byte changed after signing
	if out, err := run("tampered", bad); err == nil {
		t.Fatalf("check accepted a tampered report:\n%s", out)
	}
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
