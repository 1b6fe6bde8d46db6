package launch

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/snpd/snpd/config"
	"github.com/snpd/snpd/snp/snptest"
)

func TestFirmwareFactsAmdSevHasKernelHashes(t *testing.T) {
	img := snptest.AmdSevOVMF(2 << 20)
	var f config.Facts
	if err := FirmwareFacts(bytes.NewReader(img), int64(len(img)), &f); err != nil {
		t.Fatal(err)
	}
	s256, s384 := sha256.Sum256(img), sha512.Sum384(img)
	if !bytes.Equal(f.FirmwareSHA256, s256[:]) || !bytes.Equal(f.FirmwareSHA384, s384[:]) {
		t.Fatal("digests differ from sha256/sha384 of the image")
	}
	if !f.FirmwareHasKernelHashes {
		t.Fatal("AmdSev image reported without a kernel-hashes section")
	}
}

func TestFirmwareFactsShortRead(t *testing.T) {
	var f config.Facts
	err := FirmwareFacts(bytes.NewReader(make([]byte, 4096)), 8192, &f)
	if err == nil || f.FirmwareSHA256 != nil {
		t.Fatalf("short firmware: err %v, digest %x", err, f.FirmwareSHA256)
	}
}

// TestVMFactsDebianOVMF reads Debian's OVMF.fd (an OvmfPkgX64 build: no kernel-hashes
// section) and runs the installed QEMU, then checks the example VM against the example
// policy with those facts.
func TestVMFactsDebianOVMF(t *testing.T) {
	const fw = "/usr/share/ovmf/OVMF.fd"
	const qemu = config.DefaultQEMU
	for _, p := range []string{fw, qemu} {
		if _, err := os.Stat(p); err != nil {
			t.Skipf("%s is not installed (scripts/install-deps.sh installs it): %v", p, err)
		}
	}
	root := snptest.RepoRoot(t)
	vm, err := config.LoadVM(filepath.Join(root, "config", "examples", "vm.toml"))
	if err != nil {
		t.Fatal(err)
	}
	f, err := VMFacts(context.Background(), vm, config.PlatformNone, qemu)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(fw)
	if err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256(data)
	if hex.EncodeToString(f.FirmwareSHA256) != hex.EncodeToString(want[:]) || f.FirmwareHasKernelHashes {
		t.Fatalf("firmware facts %x kernel-hashes=%v", f.FirmwareSHA256, f.FirmwareHasKernelHashes)
	}
	if f.QEMUPath != qemu || f.QEMUVersion[0] < 9 {
		t.Fatalf("QEMU facts %s %v", f.QEMUPath, f.QEMUVersion)
	}
	p, err := config.LoadPolicy(filepath.Join(root, "config", "examples", "policy.toml"))
	if err != nil {
		t.Fatal(err)
	}
	if vs := p.Check(vm, f); len(vs) != 0 {
		t.Fatalf("example VM with real facts: %v", vs)
	}
	// The same firmware with a kernel: unmeasured boot path, refused.
	vm.Kernel = "/var/cache/snpd-test/kernel/vmlinuz"
	vs := p.Check(vm, f)
	if len(vs) != 1 || vs[0].Rule != "firmware.allow_unmeasured_kernel" {
		t.Fatalf("kernel with Debian's OVMF: %v", vs)
	}
}

func TestVMFactsUnknownWhenUnreadable(t *testing.T) {
	vm := &config.VM{Name: "a", Firmware: filepath.Join(t.TempDir(), "missing.fd")}
	vm.SetDefaults()
	f, err := VMFacts(context.Background(), vm, config.PlatformSEVSNP, "/nonexistent/qemu")
	if err == nil || !strings.Contains(err.Error(), "reading firmware") || !strings.Contains(err.Error(), "--version") {
		t.Fatalf("err = %v", err)
	}
	if f.FirmwareSHA256 != nil || f.QEMUVersion != [3]int{} || f.QEMUPath != "/nonexistent/qemu" {
		t.Fatalf("facts %+v", f)
	}
}

func TestParseQEMUVersion(t *testing.T) {
	for in, want := range map[string][3]int{
		"QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-1~bpo12+1)\nCopyright": {10, 0, 2},
		"QEMU emulator version 9.1\n":                                            {9, 1, 0},
	} {
		got, err := ParseQEMUVersion([]byte(in))
		if err != nil || got != want {
			t.Errorf("%q: %v %v", in, got, err)
		}
	}
	if _, err := ParseQEMUVersion([]byte("qemu-img version 8\n")); err == nil {
		t.Error("no version accepted")
	}
}

func FuzzParseQEMUVersion(f *testing.F) {
	f.Add([]byte("QEMU emulator version 10.0.2 (Debian)\n"))
	f.Add([]byte("QEMU emulator version 99999999999.1.1\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := ParseQEMUVersion(b)
		if err == nil && (v[0] < 0 || v[1] < 0 || v[2] < 0) {
			t.Fatalf("negative version %v", v)
		}
	})
}
