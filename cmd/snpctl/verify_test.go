package main

import (
	"bytes"
	"context"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-sev-guest/verify/trust"

	"github.com/snpd/snpd/daemon/api"
	"github.com/snpd/snpd/snp"
	"github.com/snpd/snpd/snp/agentproto"
	"github.com/snpd/snpd/snp/snptest"
)

// verifyFixture is a VM's launch as snpd would record it, a report of it signed by the
// fake AMD-SP (go-sev-guest's test chain), and an snpd stand-in on a unix socket that
// answers POST /v1/certs and POST /v1/verify the way daemon/attest_http.go does (a refused
// import is 400 "invalid"), with the real snp.CertCache and snp.Verifier trusting the test
// roots. The daemon itself needs a launched VM for a record; what is tested here is what
// snpctl sends and how it handles the answers.
type verifyFixture struct {
	signer *snptest.Signer
	socket string
	nonce  []byte
	report string // file: the report alone, no certificate table
	fields snptest.Fields
}

func newVerifyFixture(t *testing.T) *verifyFixture {
	t.Helper()
	s, err := snptest.NewSigner(snptest.SignerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	roots, err := snp.ParseRoots(s.RootsPEM())
	if err != nil {
		t.Fatal(err)
	}
	fx := &verifyFixture{signer: s, nonce: []byte("snpctl verify test nonce")}
	rd, err := agentproto.BindReportData(fx.nonce, nil)
	if err != nil {
		t.Fatal(err)
	}
	fx.fields = snptest.Fields{Policy: 0x30000, ReportData: rd, Measurement: sha512.Sum384([]byte("vm1 launch"))}
	raw, err := s.Report(fx.fields)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	fx.report = filepath.Join(dir, "report.bin")
	if err := os.WriteFile(fx.report, raw, 0o644); err != nil {
		t.Fatal(err)
	}

	cache := &snp.CertCache{Dir: filepath.Join(dir, "cache"), Roots: roots}
	verifier := &snp.Verifier{Roots: roots, Cache: cache}
	fail := func(w http.ResponseWriter, status int, kind string, err error) {
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(api.Error{Kind: kind, Message: err.Error()})
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+api.CertsPath, func(w http.ResponseWriter, r *http.Request) {
		var req api.CertImportRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			fail(w, http.StatusBadRequest, api.KindInvalid, err)
			return
		}
		if _, err := cache.Import(req.Data, time.Now()); err != nil {
			fail(w, http.StatusBadRequest, api.KindInvalid, err)
			return
		}
		_ = json.NewEncoder(w).Encode(api.CertList{Certs: []api.CertInfo{}})
	})
	// verify first asks whether --vm names a VM defined in snpd (or a libvirt domain).
	mux.HandleFunc("GET /v1/vms/{name}", func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(api.VMInfo{VMSummary: api.VMSummary{Name: r.PathValue("name")}})
	})
	mux.HandleFunc("POST "+api.VerifyPath, func(w http.ResponseWriter, r *http.Request) {
		var req api.VerifyRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			fail(w, http.StatusBadRequest, api.KindInvalid, err)
			return
		}
		exp := snp.Expected{Measurement: fx.fields.Measurement[:], Policy: fx.fields.Policy}
		exp.Nonce, _ = hex.DecodeString(req.Nonce)
		exp.UserData, _ = hex.DecodeString(req.UserData)
		if req.ReportData != "" {
			exp.ReportData, _ = hex.DecodeString(req.ReportData)
		}
		vd := verifier.Verify(r.Context(), req.Report, req.CertTable, exp)
		out := api.VerifyResponse{VM: req.VM, Verdict: api.Verdict{OK: vd.OK, Confidential: vd.Confidential}}
		for _, c := range vd.Checks {
			out.Verdict.Checks = append(out.Verdict.Checks, api.Check{Name: c.Name, OK: c.OK, Reason: c.Reason})
		}
		_ = json.NewEncoder(w).Encode(out)
	})
	sockDir, err := os.MkdirTemp("", "snpctl-verify-") // short: unix socket paths are bounded
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	fx.socket = filepath.Join(sockDir, "snpd.sock")
	l, err := net.Listen("unix", fx.socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return fx
}

// snpctl runs snpctl in-process with args and returns its exit status, stdout and stderr
// as run would produce them.
func (fx *verifyFixture) snpctl(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	root := newRoot()
	var o, e bytes.Buffer
	root.SetOut(&o)
	root.SetErr(&e)
	root.SetArgs(append([]string{"--socket", fx.socket}, args...))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	err := root.ExecuteContext(ctx)
	var ee exitError
	switch {
	case err == nil:
		return 0, o.String(), e.String()
	case errors.As(err, &ee):
		return ee.code, o.String(), e.String()
	}
	e.WriteString("Error: " + errorLine(err) + "\n")
	return 1, o.String(), e.String()
}

// TestVerifyCertsDirTakesWhatItCanUse: --certs DIR imports every file snpd takes, in name
// order, and names each file it skipped with the reason, one line each on stderr, instead
// of stopping at the first file that is not a certificate. A re-issued ARK (same key,
// other bytes) is taken; an ARK with another key is skipped saying so. The report (given
// without a certificate table) then verifies with the VCEK imported from the directory.
func TestVerifyCertsDirTakesWhatItCanUse(t *testing.T) {
	fx := newVerifyFixture(t)
	reissued, err := snptest.NewSigner(snptest.SignerOptions{Created: time.Date(2025, 3, 1, 0, 0, 0, 0, time.UTC)})
	if err != nil {
		t.Fatal(err)
	}
	var amd trust.ProductCerts
	if err := amd.FromKDSCertBytes(trust.AskArkMilanVcekBytes); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	raw, err := os.ReadFile(fx.report)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{
		"00-report.bin":      raw,
		"10-README":          []byte("certificates for vm1\n"),
		"30-vcek.pem":        snptest.PEM(fx.signer.Vcek),
		"40-ask-ark.pem":     snptest.PEM(fx.signer.Ask, reissued.Ark), // the ARK re-issued: same key, other bytes
		"50-foreign-ark.pem": snptest.PEM(amd.Ark),                     // AMD's real Milan ARK: not the trusted key
		"60-empty":           nil,
		"70-huge.bin":        bytes.Repeat([]byte{0x30}, api.MaxCertTableSize+1),
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "20-subdir"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("30-vcek.pem", filepath.Join(dir, "35-vcek-link.pem")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("nowhere", filepath.Join(dir, "80-dangling")); err != nil {
		t.Fatal(err)
	}

	code, out, errOut := fx.snpctl(t, "verify", "--vm", "vm1", "--report", fx.report, "--nonce", hex.EncodeToString(fx.nonce), "--certs", dir)
	if code != 0 || out != "" {
		t.Fatalf("verify --certs: exit %d\nstdout:\n%sstderr:\n%s", code, out, errOut)
	}
	t.Logf("stderr:\n%s", errOut)
	want := map[string]string{
		"00-report.bin":      "neither PEM nor DER nor a certificate table",
		"10-README":          "neither PEM nor DER nor a certificate table",
		"20-subdir":          "a directory",
		"50-foreign-ark.pem": "public key is not the trusted ARK-Milan's",
		"60-empty":           "empty",
		"70-huge.bin":        "65537 bytes, more than certificates can be (65536)",
		"80-dangling":        "no such file or directory",
	}
	lines := strings.Split(strings.TrimSuffix(errOut, "\n"), "\n")
	if len(lines) != len(want) {
		t.Fatalf("want one skipped line per unusable file (%d), got:\n%s", len(want), errOut)
	}
	for _, l := range lines {
		name, reason, ok := strings.Cut(strings.TrimPrefix(l, "skipped "+dir+"/"), ": ")
		if !ok || !strings.HasPrefix(l, "skipped ") || want[name] == "" || !strings.Contains(reason, want[name]) {
			t.Errorf("unexpected line %q", l)
		}
		delete(want, name)
	}
	if len(want) > 0 {
		t.Errorf("not reported as skipped: %v\n%s", want, errOut)
	}
}

// TestVerifyBindingFlags: --report-data together with a --nonce whose binding it is not
// is an error before anything is sent, as are a nonce outside 1..64 bytes (the binding
// hashes its length in 16 bits) and --user-data without --nonce; matching flags verify.
func TestVerifyBindingFlags(t *testing.T) {
	fx := newVerifyFixture(t)
	nonce := hex.EncodeToString(fx.nonce)
	rd := hex.EncodeToString(fx.fields.ReportData[:])
	other, err := agentproto.BindReportData([]byte("another nonce"), nil)
	if err != nil {
		t.Fatal(err)
	}
	certs := filepath.Join(t.TempDir(), "certs.bin")
	if err := os.WriteFile(certs, fx.signer.CertTable(), 0o644); err != nil {
		t.Fatal(err)
	}
	base := []string{"verify", "--vm", "vm1", "--report", fx.report}
	for _, c := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"report-data not the nonce's binding", []string{"--nonce", nonce, "--report-data", hex.EncodeToString(other[:])}, 1,
			"Error: --report-data " + hex.EncodeToString(other[:8]) + "… is not the binding of --nonce and --user-data (" + rd[:16] + "…)"},
		{"user data changes the binding", []string{"--nonce", nonce, "--user-data", "00", "--report-data", rd}, 1, "is not the binding of --nonce and --user-data"},
		{"65-byte nonce", []string{"--nonce", strings.Repeat("ab", 65)}, 1, "Error: --nonce/--user-data: binding REPORT_DATA: nonce is 65 bytes, want 1..64"},
		{"65536-byte nonce", []string{"--nonce", strings.Repeat("ab", 65536)}, 1, "nonce is 65536 bytes, want 1..64"},
		{"user data without nonce", []string{"--user-data", "00", "--report-data", rd}, 1, "Error: --user-data is bound into REPORT_DATA only together with --nonce"},
		{"short report-data", []string{"--report-data", "00"}, 1, "Error: --report-data is 1 bytes, want 64"},
		{"nonce not hex", []string{"--nonce", "xyz"}, 1, "Error: --nonce: not hex"},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, out, errOut := fx.snpctl(t, append(append([]string{}, base...), c.args...)...)
			if code != c.code || out != "" || !strings.Contains(errOut, c.want) || strings.Count(errOut, "\n") != 1 {
				t.Fatalf("exit %d, stdout %q, stderr %q; want exit %d and one line containing %q", code, out, errOut, c.code, c.want)
			}
		})
	}
	// Agreeing flags, and each alone, verify (the certificate table is imported first).
	for _, args := range [][]string{{"--nonce", nonce, "--report-data", rd}, {"--nonce", nonce}, {"--report-data", rd}} {
		code, out, errOut := fx.snpctl(t, append(append(append([]string{}, base...), "--certs", filepath.Dir(certs)), args...)...)
		if code != 0 || out != "" || errOut != "" {
			t.Fatalf("%v: exit %d\n%s%s", args, code, out, errOut)
		}
	}
	// A nonce that is not the report's fails the report-data check at snpd, named.
	code, out, _ := fx.snpctl(t, append(append([]string{}, base...), "--nonce", "00")...)
	if code != 1 || !strings.Contains(out, "FAIL  report-data") {
		t.Fatalf("another nonce: exit %d\n%s", code, out)
	}
}
