package daemon

import (
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
	"github.com/snpd/snpd/snp/snptest"
)

// TestMeasuredDirectBootThroughSnpd: a VM with kernel, initrd and cmdline on the
// OvmfPkg/AmdSev firmware (edk2 2025.02, SNP kernel-hashes section) is accepted by the
// example host policy, which allowlists that firmware by digest; snpd records the digest
// `snpctl measure` computes from the same files and exports it as a reference value;
// and, on this host without SEV, the firmware refuses the unmeasured kernel (it starts
// its built-in GRUB and no kernel runs): the firmware enforcing the hashes is what makes
// the digest mean something.
func TestMeasuredDirectBootThroughSnpd(t *testing.T) {
	needQEMU(t)
	pol, err := filepath.Abs("../config/examples/policy.toml")
	if err != nil {
		t.Fatal(err)
	}
	fw := filepath.Join(snptest.RepoRoot(t), "snp", "testdata", "firmware", "ovmf-amdsev-debian-2025.02.fd")
	kernel := snptest.GuestKernel(t)
	initrd := snptest.BuildInitramfs(t, []snptest.InitramfsFile{{Path: "/init", Mode: 0o755, Data: []byte("#!/bin/sh\n")}})
	cmdline := "console=ttyS0 panic=-1"
	e := newTestEnv(t, fmt.Sprintf("policy_file = %q\n", pol))
	d := startDaemon(t, e)
	toml := fmt.Sprintf("name = \"direct\"\nvcpus = 1\nmemory_mib = 256\nfirmware = %q\nkernel = %q\ninitrd = %q\ncmdline = %q\n", fw, kernel, initrd, cmdline)
	if _, err := d.Client.Define(ctxT(t, 10*time.Second), api.DefineRequest{File: "direct.toml", TOML: toml}); err != nil {
		t.Fatal(err)
	}
	info, err := d.Client.Start(ctxT(t, 2*time.Minute), "direct")
	if err != nil {
		t.Fatalf("start on the AmdSev firmware under the example policy: %v", err)
	}
	t.Cleanup(func() { _ = syscall.Kill(info.PID, syscall.SIGKILL) })
	var rec api.LaunchRecord
	if err := json.Unmarshal(info.Last.Record, &rec); err != nil {
		t.Fatal(err)
	}
	bin := buildSnpctl(t)
	out, err := exec.Command(bin, "measure", "--mode", "snp", "--vcpus", "1", "--vcpu-type", "EPYC-v4",
		"--ovmf", fw, "--kernel", kernel, "--initrd", initrd, "--append", cmdline).Output()
	if err != nil {
		t.Fatalf("snpctl measure: %v", err)
	}
	if got := strings.TrimSpace(string(out)); got != rec.ExpectedDigest || !rec.KernelHashes {
		t.Errorf("recorded digest %s (kernel hashes %v), snpctl measure %s", rec.ExpectedDigest, rec.KernelHashes, got)
	}
	ref, err := exec.Command(bin, "--socket", e.Socket, "reference", "direct", "--format", "json").CombinedOutput()
	if err != nil || !strings.Contains(string(ref), rec.ExpectedDigest) {
		t.Errorf("reference values: %v\n%s", err, ref)
	}
	// The same kernel, initrd and cmdline as one UKI: snpd reads its PE sections and
	// vm show says what it is.
	uki := snptest.BuildUKI(t, snptest.UKIOptions{Kernel: kernel, Initrd: initrd, Cmdline: cmdline})
	ukiTOML := fmt.Sprintf("name = \"uki\"\nvcpus = 1\nmemory_mib = 256\nfirmware = %q\nkernel = %q\n", fw, uki)
	if _, err := d.Client.Define(ctxT(t, 10*time.Second), api.DefineRequest{File: "uki.toml", TOML: ukiTOML}); err != nil {
		t.Fatal(err)
	}
	ui, err := d.Client.Start(ctxT(t, 2*time.Minute), "uki")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(ui.PID, syscall.SIGKILL) })
	show, err := exec.Command(bin, "--socket", e.Socket, "vm", "show", "uki").CombinedOutput()
	if err != nil || !strings.Contains(string(show), "UKI, sections") || !strings.Contains(string(show), ".linux") || !strings.Contains(string(show), ".initrd") {
		t.Errorf("vm show of a UKI guest: %v\n%s", err, show)
	}
	out, err = exec.Command(bin, "measure", "--mode", "snp", "--vcpus", "1", "--vcpu-type", "EPYC-v4", "--ovmf", fw, "--kernel", uki).Output()
	var urec api.LaunchRecord
	if jerr := json.Unmarshal(ui.Last.Record, &urec); err != nil || jerr != nil || strings.TrimSpace(string(out)) != urec.ExpectedDigest {
		t.Errorf("UKI: recorded digest %s, snpctl measure %s (%v %v)", urec.ExpectedDigest, out, err, jerr)
	}

	console := filepath.Join(info.Last.RuntimeDir, "console.log")
	deadline := time.Now().Add(2 * time.Minute)
	for {
		b, _ := os.ReadFile(console)
		c := snptest.ConsoleText(b)
		if strings.Contains(c, snptest.AmdSevGRUBGaveUp) {
			if err := snptest.CheckAmdSevRefusedKernel(c); err != nil {
				t.Fatalf("%v\nconsole:\n%s", err, c)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the firmware did not refuse the kernel within 2 minutes; console:\n%s", c)
		}
		time.Sleep(250 * time.Millisecond)
	}
}
