package daemon

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/snpd/snpd/daemon/launch"
)

// snpUnavailableLine is the guidance a user must see first when SEV-SNP is missing.
const snpUnavailableLine = "SEV-SNP is not available on this host"

// TestStartSNPOnHostWithoutSNP runs the real snpd on platform "sev-snp" on this host
// (no /dev/sev; with or without /dev/kvm) and starts VMs with the real snpctl and QEMU
// (without /dev/kvm QEMU's own message is "failed to initialize kvm"): with the C-bit
// position left to the host (CPUID reports none here) and with it set in the
// definition, `snpctl vm start` fails with exactly one line saying SEV-SNP is not
// available and what to check (not a complaint about snp.cbitpos), and leaves nothing
// behind: no QEMU (snpd has no child process), no runtime directory, no pid recorded.
func TestStartSNPOnHostWithoutSNP(t *testing.T) {
	for _, p := range []string{testQEMU, testFirmware} { // not /dev/kvm: its absence is a case
		if _, err := os.Stat(p); err != nil {
			t.Skipf("%s is missing (run scripts/install-deps.sh): %v", p, err)
		}
	}
	if _, err := os.Stat("/dev/sev"); err == nil {
		t.Skip("this host has /dev/sev: the no-SNP failure cannot be provoked here")
	}
	e := newTestEnv(t, "")
	cfg, err := os.ReadFile(e.Config)
	if err != nil {
		t.Fatal(err)
	}
	snpCfg := bytes.Replace(cfg, []byte(`platform = "none"`), []byte(`platform = "sev-snp"`), 1)
	if bytes.Equal(snpCfg, cfg) {
		t.Fatal("test config has no platform line to replace")
	}
	if err := os.WriteFile(e.Config, snpCfg, 0o644); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, e)
	bin := buildSnpctl(t)
	for _, c := range []struct{ name, extra string }{
		{"snp-host", ""},
		{"snp-set", "[snp]\ncbitpos = 51\nreduced_phys_bits = 1\n"},
	} {
		t.Run(c.name, func(t *testing.T) {
			mustDefine(t, d.Client, c.name, c.extra)
			code, stdout, stderr := snpctlAs(t, bin, e.Socket, 0, nil, "vm", "start", c.name)
			t.Logf("snpctl vm start %s: exit %d\n%s", c.name, code, stderr)
			if code != 1 || stdout != "" {
				t.Errorf("exit %d, stdout %q; want 1 and nothing", code, stdout)
			}
			line := strings.TrimSuffix(stderr, "\n")
			if strings.Contains(line, "\n") || !strings.HasPrefix(line, "Error: ") {
				t.Errorf("want one line starting with Error:, got %q", stderr)
			}
			for _, want := range []string{snpUnavailableLine, launch.SNPHostHint} {
				if !strings.Contains(line, want) {
					t.Errorf("error lacks %q", want)
				}
			}
			if strings.Contains(line, "cbitpos") {
				t.Errorf("error is about the C-bit position, not the missing SEV-SNP: %q", line)
			}
			if _, err := os.Stat(filepath.Join(e.RuntimeDir, "vms", c.name)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("runtime directory left behind (%v)", err)
			}
			if kids := childrenOf(d.cmd.Process.Pid); len(kids) > 0 {
				t.Errorf("snpd still has child processes %v after the failed start", kids)
			}
			info, err := d.Client.Get(ctxT(t, 10*time.Second), c.name)
			if err != nil {
				t.Fatal(err)
			}
			if info.PID != 0 {
				t.Errorf("failed start recorded pid %d", info.PID)
			}
		})
	}
}

// childrenOf lists the live (non-zombie) processes whose parent is pid.
func childrenOf(pid int) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:])) // state, ppid, ...
		if len(f) > 1 && f[1] == strconv.Itoa(pid) && f[0] != "Z" {
			out = append(out, p)
		}
	}
	return out
}
