package daemon

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/snpd/snpd/daemon/api"
	"github.com/snpd/snpd/snp"
	"github.com/snpd/snpd/snp/agentproto"
	"github.com/snpd/snpd/snp/snptest"
)

// buildAgentDisk returns a raw FAT disk image holding Debian's cloud kernel, the agent
// initramfs and a startup.nsh that boots them. Direct kernel boot (-kernel) is not an
// option through snpd with Debian's OVMF.fd (no SNP kernel-hashes section, so no launch
// digest), so the guest boots from disk: OVMF finds no boot loader, starts its UEFI
// shell, and the shell runs startup.nsh. Needs mtools (scripts/install-deps.sh).
func buildAgentDisk(t *testing.T) string {
	t.Helper()
	for _, tool := range []string{"mformat", "mcopy"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (mtools; run scripts/install-deps.sh)", tool)
		}
	}
	initrd := snptest.BuildAgentInitrd(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "agent-disk.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(64 << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	nsh := filepath.Join(dir, "startup.nsh")
	if err := os.WriteFile(nsh, []byte("\\vmlinuz initrd=\\initrd console=ttyS0 panic=-1\r\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run("mformat", "-i", img, "-F", "::")
	run("mcopy", "-i", img, snptest.GuestKernel(t), "::/vmlinuz")
	run("mcopy", "-i", img, initrd, "::/initrd")
	run("mcopy", "-i", img, nsh, "::/startup.nsh")
	return img
}

// TestAttestRealGuestThroughSnpd is the whole path on this host (no SEV-SNP): snpd
// launches Debian's OVMF, which boots Debian's cloud kernel with an initramfs whose init
// is snp-agent (platform none, virtio-serial guest channel), and `snpctl attest` reaches the agent through snpd
// and fails cleanly with the agent's "guest has no SEV-SNP report device": exit 1, one
// line, promptly — neither hanging nor passing. The agent also asks snpd for its own
// launch record over the same serial session and logs the recorded expected
// measurement on the console.
func TestAttestRealGuestThroughSnpd(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a guest; skipped with -short")
	}
	needQEMU(t)
	disk := buildAgentDisk(t)
	e := newTestEnv(t, "")
	d := startDaemon(t, e)
	def := fmt.Sprintf("name = \"att1\"\nvcpus = 1\nmemory_mib = 512\nfirmware = %q\n[[disk]]\npath = %q\nformat = \"raw\"\n[channel]\nserial = true\n",
		testFirmware, disk)
	if _, err := d.Client.Define(ctxT(t, 10*time.Second), api.DefineRequest{File: "att1.toml", TOML: def}); err != nil {
		t.Fatalf("defining: %v", err)
	}
	started, err := d.Client.Start(ctxT(t, 120*time.Second), "att1")
	if err != nil {
		t.Fatalf("starting: %v", err)
	}
	t.Cleanup(func() { _, _ = d.Client.Kill(context.Background(), "att1") })
	// The test SIGKILLs snpd below and the restarted snpd is stopped by its own cleanup
	// before the API kill above runs, so also kill this QEMU directly: a guest must not
	// outlive its test. (Cleanups run last-registered first: this one runs after both.)
	killQEMUOf(t, started.PID, e.RuntimeDir)
	snpctl := buildSnpctl(t)
	console := filepath.Join(e.RuntimeDir, "vms", "att1", "console.log")

	// The guest boots under TCG; until the agent answers, attest times out (exit 1 with
	// a timeout message). Retry until the agent's own answer comes back.
	deadline := time.Now().Add(6 * time.Minute)
	for {
		start := time.Now()
		cmd := exec.Command(snpctl, "--socket", e.Socket, "attest", "att1", "--timeout", "30s")
		var stdout, stderr strings.Builder
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		code := cmd.ProcessState.ExitCode()
		took := time.Since(start)
		if err == nil || code == 0 {
			t.Fatalf("attest passed on a host without SEV-SNP:\n%s", stdout.String())
		}
		msg := strings.TrimSpace(stderr.String())
		if strings.Contains(msg, "guest has no SEV-SNP report device") {
			if code != 1 || strings.Count(msg, "\n") != 0 || !strings.HasPrefix(msg, "Error: ") {
				t.Fatalf("exit %d, stderr %q: want exit 1 and one Error line", code, msg)
			}
			t.Logf("snpctl attest: exit %d in %v: %s", code, took.Round(time.Millisecond), msg)
			// Now that the agent is up, back-to-back challenges are answered promptly
			// (the agent keeps the port open across host reconnects).
			for i := 0; i < 3; i++ {
				start = time.Now()
				out, err := exec.Command(snpctl, "--socket", e.Socket, "attest", "att1", "--timeout", "30s").CombinedOutput()
				if err == nil || !strings.Contains(string(out), "guest has no SEV-SNP report device") {
					b, _ := os.ReadFile(console)
					t.Fatalf("attest %d after the first: %v %s\nconsole:\n%s", i+2, err, out, b)
				}
				if took := time.Since(start); took > 10*time.Second {
					t.Fatalf("the agent's refusal took %v", took)
				}
			}
			checkGuestAskedRecord(t, d.Client, console, "att1")
			if !strings.Contains(d.out.String(), `msg="guest channel connected" vm=att1`) {
				t.Fatalf("snpd did not log its session to att1:\n%s", d.out.String())
			}
			// snpd restarts (SIGKILL): the new one reattaches, opens the session again
			// and challenges go through it at once.
			d.kill9()
			d2 := startDaemon(t, e)
			out, err := exec.Command(snpctl, "--socket", e.Socket, "attest", "att1", "--timeout", "30s").CombinedOutput()
			if err == nil || !strings.Contains(string(out), "guest has no SEV-SNP report device") {
				t.Fatalf("attest after reattach: %v %s\nsnpd:\n%s", err, out, d2.out.String())
			}
			if !strings.Contains(d2.out.String(), `msg="guest channel connected" vm=att1`) {
				t.Fatalf("the reattached snpd has no session to att1:\n%s", d2.out.String())
			}
			return
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(console)
			t.Fatalf("agent never answered; last: exit %d %q\nconsole:\n%s", code, msg, b)
		}
		time.Sleep(2 * time.Second)
	}
}

// checkGuestAskedRecord waits for the line the agent logs on the console once snpd
// answered its own launch-record request over the virtio-serial session, and checks it
// carries the expected measurement snpd recorded for that VM.
func checkGuestAskedRecord(t *testing.T, c *api.Client, console, vm string) {
	t.Helper()
	info, err := c.Get(ctxT(t, 10*time.Second), vm)
	if err != nil || info.Last == nil {
		t.Fatalf("get %s: %v", vm, err)
	}
	var rec api.LaunchRecord
	if err := json.Unmarshal(info.Last.Record, &rec); err != nil || len(rec.ExpectedDigest) != 96 {
		t.Fatalf("record of %s: %v (digest %q)", vm, err, rec.ExpectedDigest)
	}
	want := fmt.Sprintf("launch record from snpd: vm %s, expected measurement %s", vm, rec.ExpectedDigest)
	deadline := time.Now().Add(90 * time.Second)
	for {
		b, _ := os.ReadFile(console)
		if strings.Contains(string(b), want) {
			t.Logf("guest console: %s", want)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the guest never logged %q\nconsole:\n%s", want, b)
		}
		time.Sleep(time.Second)
	}
}

// TestVerifyAndReferenceThroughSnpd drives snpctl verify, certs and reference against a
// real snpd (re-executed test binary) with go-sev-guest's test roots configured as
// attestation.trusted_roots_file, for a VM it really launched: a report signed by the
// fake AMD-SP with the recorded measurement fails without its VCEK, passes once
// `snpctl certs import` cached it, fails with a changed measurement (that check's line),
// and the exported sev-guest-check policy is accepted by go-sev-guest's check tool.
func TestVerifyAndReferenceThroughSnpd(t *testing.T) {
	if testing.Short() {
		t.Skip("launches a VM; skipped with -short")
	}
	needQEMU(t)
	signer, err := snptest.NewSigner(snptest.SignerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	roots := filepath.Join(work, "roots.pem")
	if err := os.WriteFile(roots, signer.RootsPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	e := newTestEnv(t, fmt.Sprintf("[attestation]\ntrusted_roots_file = %q\n", roots))
	d := startDaemon(t, e)
	mustDefine(t, d.Client, "ver1", "")
	if _, err := d.Client.Start(ctxT(t, 120*time.Second), "ver1"); err != nil {
		t.Fatalf("starting: %v", err)
	}
	t.Cleanup(func() { _, _ = d.Client.Kill(context.Background(), "ver1") })
	info, err := d.Client.Get(ctxT(t, 10*time.Second), "ver1")
	if err != nil || info.Last == nil {
		t.Fatalf("get: %v", err)
	}
	var rec api.LaunchRecord
	if err := json.Unmarshal(info.Last.Record, &rec); err != nil {
		t.Fatal(err)
	}
	digest, err := hex.DecodeString(rec.ExpectedDigest)
	if err != nil || len(digest) != 48 {
		t.Fatalf("record digest %q", rec.ExpectedDigest)
	}
	nonce := []byte("verifier nonce 42")
	rd, err := agentproto.BindReportData(nonce, nil)
	if err != nil {
		t.Fatal(err)
	}
	f := snptest.Fields{Policy: rec.Policy, ReportData: rd}
	copy(f.Measurement[:], digest)
	good, err := signer.Report(f)
	if err != nil {
		t.Fatal(err)
	}
	f.Measurement[0] ^= 1
	wrong, err := signer.Report(f)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, b []byte) string {
		p := filepath.Join(work, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	goodPath, wrongPath := write("good.bin", good), write("wrong.bin", wrong)
	certsPath := write("certs.bin", signer.CertTable())
	snpctl := buildSnpctl(t)
	run := func(args ...string) (int, string, string) {
		cmd := exec.Command(snpctl, append([]string{"--socket", e.Socket}, args...)...)
		var o, s strings.Builder
		cmd.Stdout, cmd.Stderr = &o, &s
		_ = cmd.Run()
		return cmd.ProcessState.ExitCode(), o.String(), s.String()
	}
	nonceHex := hex.EncodeToString(nonce)

	code, out, _ := run("verify", "--vm", "ver1", "--report", goodPath, "--nonce", nonceHex)
	if code != 1 || !strings.Contains(out, "FAIL  certificate-chain") || !strings.Contains(out, "snpctl certs import") {
		t.Fatalf("verify without VCEK: exit %d\n%s", code, out)
	}
	code, out, errOut := run("certs", "import", certsPath)
	if code != 0 || !strings.Contains(out, "VCEK") || !strings.Contains(out, "ARK") {
		t.Fatalf("certs import: exit %d\n%s%s", code, out, errOut)
	}
	if code, out, errOut = run("certs", "import", goodPath); code != 1 || !strings.HasPrefix(errOut, "Error: ") {
		t.Fatalf("importing a report as certificates: exit %d\n%s%s", code, out, errOut)
	}
	// ver1 ran on platform none: a perfect report still fails, on "confidential" alone,
	// until the caller explicitly allows a non-confidential record (issue 13, item 6).
	if code, out, errOut = run("verify", "--vm", "ver1", "--report", goodPath, "--nonce", nonceHex); code != 1 ||
		out != "FAIL  confidential           the launch record is not confidential (platform none)\n" {
		t.Fatalf("verify of a platform-none record: exit %d\n%s%s", code, out, errOut)
	}
	code, out, _ = run("verify", "--json", "--vm", "ver1", "--report", goodPath, "--nonce", nonceHex)
	var vr api.VerifyResponse
	if err := json.Unmarshal([]byte(out), &vr); code != 1 || err != nil || vr.Verdict.OK || vr.Verdict.Confidential || !strings.Contains(out, `"confidential": false`) {
		t.Fatalf("verify --json of a platform-none record: exit %d %v\n%s", code, err, out)
	}
	allow := "--allow-non-confidential"
	if code, out, errOut = run("verify", "--vm", "ver1", "--report", goodPath, "--nonce", nonceHex, allow); code != 0 || out != "" || !strings.Contains(errOut, "warning: ver1") {
		t.Fatalf("verify %s with cached VCEK: exit %d\n%s%s", allow, code, out, errOut)
	}
	code, out, _ = run("verify", "--vm", "ver1", "--report", wrongPath, "--nonce", nonceHex, allow)
	if code != 1 || !strings.Contains(out, "FAIL  measurement") || strings.Contains(out, "FAIL  confidential") {
		t.Fatalf("verify with another measurement: exit %d\n%s", code, out)
	}
	if code, out, _ = run("verify", "--vm", "ver1", "--report", goodPath, "--nonce", "00", allow); code != 1 || !strings.Contains(out, "FAIL  report-data") {
		t.Fatalf("verify with another nonce: exit %d\n%s", code, out)
	}
	// Every export says the record is not confidential.
	for _, format := range []string{"json", "trustee", "sev-guest-check", "launch-log"} {
		want := map[string][]string{
			"json":            {rec.ExpectedDigest, `"confidential": false`, `"note": "the launch record is not confidential (platform none)"`},
			"trustee":         {"sample", `"confidential": false`, `"note": "the launch record is not confidential (platform none)"`},
			"sev-guest-check": {"measurement", "# NOT CONFIDENTIAL: the launch record is not confidential (platform none)."},
			"launch-log":      {rec.ExpectedDigest, `"confidential": false`, `"note": "the launch record is not confidential (platform none)"`},
		}[format]
		code, out, errOut = run("reference", "ver1", "--format", format)
		for _, w := range want {
			if code != 0 || !strings.Contains(out, w) {
				t.Fatalf("reference %s: exit %d, want %q in\n%s%s", format, code, w, out, errOut)
			}
		}
	}
	_, cfg, _ := run("reference", "ver1", "--format", "sev-guest-check")
	if code, out, _ = run("reference", "ver1", "--format", "launch-log"); code != 0 {
		t.Fatalf("launch-log: exit %d", code)
	} else if got, err := snp.ReplayLaunchLog([]byte(out)); err != nil || !bytes.Equal(got, digest) {
		t.Fatalf("the served launch log does not replay to the recorded digest: %v", err)
	}

	// go-sev-guest's check tool with the config snpd exported, used unchanged: it carries
	// no roots (snpd's trusted_roots_file here is go-sev-guest's public test chain), so
	// check falls back to AMD's and refuses the test-chain report. Pinning the test roots
	// is the verifier's own choice (-product_key_path with the ASK and ARK, -product):
	// then the matching report passes, and one with another measurement still fails.
	check := buildCheckTool(t)
	cfgPath := write("ver1.textproto", []byte(cfg))
	in := write("att.bin", append(bytes.Clone(good), signer.CertTable()...))
	inWrong := write("att-wrong.bin", append(bytes.Clone(wrong), signer.CertTable()...))
	runCheck := func(in string, extra ...string) (string, error) {
		args := append([]string{"-config", cfgPath, "-in", in, "-report_data", hex.EncodeToString(rd[:])}, extra...)
		o, err := exec.Command(check, args...).CombinedOutput()
		return fmt.Sprintf("check %s:\n%s", strings.Join(args, " "), o), err
	}
	if o, err := runCheck(in); err == nil {
		t.Fatalf("check accepted a test-chain report with snpd's export unchanged: %s", o)
	}
	pinned := []string{"-product_key_path", write("ask_ark.pem", snptest.PEM(signer.Ask, signer.Ark)), "-product", "Milan"}
	if o, err := runCheck(in, pinned...); err != nil {
		t.Fatalf("check with the test roots pinned rejected the matching report: %v\n%s", err, o)
	}
	if o, err := runCheck(inWrong, pinned...); err == nil {
		t.Fatalf("check with the test roots pinned accepted another measurement: %s", o)
	}
}

// buildCheckTool builds go-sev-guest's tools/check (the module version in go.mod) from the
// module cache into a temporary directory.
func buildCheckTool(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/google/go-sev-guest").Output()
	if err != nil {
		t.Fatalf("locating go-sev-guest: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "check")
	cmd := exec.Command("go", "build", "-o", bin, "./tools/check")
	cmd.Dir = strings.TrimSpace(string(out))
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building go-sev-guest's check tool: %v\n%s", err, b)
	}
	return bin
}

// killQEMUOf registers a cleanup that SIGKILLs pid if it is still a QEMU whose command
// line names runtimeDir (so a reused pid is never hit).
func killQEMUOf(t *testing.T, pid int, runtimeDir string) {
	t.Helper()
	if pid <= 0 {
		t.Fatalf("start returned no QEMU pid")
	}
	t.Cleanup(func() {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil || !strings.Contains(string(b), runtimeDir) {
			return
		}
		_ = syscall.Kill(pid, syscall.SIGKILL)
	})
}
