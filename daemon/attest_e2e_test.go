package daemon

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/snpd/snpd/daemon/api"
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
	initrd := buildAgentInitrd(t)
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
	run("mcopy", "-i", img, filepath.Join(guestKernelDir(), "vmlinuz"), "::/vmlinuz")
	run("mcopy", "-i", img, initrd, "::/initrd")
	run("mcopy", "-i", img, nsh, "::/startup.nsh")
	return img
}

// TestAttestRealGuestThroughSnpd is the whole path on this host (no SEV-SNP): snpd
// launches Debian's OVMF, which boots Debian's cloud kernel with an initramfs whose init
// is snp-agent (platform none, virtio-serial guest channel), and `snpctl attest` reaches the agent through snpd
// and fails cleanly with the agent's "guest has no SEV-SNP report device": exit 1, one
// line, promptly — neither hanging nor passing.
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
	if _, err := d.Client.Start(ctxT(t, 120*time.Second), "att1"); err != nil {
		t.Fatalf("starting: %v", err)
	}
	t.Cleanup(func() { _, _ = d.Client.Kill(context.Background(), "att1") })
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
			// Now that the agent is up, a second challenge is answered promptly.
			start = time.Now()
			out, err := exec.Command(snpctl, "--socket", e.Socket, "attest", "att1", "--timeout", "30s").CombinedOutput()
			if err == nil || !strings.Contains(string(out), "guest has no SEV-SNP report device") {
				t.Fatalf("second attest: %v %s", err, out)
			}
			if took := time.Since(start); took > 10*time.Second {
				t.Fatalf("the agent's refusal took %v", took)
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
