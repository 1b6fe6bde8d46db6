package launch

import (
	"bytes"
	"context"
	"encoding/hex"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/snpd/snpd/config"
	snplaunch "github.com/snpd/snpd/snp/launch"
	"github.com/snpd/snpd/snp/snptest"
)

// committed returns the path of a file under snp/testdata.
func committed(t testing.TB, rel string) string {
	t.Helper()
	p := filepath.Join(snptest.RepoRoot(t), "snp", "testdata", rel)
	if _, err := os.Stat(p); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestPrepareKernelsOnAmdSev: the digests of snp/testdata/vectors-amdsev.tsv, the UKI
// described in the record, and the 2022.11 build refused with its own reason.
func TestPrepareKernelsOnAmdSev(t *testing.T) {
	ltNeed(t)
	l := &Launcher{QEMU: ltQEMU, Platform: PlatformNone, RuntimeDir: ltRuntimeDir(t), Host: &HostFacts{Accel: AccelTCG}}
	amd2025 := committed(t, "firmware/ovmf-amdsev-debian-2025.02.fd")
	for _, tc := range []struct {
		name, kernel, digest string
		uki                  bool
	}{
		{"uki", "uki/uki-synthetic.efi", "abb0a5d70077c8ee6258e125821267ff82ad59feff4c1b60f5f61299b9e8d26a37c7daf890535584bdc296f062ea78bb", true},
		{"kernel", "inputs/kernel-synthetic.bin", "f3349208ec31a8aa0b94e605eb26bf1a98cc016830e51e323cc3800474876266d3609b07029a6aeb5c681ae4a2cb48a6", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vm := &config.VM{Name: tc.name, VCPUs: 1, CPUModel: "EPYC-v4", Firmware: amd2025, Kernel: committed(t, tc.kernel)}
			spec, rec, err := l.Prepare(t.Context(), vm)
			if err != nil {
				t.Fatal(err)
			}
			defer spec.Close()
			if rec.ExpectedDigest != tc.digest || !rec.KernelHashes || rec.InitrdSHA256 != "" || rec.Cmdline != "" {
				t.Fatalf("record: digest %s kernel-hashes %v initrd %q cmdline %q", rec.ExpectedDigest, rec.KernelHashes, rec.InitrdSHA256, rec.Cmdline)
			}
			if !tc.uki {
				if rec.KernelUKI != nil {
					t.Fatalf("a raw kernel recorded as a UKI: %+v", rec.KernelUKI)
				}
				return
			}
			u := rec.KernelUKI
			if u == nil {
				t.Fatal("the UKI is not described in the record")
			}
			var names []string
			for _, s := range u.Sections {
				names = append(names, s.Name)
			}
			for _, want := range []string{".osrel", ".cmdline", ".uname", ".initrd", ".linux"} {
				if !slices.Contains(names, want) {
					t.Errorf("sections %q lack %s", names, want)
				}
			}
			if u.Cmdline != "console=ttyS0 snpd.synthetic=1" || !strings.HasPrefix(u.Stub, "systemd-stub ") ||
				u.Sections[len(u.Sections)-1].SHA256 != "ef4636928161808e87035fa51983821677527ccd9661991c5d0126a778b2268a" {
				t.Errorf("UKI record %+v", u)
			}
		})
	}
	vm := &config.VM{Name: "old", VCPUs: 1, Firmware: committed(t, "firmware/ovmf-amdsev-debian-2022.11.fd"), Kernel: committed(t, "uki/uki-synthetic.efi")}
	_, _, err := l.Prepare(t.Context(), vm)
	if err == nil || !strings.Contains(err.Error(), "this firmware has the SEV hashes table (SEV and SEV-ES direct boot) but no SNP_KERNEL_HASHES metadata section") {
		t.Fatalf("2022.11 AmdSev with a kernel: %v", err)
	}
}

// waitConsole waits until the console log at path has every want line (escape codes
// and CRs stripped) and returns it.
func waitConsole(t *testing.T, path string, timeout time.Duration, want ...string) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		b, _ := os.ReadFile(path)
		c := snptest.ConsoleText(b)
		all := true
		for _, w := range want {
			all = all && strings.Contains(c, w)
		}
		if all {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("console %s lacks %q after %v:\n%s", path, want, timeout, c)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// TestLaunchAmdSevRefusesKernelPlatformNone: kernel+initrd+cmdline, then a UKI, on the
// 2025.02 AmdSev build: the argv carries them, the recorded digest is snp/launch's
// measurement of the same bytes, and the console shows the firmware refusing the
// unmeasured kernel without SEV (it starts its built-in GRUB and no kernel runs).
func TestLaunchAmdSevRefusesKernelPlatformNone(t *testing.T) {
	ltNeed(t)
	if testing.Short() {
		t.Skip("boots a guest; skipped with -short")
	}
	kernel := snptest.GuestKernel(t)
	initrd := snptest.BuildInitramfs(t, []snptest.InitramfsFile{{Path: "/init", Mode: 0o755, Data: []byte("#!/bin/sh\n")}})
	cmdline := "console=ttyS0 panic=-1"
	uki := snptest.BuildUKI(t, snptest.UKIOptions{Kernel: kernel, Initrd: initrd, Cmdline: cmdline})
	fw := committed(t, "firmware/ovmf-amdsev-debian-2025.02.fd")
	l := &Launcher{QEMU: ltQEMU, Platform: PlatformNone, RuntimeDir: ltRuntimeDir(t), Host: &HostFacts{Accel: AccelTCG}}
	for _, tc := range []struct {
		name            string
		kernel, initrd  string
		cmdline         string
		wantArgs, noArg []string
	}{
		{"kernel-initrd-cmdline", kernel, initrd, cmdline, []string{"-kernel", "-initrd", "-append"}, nil},
		{"uki", uki, "", "", []string{"-kernel"}, []string{"-initrd", "-append"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vm := ltVM(tc.name)
			vm.VCPUs, vm.Firmware, vm.Kernel, vm.Initrd, vm.Cmdline = 1, fw, tc.kernel, tc.initrd, tc.cmdline
			vm.Networks = nil
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			inst, err := l.Launch(ctx, vm, LaunchHooks{})
			if err != nil {
				t.Fatal(err)
			}
			defer inst.Kill()
			rec := inst.Record
			t.Logf("argv: %q", rec.Argv)
			for _, a := range tc.wantArgs {
				if !slices.Contains(rec.Argv, a) {
					t.Errorf("argv lacks %s", a)
				}
			}
			for _, a := range tc.noArg {
				if slices.Contains(rec.Argv, a) {
					t.Errorf("argv has %s", a)
				}
			}
			k, _ := os.ReadFile(tc.kernel)
			in := snplaunch.MeasureInput{VCPUs: 1, VCPUSig: 0x800f12, GuestFeatures: 1, Kernel: bytes.NewReader(k), Cmdline: tc.cmdline, SkipFileDigests: true}
			if tc.initrd != "" {
				i, _ := os.ReadFile(tc.initrd)
				in.Initrd = bytes.NewReader(i)
			}
			f, err := os.Open(fw)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			st, _ := f.Stat()
			in.Firmware, in.FirmwareSize = f, st.Size()
			m, err := snplaunch.Measure(in)
			if err != nil {
				t.Fatal(err)
			}
			if rec.ExpectedDigest != hex.EncodeToString(m.Digest) {
				t.Errorf("recorded digest %s, measured %x", rec.ExpectedDigest, m.Digest)
			}
			if (tc.name == "uki") != (rec.KernelUKI != nil) {
				t.Errorf("KernelUKI %+v", rec.KernelUKI)
			}
			c := waitConsole(t, filepath.Join(inst.Dir, ConsoleLogName), 90*time.Second, snptest.AmdSevGRUBWelcome, snptest.AmdSevGRUBGaveUp)
			if err := snptest.CheckAmdSevRefusedKernel(c); err != nil {
				t.Fatalf("%v\nconsole:\n%s", err, c)
			}
		})
	}
}

// TestLaunchUKIBootDiskToAgent is the control: the same kind of UKI (Debian's cloud
// kernel, the snp-agent initramfs, a command line) booted by Debian's OVMF.fd from a FAT
// disk reaches snp-agent, with its own command line.
func TestLaunchUKIBootDiskToAgent(t *testing.T) {
	ltNeed(t)
	if testing.Short() {
		t.Skip("boots a guest; skipped with -short")
	}
	cmdline := "console=ttyS0 panic=-1 snpd.test=uki-disk"
	uki := snptest.BuildUKI(t, snptest.UKIOptions{Kernel: snptest.GuestKernel(t), Initrd: snptest.BuildAgentInitrd(t), Cmdline: cmdline})
	disk := snptest.BuildBootDisk(t, uki)
	l := &Launcher{QEMU: ltQEMU, Platform: PlatformNone, RuntimeDir: ltRuntimeDir(t), Host: &HostFacts{Accel: AccelTCG}}
	vm := ltVM("ukidisk")
	vm.VCPUs, vm.MemoryMiB, vm.Networks = 1, 512, nil
	vm.Disks = []config.Disk{{Path: disk, Format: "raw"}}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	inst, err := l.Launch(ctx, vm, LaunchHooks{})
	if err != nil {
		t.Fatal(err)
	}
	defer inst.Kill()
	start := time.Now()
	waitConsole(t, filepath.Join(inst.Dir, ConsoleLogName), 120*time.Second,
		snptest.KernelCmdlinePrefix+cmdline+"\n", snptest.EFIStubInitrdLine, "snp-agent: serving on /dev/")
	t.Logf("snp-agent up %v after launch", time.Since(start).Round(100*time.Millisecond))
}

// TestAmdSevSNPPathUpToCont is the sev-snp side of measured direct boot as far as a host
// without SEV-SNP allows: a VM with kernel, initrd and cmdline on the 2025.02 AmdSev
// build gets the digest of snp/testdata/vectors-amdsev.tsv, its argv carries the
// kernel, initrd, append and a sev-snp-guest object with kernel-hashes on, and a real
// QEMU accepts that object and reads back exactly what the pre-cont check expects.
func TestAmdSevSNPPathUpToCont(t *testing.T) {
	ltNeed(t)
	l := &Launcher{QEMU: ltQEMU, Platform: PlatformSEVSNP, RuntimeDir: ltRuntimeDir(t),
		Host: &HostFacts{Accel: AccelKVM, CBitPos: 51, ReducedPhysBits: 1}}
	vm := &config.VM{Name: "amdsev", VCPUs: 1, CPUModel: "EPYC-v4",
		Firmware: committed(t, "firmware/ovmf-amdsev-debian-2025.02.fd"),
		Kernel:   committed(t, "inputs/kernel-synthetic.bin"), Initrd: committed(t, "inputs/initrd-synthetic.bin"),
		Cmdline: "console=ttyS0 loglevel=7"}
	spec, rec, err := l.Prepare(t.Context(), vm)
	if err != nil {
		t.Fatal(err)
	}
	defer spec.Close()
	want := vectorDigest(t, "snp-amdsev-2025.02-kernel+initrd+append")
	if rec.ExpectedDigest != want || !rec.KernelHashes || rec.Cmdline != "console=ttyS0 loglevel=7" {
		t.Errorf("record: digest %s (vector %s), kernel-hashes %v, cmdline %q", rec.ExpectedDigest, want, rec.KernelHashes, rec.Cmdline)
	}
	args, _ := BuildArgv(spec)
	joined := strings.Join(args, " ")
	for _, a := range []string{"-kernel /proc/self/fd/", "-initrd /proc/self/fd/", "-append console=ttyS0 loglevel=7", `"kernel-hashes":true`, `"qom-type":"sev-snp-guest"`, "confidential-guest-support=lsec0"} {
		if !strings.Contains(joined, a) {
			t.Errorf("argv lacks %q: %s", a, joined)
		}
	}
	c := ltObjectQEMU(t, mustJSON(spec.snpObject()))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	props := snpProps(spec)
	if props["kernel-hashes"] != true {
		t.Fatalf("expected properties %v lack kernel-hashes", props)
	}
	if diffs := verifySNPObject(ctx, c, props); len(diffs) > 0 {
		t.Fatalf("QEMU reads the sev-snp-guest object back differently: %q", diffs)
	}
}

// vectorDigest returns the stdout of row name of snp/testdata/vectors-amdsev.tsv.
func vectorDigest(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(committed(t, "vectors-amdsev.tsv"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	cols := strings.Split(lines[0], "\t")
	out := slices.Index(cols, "stdout")
	for _, l := range lines[1:] {
		f := strings.Split(l, "\t")
		if len(f) > out && f[0] == name {
			return f[out]
		}
	}
	t.Fatalf("no row %s in vectors-amdsev.tsv", name)
	return ""
}
