package snptest

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"
)

// These tests boot the images this package builds under the real QEMU with TCG (no
// KVM, no SEV: platform none) and read the serial console. They prove the builders'
// output, and they record what the AmdSev firmware does with a kernel when there is no
// SEV, for the daemon tests that launch the same images through snpd.

// committedFirmware returns the path of a firmware copy committed in snp/testdata.
func committedFirmware(t *testing.T, name string) string {
	t.Helper()
	p := filepath.Join(RepoRoot(t), "snp", "testdata", "firmware", name)
	if _, err := os.Stat(p); err != nil {
		t.Fatal(err)
	}
	return p
}

// Debian bookworm's OVMF.fd (the ovmf package's /usr/share/ovmf/OVMF.fd, byte for
// byte) and the AmdSev builds of AMDSEV-PROVENANCE.txt.
const (
	debianOVMF      = "ovmf-bookworm-2022.11.fd"
	amdSevOVMF2025  = "ovmf-amdsev-debian-2025.02.fd"
	amdSevOVMF2022  = "ovmf-amdsev-debian-2022.11.fd"
	agentPortName   = "org.snpd.agent.0" // cmd/snp-agent's PortName
	bootTestTimeout = 120 * time.Second
)

func needQEMU(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("boots a guest under QEMU; skipped with -short")
	}
	q, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 is not installed (run scripts/install-deps.sh as root)")
	}
	return q
}

func marker(t *testing.T) string {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b[:])
}

// guestRun is one QEMU process whose serial console goes to a file.
type guestRun struct {
	cmd     *exec.Cmd
	console string
	done    chan struct{}
	start   time.Time
}

// bootQEMU starts QEMU (TCG, q35, 512 MiB, one vCPU, no reboot) with firmware as -bios
// and the extra arguments, logging the argv. The process is killed at cleanup.
func bootQEMU(t *testing.T, qemu, dir, firmware string, extra ...string) *guestRun {
	t.Helper()
	g := &guestRun{console: filepath.Join(dir, "console.log"), done: make(chan struct{})}
	args := append([]string{
		"-machine", "q35", "-accel", "tcg", "-m", "512", "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-bios", firmware, "-serial", "file:" + g.console,
	}, extra...)
	t.Logf("argv: %s %s", qemu, strings.Join(args, " "))
	g.cmd = exec.Command(qemu, args...)
	var stderr strings.Builder
	g.cmd.Stderr = &stderr
	g.start = time.Now()
	if err := g.cmd.Start(); err != nil {
		t.Fatalf("starting qemu: %v", err)
	}
	go func() { _ = g.cmd.Wait(); close(g.done) }()
	t.Cleanup(func() {
		_ = g.cmd.Process.Kill()
		<-g.done
		if t.Failed() {
			t.Logf("guest console:\n%s\nqemu stderr:\n%s", g.text(), stderr.String())
		}
	})
	return g
}

func (g *guestRun) text() string {
	b, _ := os.ReadFile(g.console)
	return ConsoleText(b)
}

// waitFor polls the console until every want line is there, QEMU exits, or the
// timeout passes; it returns the console text and whether all were seen.
func (g *guestRun) waitFor(timeout time.Duration, want ...string) (string, bool) {
	deadline := time.After(timeout)
	for {
		c := g.text()
		all := true
		for _, w := range want {
			all = all && strings.Contains(c, w)
		}
		if all {
			return c, true
		}
		select {
		case <-g.done:
			return g.text(), false
		case <-deadline:
			return c, false
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// TestUKIBootsToAgent builds a UKI from Debian's cloud kernel, the snp-agent initramfs
// and a command line carrying a fresh marker, boots it as the only -kernel (no -initrd,
// no -append) under Debian's OVMF.fd, and checks on the serial console that the kernel
// received the UKI's command line, took its initrd from the UKI, and ran snp-agent as
// init up to serving its virtio-serial port.
func TestUKIBootsToAgent(t *testing.T) {
	qemu := needQEMU(t)
	kernel := GuestKernel(t)
	initrd := BuildAgentInitrd(t)
	cmdline := "console=ttyS0 panic=-1 snpd.uki_marker=" + marker(t)
	img := BuildUKI(t, UKIOptions{Kernel: kernel, Initrd: initrd, Cmdline: cmdline})
	dir, err := os.MkdirTemp("", "snpd-uki-") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	g := bootQEMU(t, qemu, dir, committedFirmware(t, debianOVMF),
		"-kernel", img,
		"-device", `{"driver":"virtio-serial-pci","id":"virtio-serial0"}`,
		"-chardev", "socket,id=agent0,path="+filepath.Join(dir, "agent.sock")+",server=on,wait=off",
		"-device", `{"driver":"virtserialport","bus":"virtio-serial0.0","chardev":"agent0","name":"`+agentPortName+`","id":"agent0"}`)
	c, ok := g.waitFor(bootTestTimeout, KernelCmdlinePrefix+cmdline+"\n", EFIStubInitrdLine, "snp-agent: serving on /dev/")
	if !ok {
		t.Fatalf("the UKI did not boot to snp-agent within %v", bootTestTimeout)
	}
	if !strings.Contains(c, KernelBannerPrefix) {
		t.Fatal("no kernel banner")
	}
	t.Logf("UKI booted to snp-agent in %v under TCG", time.Since(g.start).Round(100*time.Millisecond))
}

// TestAmdSevRefusesKernelWithoutSEV boots each AmdSev firmware under TCG without SEV
// with a UKI as -kernel, and with the plain kernel, initramfs and -append: the firmware
// finds no SEV hashes table, refuses the kernel and starts its built-in GRUB, which
// gives up and reboots (QEMU exits: -no-reboot). QEMU itself accepts the UKI as -kernel.
func TestAmdSevRefusesKernelWithoutSEV(t *testing.T) {
	qemu := needQEMU(t)
	kernel := GuestKernel(t)
	m := marker(t)
	initrd := BuildInitramfs(t, []InitramfsFile{{Path: "/init", Mode: 0o755, Data: []byte("#!/bin/sh\necho " + m + "\n")}})
	cmdline := "console=ttyS0 panic=-1 snpd.marker=" + m
	img := BuildUKI(t, UKIOptions{Kernel: kernel, Initrd: initrd, Cmdline: cmdline})
	for _, tc := range []struct {
		name, firmware string
		args           []string
	}{
		{"2025.02 UKI", amdSevOVMF2025, []string{"-kernel", img}},
		{"2022.11 UKI", amdSevOVMF2022, []string{"-kernel", img}},
		{"2025.02 kernel initrd append", amdSevOVMF2025, []string{"-kernel", kernel, "-initrd", initrd, "-append", cmdline}},
		{"2025.02 no kernel (control)", amdSevOVMF2025, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			trace := filepath.Join(dir, "fw_cfg.trace")
			args := append([]string{"-trace", "fw_cfg_add_file,file=" + trace, "-trace", "fw_cfg_select,file=" + trace}, tc.args...)
			g := bootQEMU(t, qemu, dir, committedFirmware(t, tc.firmware), args...)
			c, ok := g.waitFor(bootTestTimeout, AmdSevGRUBGaveUp)
			if !ok {
				t.Fatalf("GRUB's %q did not appear within %v", AmdSevGRUBGaveUp, bootTestTimeout)
			}
			if err := CheckAmdSevRefusedKernel(c); err != nil {
				t.Fatal(err)
			}
			// GRUB alone is also what a boot without -kernel shows (the control case):
			// the fw_cfg trace proves the firmware fetched the kernel before falling back.
			if strings.Contains(c, m) {
				t.Fatalf("the marker %s reached the console: something ran", m)
			}
			if tc.args == nil {
				// The control: the same console, but no kernel fetched.
				if err := fetchedKernel(trace); err == nil {
					t.Fatal("the fw_cfg trace shows a kernel fetched although none was given")
				}
				return
			}
			if err := fetchedKernel(trace); err != nil {
				t.Fatal(err)
			}
			t.Logf("refused in %v; console:\n%s", time.Since(g.start).Round(100*time.Millisecond), strings.TrimSpace(c))
		})
	}
}

var (
	traceAddFile = regexp.MustCompile(`(?m)^fw_cfg_add_file \S+ #\d+: (\S+) \(\d+ bytes\)$`)
	traceSelect  = regexp.MustCompile(`(?m)^fw_cfg_select \S+ key (0x[0-9a-f]{4}) `)
)

// fetchedKernel checks a QEMU trace of fw_cfg_add_file and fw_cfg_select events for
// the firmware selecting the kernel: the named file etc/boot/kernel (edk2 2025.02
// reads etc/boot/*; file keys are 0x20 + the file's index in the name-sorted fw_cfg
// directory) or the legacy FW_CFG_KERNEL_DATA key 0x11 (edk2 2022.11).
func fetchedKernel(trace string) error {
	b, err := os.ReadFile(trace)
	if err != nil {
		return fmt.Errorf("reading fw_cfg trace: %w", err)
	}
	var names []string
	for _, m := range traceAddFile.FindAllStringSubmatch(string(b), -1) {
		names = append(names, m[1])
	}
	sort.Strings(names)
	want := map[string]bool{"0x0011": true}
	for i, n := range names {
		if n == "etc/boot/kernel" {
			want[fmt.Sprintf("0x%04x", 0x20+i)] = true
		}
	}
	for _, m := range traceSelect.FindAllStringSubmatch(string(b), -1) {
		if want[m[1]] {
			return nil
		}
	}
	return fmt.Errorf("the firmware never selected the kernel in fw_cfg (files %q); trace %s", names, trace)
}

// TestUKICmdlineReplacedByAppend records systemd-stub's rule that matters to anyone
// launching a UKI with a cmdline: without Secure Boot (never on with these firmwares)
// a non-empty -append, which OVMF passes as the stub's load options, is what the kernel
// boots with, not the UKI's .cmdline. Both are measured under SNP (the cmdline hash),
// but the UKI's own line is then not the one in effect.
func TestUKICmdlineReplacedByAppend(t *testing.T) {
	qemu := needQEMU(t)
	m := marker(t)
	initrd := BuildInitramfs(t, []InitramfsFile{{Path: "/init", Mode: 0o755, Data: []byte("#!/bin/sh\n")}})
	img := BuildUKI(t, UKIOptions{Kernel: GuestKernel(t), Initrd: initrd, Cmdline: "console=ttyS0 panic=-1 snpd.from=uki-" + m})
	appended := "console=ttyS0 panic=-1 snpd.from=append-" + m
	g := bootQEMU(t, qemu, t.TempDir(), committedFirmware(t, debianOVMF), "-kernel", img, "-append", appended)
	// The kernel prints its command line first thing; nothing after it matters here.
	c, ok := g.waitFor(bootTestTimeout, KernelCmdlinePrefix)
	if !ok {
		t.Fatalf("no %q line within %v", KernelCmdlinePrefix, bootTestTimeout)
	}
	if !strings.Contains(c, KernelCmdlinePrefix+appended+"\n") || strings.Contains(c, "snpd.from=uki-") {
		t.Fatalf("the kernel did not boot with -append %q instead of the UKI's .cmdline", appended)
	}
	t.Logf("-append replaced the UKI's .cmdline (%v)", time.Since(g.start).Round(100*time.Millisecond))
}

// TestUKIBootsFromDisk boots a UKI the way a firmware boot through snpd can reach one
// with Debian's OVMF.fd, which cannot measure a -kernel: from a FAT disk at the
// removable-media path. No load options are passed, so the kernel boots with the UKI's
// own .cmdline.
func TestUKIBootsFromDisk(t *testing.T) {
	qemu := needQEMU(t)
	m := marker(t)
	initrd := BuildInitramfs(t, []InitramfsFile{{Path: "/init", Mode: 0o755, Data: []byte("#!/bin/sh\n")}})
	cmdline := "console=ttyS0 panic=-1 snpd.from=disk-" + m
	img := BuildUKI(t, UKIOptions{Kernel: GuestKernel(t), Initrd: initrd, Cmdline: cmdline})
	disk := BuildBootDisk(t, img)
	g := bootQEMU(t, qemu, t.TempDir(), committedFirmware(t, debianOVMF),
		"-drive", "file="+disk+",format=raw,if=virtio")
	if _, ok := g.waitFor(bootTestTimeout, KernelCmdlinePrefix+cmdline+"\n", EFIStubInitrdLine); !ok {
		t.Fatalf("the UKI on the disk did not boot with its own command line within %v", bootTestTimeout)
	}
	t.Logf("booted from %s in %v", DefaultBootPath, time.Since(g.start).Round(100*time.Millisecond))
}
