package config

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/snpd/snpd/snp/snptest"
)

func hexDecode(s string) ([]byte, error) { return hex.DecodeString(s) }
func b64(b []byte) string                { return base64.StdEncoding.EncodeToString(b) }

func TestDecodeVMDefaults(t *testing.T) {
	vm, err := DecodeVM("vm.toml", []byte("name = \"a\"\nfirmware = \"/fw.fd\"\n[[disk]]\npath = \"/d.img\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if vm.VCPUs != 1 || vm.CPUModel != "EPYC-v4" || vm.MemoryMiB != 512 || vm.SNP.Policy != 0x30000 ||
		vm.SNP.GuestFeatures != 1 || vm.SNP.VMMType != "QEMU" || vm.Restart != "never" ||
		vm.Console != "serial" || vm.Disks[0].Format != "raw" {
		t.Fatalf("defaults not applied: %+v", vm)
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	vm := &VM{
		Name: "-bad/name", VCPUs: 513, CPUModel: "EPYC,+pmu=on", Firmware: "fw.fd",
		Initrd: "/initrd", Cmdline: "x",
		SNP: SNP{Policy: 0x10000, GuestFeatures: 0x20, HostData: "c2hvcnQ=", IDBlock: b64(make([]byte, 96)),
			FamilyID: "xyz", CBitPos: 7},
		Disks:    []Disk{{Path: "/a/../b", Format: "vmdk"}},
		Networks: []Network{{Type: "tap", Tap: "waytoolonginterface0"}, {Type: "bridge"}, {Type: "user", MAC: "01:00:00:00:00:01"}},
		Channel:  &Channel{VsockCID: 2},
		Restart:  "always",
		Console:  "vga",
	}
	vm.SetDefaults()
	err := vm.Validate()
	if err == nil {
		t.Fatal("invalid VM accepted")
	}
	msg := err.Error()
	for _, want := range []string{
		`name "-bad/name"`, "vcpus 513", `cpu_model "EPYC,+pmu=on"`, `firmware: path "fw.fd" is not absolute`,
		"initrd: given without a kernel", "cmdline: given without a kernel",
		"snp.policy 0x10000", "snp.guest_features 0x20", "snp.host_data: decodes to 5 bytes",
		"snp.id_block and snp.id_auth: give both or neither", "snp.family_id", "snp.cbitpos 7",
		`disk[0].path: path "/a/../b" is not clean`, `disk[0].format "vmdk"`,
		`network[0].tap "waytoolonginterface0"`, `network[1].type "bridge"`, "network[2].mac", "is a multicast address",
		"channel.vsock_cid 2", `restart "always"`, `console "vga"`,
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q", want)
		}
	}
	if n := len(strings.Split(msg, "\n")); n != 21 {
		t.Errorf("%d problems reported, want 21:\n%s", n, msg)
	}
}

func TestDecodeVMStrictNamesFile(t *testing.T) {
	_, err := DecodeVM("x.toml", []byte("name = \"a\"\nfirmware = \"/f\"\nmemory = 5\n"))
	if err == nil || !strings.Contains(err.Error(), `x.toml:3: unknown key "memory"`) {
		t.Fatalf("got %v", err)
	}
	_, err = DecodeVM("x.toml", []byte("name = \"a\"\n"))
	if err == nil || !strings.HasPrefix(err.Error(), "x.toml: firmware: required") {
		t.Fatalf("got %v", err)
	}
}

func TestLibvirtFieldNotFromTOML(t *testing.T) {
	_, err := DecodeVM("x.toml", []byte("name = \"a\"\nfirmware = \"/f\"\n[libvirt]\nloader_type = \"rom\"\n"))
	if err == nil || !strings.Contains(err.Error(), "unknown key") {
		t.Fatalf("libvirt section accepted from TOML: %v", err)
	}
}

func TestCanonicalIgnoresSpellingAndDerivedHostData(t *testing.T) {
	a, err := DecodeVM("a.toml", []byte("name = \"a\"\nfirmware = \"/fw\"\n[snp]\nhost_data = \"derived\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := DecodeVM("b.toml", []byte("# same VM, defaults spelled out\nname = \"a\"\nvcpus = 1\ncpu_model = \"EPYC-v4\"\nmemory_mib = 512\n"+
		"firmware = \"/fw\"\nrestart = \"never\"\n[snp]\npolicy = 196608\nguest_features = 1\nvmm_type = \"QEMU\"\nhost_data = \"derived\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := a.Canonical()
	cb, _ := b.Canonical()
	if !bytes.Equal(ca, cb) {
		t.Fatalf("canonical forms differ:\n%s\n%s", ca, cb)
	}
	da, err := a.HostDataBytes()
	if err != nil || len(da) != 32 {
		t.Fatalf("host data %x, %v", da, err)
	}
	b.MemoryMiB = 1024
	db, _ := b.HostDataBytes()
	if bytes.Equal(da, db) {
		t.Fatal("derived host data did not change with the definition")
	}
	// Canonical does not modify its receiver.
	var z VM
	if _, err := z.Canonical(); err != nil || z.VCPUs != 0 {
		t.Fatalf("Canonical changed its receiver or failed: %v", err)
	}
	// Explicit and empty host data.
	a.SNP.HostData = b64(bytes.Repeat([]byte{7}, 32))
	if h, _ := a.HostDataBytes(); !bytes.Equal(h, bytes.Repeat([]byte{7}, 32)) {
		t.Fatalf("explicit host data %x", h)
	}
	a.SNP.HostData = ""
	if h, err := a.HostDataBytes(); h != nil || err != nil {
		t.Fatalf("empty host data gave %x, %v", h, err)
	}
}

func TestLoadVMResolvesRelativePaths(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "vm.toml")
	if err := os.WriteFile(p, []byte("name = \"a\"\nfirmware = \"fw/OVMF.fd\"\n[snp]\nid_key_file = \"keyless\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	vm, err := LoadVM(p)
	if err != nil {
		t.Fatal(err)
	}
	if vm.Firmware != filepath.Join(dir, "fw", "OVMF.fd") || vm.SNP.IDKeyFile != "keyless" {
		t.Fatalf("paths: %q %q", vm.Firmware, vm.SNP.IDKeyFile)
	}
	if _, err := LoadVM(filepath.Join(dir, "missing.toml")); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
}

func FuzzDecodeVM(f *testing.F) {
	if data, err := os.ReadFile(filepath.Join(snptest.RepoRoot(f), "config", "examples", "vm.toml")); err == nil {
		f.Add(data)
	}
	f.Add([]byte("name = \"a\"\nfirmware = \"/fw\"\nkernel = \"/k\"\n[snp]\nhost_data = \"derived\"\n[[disk]]\npath = \"/d\"\n[channel]\nvsock_cid = 3\n"))
	f.Add([]byte("name = \"a\"\n[[network]]\ntype = \"tap\"\ntap = \"t0\"\nmac = \"52:54:00:00:00:01\"\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		vm, err := DecodeVM("vm.toml", data)
		if err != nil {
			if vm != nil {
				t.Fatal("error with a VM")
			}
			return
		}
		// A valid definition stays valid, has a stable canonical form and host data.
		if err := vm.Validate(); err != nil {
			t.Fatalf("valid VM fails Validate again: %v", err)
		}
		c1, err1 := vm.Canonical()
		c2, err2 := vm.Canonical()
		if err1 != nil || err2 != nil || !bytes.Equal(c1, c2) {
			t.Fatalf("canonical form unstable: %v %v", err1, err2)
		}
		if h, err := vm.HostDataBytes(); err != nil || (h != nil && len(h) != 32) {
			t.Fatalf("host data %x, %v", h, err)
		}
	})
}
