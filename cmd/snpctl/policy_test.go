package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/snpd/snpd/config"
	"github.com/snpd/snpd/daemon/api"
	"github.com/snpd/snpd/snp/snptest"
)

func polExamples(t *testing.T) (policy, vm string) {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(root, "config", "examples", "policy.toml"), filepath.Join(root, "config", "examples", "vm.toml")
}

func polNeedHostFiles(t *testing.T) {
	for _, p := range []string{"/usr/share/ovmf/OVMF.fd", "/usr/bin/qemu-system-x86_64"} {
		if _, err := os.Stat(p); err != nil {
			t.Skipf("%s is not installed (scripts/install-deps.sh installs it)", p)
		}
	}
}

func TestPolicyCheckExampleVM(t *testing.T) {
	polNeedHostFiles(t)
	policy, vm := polExamples(t)
	out, errs, code := hookCLI(t, "", "policy", "check", "--policy", policy, "--platform", "none", vm)
	if code != 0 || out != "ok: no violations\n" || errs != "" {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errs)
	}
}

func TestPolicyCheckPrintsEveryViolation(t *testing.T) {
	polNeedHostFiles(t)
	policy, vm := polExamples(t)
	data, err := os.ReadFile(vm)
	if err != nil {
		t.Fatal(err)
	}
	bad := strings.Replace(string(data), "policy = 0x30000", "policy = 0x80000 # debug, no SMT", 1)
	bad = strings.Replace(bad, "vcpus = 1", "vcpus = 100", 1)
	p := filepath.Join(t.TempDir(), "bad.toml")
	if err := os.WriteFile(p, []byte(bad), 0o600); err != nil {
		t.Fatal(err)
	}
	// Reserved bit 17 clear: Validate refuses the definition (every problem) before the
	// policy runs.
	out, errs, code := hookCLI(t, "", "policy", "check", "--policy", policy, p)
	if code != 1 || out != "" || !strings.Contains(errs, "snp.policy 0x80000: policy[17] is reserved") || strings.Count(errs, "\n") != 1 {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errs)
	}
	bad = strings.Replace(bad, "policy = 0x80000", "policy = 0xa0000", 1)
	if err := os.WriteFile(p, []byte(bad), 0o600); err != nil {
		t.Fatal(err)
	}
	out, _, code = hookCLI(t, "", "policy", "check", "--policy", policy, p)
	wantLines := []string{
		"rule snp.require_smt: policy 0xa0000 has smt clear (bit 16)",
		"rule snp.forbid_debug: policy 0xa0000 has debug set (bit 19)",
		"rule vcpu.count: 100 vCPUs is outside 1..64",
	}
	if code != 1 || out != strings.Join(wantLines, "\n")+"\n" {
		t.Fatalf("exit %d, stdout\n%s", code, out)
	}
}

func TestPolicyCheckLibvirtXMLFromStdin(t *testing.T) {
	polNeedHostFiles(t)
	policy, _ := polExamples(t)
	out, _, code := hookCLI(t, hookDomainXML, "policy", "check", "--policy", policy, "--libvirt-xml", "-", "--platform", "none")
	// A plain domain on platform none: checked as a non-confidential VM; qemu64 is the
	// default CPU model and not in the example policy's list.
	if code != 1 || out != "rule vcpu.models: CPU model \"qemu64\" is not allowed (allowed: EPYC-v4, EPYC, EPYC-Milan, EPYC-Genoa)\n" {
		t.Fatalf("exit %d, stdout %q", code, out)
	}
	out, _, code = hookCLI(t, hookDomainXML, "policy", "check", "--policy", policy, "--libvirt-xml", "-")
	if code != 1 || !strings.HasPrefix(out, "rule libvirt.launch_security: domain has no sev-snp launchSecurity") {
		t.Fatalf("sev-snp platform: exit %d, stdout %q", code, out)
	}
	out, _, code = hookCLI(t, hookDomainXML, "policy", "check", "--policy", policy, "--libvirt-xml", "-", "--json")
	if code != 1 || !strings.Contains(out, `"rule": "libvirt.launch_security"`) {
		t.Fatalf("--json: exit %d, stdout %q", code, out)
	}
}

func TestPolicyCheckTakesSettingsFromSnpdConfig(t *testing.T) {
	polNeedHostFiles(t)
	policy, _ := polExamples(t)
	cfg := filepath.Join(filepath.Dir(policy), "snpd.toml") // platform "none", policy.toml
	out, _, code := hookCLI(t, hookDomainXML, "policy", "check", "--config", cfg, "--libvirt-xml", "-")
	if code != 1 || !strings.HasPrefix(out, `rule vcpu.models: CPU model "qemu64"`) || strings.Count(out, "\n") != 1 {
		t.Fatalf("platform from snpd.toml: exit %d, stdout %q", code, out)
	}
	out, _, code = hookCLI(t, hookDomainXML, "policy", "check", "--config", cfg, "--platform", "sev-snp", "--libvirt-xml", "-")
	if code != 1 || !strings.HasPrefix(out, "rule libvirt.launch_security:") {
		t.Fatalf("--platform wins over snpd.toml: exit %d, stdout %q", code, out)
	}
}

func TestPolicyCheckUsageErrors(t *testing.T) {
	policy, vm := polExamples(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"policy", "check", "--policy", policy}, "Error: give one VM definition file or --libvirt-xml FILE\n"},
		{[]string{"policy", "check", "--policy", policy, "--libvirt-xml", "x.xml", vm}, "Error: give one VM definition file or --libvirt-xml FILE\n"},
		{[]string{"policy", "check", "--policy", "/nonexistent/policy.toml", vm}, "Error: loading host policy: reading config: open /nonexistent/policy.toml: no such file or directory\n"},
		{[]string{"policy", "check", "--policy", policy, "--platform", "tdx", vm}, "Error: --platform \"tdx\": want \"sev-snp\" or \"none\"\n"},
	} {
		_, errs, code := hookCLI(t, "", tc.args...)
		if code != 1 || errs != tc.want {
			t.Errorf("%v: exit %d, stderr %q, want %q", tc.args, code, errs, tc.want)
		}
	}
}

// TestPolicyCheckLibvirtPlaceholderIDBlock: libvirt's own SEV-SNP test domain carries a
// placeholder ID block; the offline check names it with rule id_block.matches_launch,
// after the policy's own rules, as the hook's registration does.
func TestPolicyCheckLibvirtPlaceholderIDBlock(t *testing.T) {
	polNeedHostFiles(t)
	policy, _ := polExamples(t)
	xml := snptest.ReadShared(t, "testdata/libvirt/launch-security-sev-snp.xml")
	out, _, code := hookCLI(t, string(xml), "policy", "check", "--policy", policy, "--libvirt-xml", "-", "--platform", "none")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 1 || len(lines) < 2 || !strings.HasPrefix(lines[len(lines)-1], "rule id_block.matches_launch: the ID block is not one the AMD-SP accepts") {
		t.Fatalf("exit %d, stdout\n%s", code, out)
	}
}

// TestPolicyViolationJSONMatchesAPI: snpctl policy check --json prints config.Violation
// values, which must encode exactly as the API's api.Violation does.
func TestPolicyViolationJSONMatchesAPI(t *testing.T) {
	c, _ := json.Marshal(config.Violation{Rule: "r", Value: "v", Message: "m"})
	a, _ := json.Marshal(api.Violation{Rule: "r", Value: "v", Message: "m"})
	if string(c) != string(a) {
		t.Fatalf("config.Violation encodes as %s, api.Violation as %s", c, a)
	}
}
