//go:build !snpctl_lean

package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// leanBuild builds snpctl as make build does, the lean snpctl and snpctl-full side by
// side in dir, and returns their paths.
func leanBuild(t *testing.T, dir string) (lean, full string) {
	t.Helper()
	lean, full = filepath.Join(dir, "snpctl"), filepath.Join(dir, fullBinary)
	goBuild(t, lean, ".", "snpctl_lean")
	goBuild(t, full, ".")
	return lean, full
}

// TestLeanLinksOnlyTheAPI guards the point of the lean build: none of the libraries
// whose package initialisation made every snpctl call slow may come back into it.
func TestLeanLinksOnlyTheAPI(t *testing.T) {
	deps := func(tags ...string) []string {
		args := append(append([]string{"list"}, tags...), "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", ".")
		out, err := exec.Command("go", args...).Output()
		if err != nil {
			t.Fatalf("go list %v: %v", tags, err)
		}
		return strings.Fields(string(out))
	}
	allowed := map[string]bool{
		"github.com/snpd/snpd/cmd/snpctl":     true,
		"github.com/snpd/snpd/daemon/api":     true,
		"github.com/snpd/snpd/snp/agentproto": true,
		"github.com/snpd/snpd/snp/launch":     true,
		"github.com/snpd/snpd/snp/uki":        true,
		"github.com/spf13/cobra":              true,
		"github.com/spf13/pflag":              true,
	}
	for _, p := range deps("-tags", "snpctl_lean") {
		if !allowed[p] {
			t.Errorf("the lean snpctl links %s", p)
		}
	}
	// The check can fail: the full build links what the lean one must not.
	if full := strings.Join(deps(), " "); !strings.Contains(full, "github.com/google/go-sev-guest/verify") {
		t.Errorf("the full build does not link go-sev-guest/verify; is this test still checking anything?")
	}
}

// TestLeanStandsInForFull runs the lean snpctl and snpctl-full with the same arguments:
// the root help, each full-only command's help and real runs (output, errors, exit
// status) must be identical.
func TestLeanStandsInForFull(t *testing.T) {
	lean, full := leanBuild(t, t.TempDir())
	work := t.TempDir()
	bad := filepath.Join(work, "vm.toml")
	if err := os.WriteFile(bad, []byte("name = \"x\"\nbogus_key = 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	fw, err := filepath.Abs("../../snp/testdata/firmware/ovmf-trixie-2025.02.fd")
	if err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"--help"},
		{"measure", "--help"}, {"help", "measure"},
		{"id-block", "--help"}, {"id-block", "verify", "--help"},
		{"policy", "--help"}, {"help", "policy", "check"},
		{"libvirt-hook", "--help"},
		{"--json", "measure", "--mode", "snp", "--vcpus", "2", "--vcpu-type", "EPYC-v4", "--ovmf", fw},
		{"measure", "--mode", "snp", "--ovmf", filepath.Join(work, "missing.fd")},
		{"measure", "--no-such-flag"},
		{"id-block", "verify", "--id-block", "AAAA", "--id-auth", "AAAA"},
		{"policy", "check", "--policy", "../../config/examples/policy.toml", bad},
		{"--json", "policy", "check", "--policy", "../../config/examples/policy.toml", "../../config/examples/vm.toml"},
		{"--socket", filepath.Join(work, "none.sock"), "vm", "list"},
		{"__complete", "measure", "--mo"}, {"__complete", "id-block", "--id"},
		{"__complete", "policy", "check", "--"},
		{"__complete", "vm", "st"},
	} {
		lo, le, lrc := idbRun(t, lean, args...)
		fo, fe, frc := idbRun(t, full, args...)
		if lo != fo || le != fe || lrc != frc {
			t.Errorf("snpctl %s: lean and full differ:\nlean (exit %d): %q %q\nfull (exit %d): %q %q",
				strings.Join(args, " "), lrc, lo, le, frc, fo, fe)
		}
		if lo == "" && le == "" {
			t.Errorf("snpctl %s printed nothing", strings.Join(args, " "))
		}
	}
}

// TestLeanWithoutFull: a lean snpctl with no snpctl-full beside it says so in one line
// and exits 1; installed as the libvirt hook it fails closed and says how to install
// the hook. The commands it has itself still work.
func TestLeanWithoutFull(t *testing.T) {
	dir := t.TempDir()
	lean, full := leanBuild(t, dir)
	if err := os.Remove(full); err != nil {
		t.Fatal(err)
	}
	out, errOut, rc := idbRun(t, lean, "policy", "check", "vm.toml")
	if rc != 1 || out != "" || strings.Count(errOut, "\n") != 1 ||
		!strings.Contains(errOut, "snpctl policy is run by snpctl-full, which is not beside this snpctl ("+full+")") {
		t.Errorf("policy check without snpctl-full: exit %d, stdout %q, stderr %q", rc, out, errOut)
	}
	// measure is in the lean build itself.
	fw, err := filepath.Abs("../../snp/testdata/firmware/ovmf-trixie-2025.02.fd")
	if err != nil {
		t.Fatal(err)
	}
	if out, errOut, rc := idbRun(t, lean, "measure", "--mode", "snp", "--vcpus", "1", "--vcpu-type", "EPYC-v4", "--ovmf", fw); rc != 0 ||
		len(strings.TrimSpace(out)) != 96 {
		t.Errorf("measure without snpctl-full: exit %d, %q %q", rc, out, errOut)
	}
	hook := filepath.Join(dir, hookArgv0)
	if err := os.Symlink(lean, hook); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(hook, "web", "prepare", "begin", "-")
	cmd.Stdin = strings.NewReader("<domain type='kvm'><name>web</name></domain>")
	b, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(string(b), "make install-hook") {
		t.Errorf("lean snpctl as the hook: %v, %q; want exit 1 naming make install-hook", err, b)
	}
	if _, errOut, rc := idbRun(t, lean, "--socket", filepath.Join(dir, "none.sock"), "vm", "list"); rc != 1 ||
		!strings.Contains(errOut, "snpd is not running") {
		t.Errorf("vm list without snpd: exit %d, %q", rc, errOut)
	}
}
