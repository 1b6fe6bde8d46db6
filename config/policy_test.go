package config

import (
	"crypto/sha256"
	"crypto/sha512"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/snpd/snpd/snp/snptest"
)

func examplePolicy(t testing.TB) *Policy {
	t.Helper()
	p, err := LoadPolicy(filepath.Join(snptest.RepoRoot(t), "config", "examples", "policy.toml"))
	if err != nil {
		t.Fatalf("example policy: %v", err)
	}
	return p
}

// bookwormOVMF are the digests of Debian bookworm's OVMF.fd, allowlisted by the example
// policy (sha256sum/sha384sum of ovmf 2022.11-6+deb12u2's /usr/share/ovmf/OVMF.fd).
func bookwormOVMF(hasKernelHashes bool) Facts {
	return Facts{
		Platform:                PlatformSEVSNP,
		FirmwareSHA256:          mustHex("7b456907dd0786d415999e801a1ac4637b8ed4d7cf5378cfc6edbe5e574dd773"),
		FirmwareSHA384:          mustHex("fa0dd56f4e3156e03cb377d56b5785bda51999a9c01fcf4e3d00e8848d6fe02a94d95e2c1fab707a000bb08674a7ce6a"),
		FirmwareHasKernelHashes: hasKernelHashes,
		QEMUPath:                "/usr/bin/qemu-system-x86_64",
		QEMUVersion:             [3]int{10, 0, 2},
	}
}

func mustHex(s string) []byte {
	b, err := hexDecode(s)
	if err != nil {
		panic(err)
	}
	return b
}

func rules(vs []Violation) []string {
	out := []string{}
	for _, v := range vs {
		out = append(out, v.Rule+"="+v.Value)
	}
	return out
}

func TestExampleVMConformsToExamplePolicy(t *testing.T) {
	root := snptest.RepoRoot(t)
	vm, err := LoadVM(filepath.Join(root, "config", "examples", "vm.toml"))
	if err != nil {
		t.Fatal(err)
	}
	if vm.Name != "example" || vm.VCPUs != 1 || vm.MemoryMiB != 256 || vm.CPUModel != "EPYC-v4" ||
		vm.SNP.Policy != 0x30000 || vm.Console != "serial" || len(vm.Disks) != 0 || vm.Firmware != "/usr/share/ovmf/OVMF.fd" {
		t.Fatalf("example VM is not the documented one: %+v", vm)
	}
	f := bookwormOVMF(false)
	// When this host has the firmware, use its real digests instead of the constants.
	if data, err := os.ReadFile(vm.Firmware); err == nil {
		s256, s384 := sha256.Sum256(data), sha512.Sum384(data)
		f.FirmwareSHA256, f.FirmwareSHA384 = s256[:], s384[:]
	}
	if vs := examplePolicy(t).Check(vm, f); len(vs) != 0 {
		t.Fatalf("example VM violates the example policy: %v", vs)
	}
}

func TestCheckReportsEveryViolationNamed(t *testing.T) {
	p := examplePolicy(t)
	vm := &VM{
		Name: "bad", VCPUs: 65, CPUModel: "host", MemoryMiB: 32,
		Firmware: "/fw.fd", Kernel: "/vmlinuz",
		SNP:      SNP{Policy: 0x30000 | 1<<19 | 1<<18, GuestFeatures: 0x21},
		Disks:    []Disk{{Path: "/d.img", Format: "vmdk"}},
		Networks: []Network{{Type: "user"}},
	}
	vm.SetDefaults()
	f := Facts{FirmwareSHA256: make([]byte, 32), QEMUPath: "/opt/qemu", QEMUVersion: [3]int{8, 2, 0}}
	got := rules(p.Check(vm, f))
	want := []string{
		"firmware.allowlist=sha256:" + strings.Repeat("0", 64),
		"firmware.allow_unmeasured_kernel=/fw.fd",
		"snp.forbid_migrate_ma=0xf0000",
		"snp.forbid_debug=0xf0000",
		"snp.allowed_guest_features=0x21",
		"vcpu.models=host",
		"vcpu.count=65",
		"memory.size=32",
		"devices.disk_formats=vmdk",
		"devices.disk_dirs=/d.img",
		"qemu.binaries=/opt/qemu",
		"qemu.min_version=8.2.0",
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("violations\n got %q\nwant %q", got, want)
	}
	// Each message names its value.
	for _, v := range p.Check(vm, f) {
		if !strings.Contains(v.Message, strings.TrimPrefix(v.Value, "sha256:")) {
			t.Errorf("message %q does not name value %q", v.Message, v.Value)
		}
		if !strings.HasPrefix(v.String(), "rule "+v.Rule+": ") {
			t.Errorf("String() = %q", v.String())
		}
	}
}

func TestCheckUnknownFactsFailClosed(t *testing.T) {
	p := examplePolicy(t)
	vm := &VM{Name: "a", Firmware: "/usr/share/ovmf/OVMF.fd"}
	vm.SetDefaults()
	got := rules(p.Check(vm, Facts{}))
	want := []string{"firmware.allowlist=/usr/share/ovmf/OVMF.fd", "qemu.binaries=unknown", "qemu.min_version=unknown"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
}

func TestCheckPolicyBitsABIAndIDBlock(t *testing.T) {
	p, err := DecodePolicy("p.toml", []byte(`
[firmware]
allow_any = true
[snp]
forbid = ["cxl_allowed", "page_swap_disable"]
require = ["single_socket", "mem_aes_256_xts", "rapl_dis", "ciphertext_hiding"]
min_abi = "1.51"
[vcpu]
models = ["EPYC-v4"]
[id_block]
required = true
id_keys = ["`+strings.Repeat("ab", 48)+`"]
author_keys = ["`+strings.Repeat("cd", 48)+`"]
[host_data]
required = "derived"
`))
	if err != nil {
		t.Fatal(err)
	}
	vm := &VM{Name: "a", Firmware: "/fw", SNP: SNP{Policy: 0x30000 | 1<<21 | 1<<25 | 1<<20 | 0x0132}}
	vm.SetDefaults()
	f := bookwormOVMF(true)
	got := rules(p.Check(vm, f))
	want := []string{
		"snp.forbid_cxl_allowed=0x2330132",
		"snp.require_mem_aes_256_xts=0x2330132",
		"snp.require_rapl_dis=0x2330132",
		"snp.require_ciphertext_hiding=0x2330132",
		"snp.forbid_page_swap_disable=0x2330132",
		"snp.min_abi=1.50",
		"id_block.required=none",
		"host_data.required=none",
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q\nwant %q", got, want)
	}

	// With a keyed ID block whose key digest is not listed, and derived host data.
	vm.SNP = SNP{Policy: 0x30000 | 1<<20 | 1<<22 | 1<<23 | 1<<24 | 0x0133, IDKeyFile: "/id.pem", AuthorKeyFile: "/author.pem", HostData: "derived"}
	vm.SetDefaults()
	f.IDKeyDigest = make([]byte, 48)
	got = rules(p.Check(vm, f))
	want = []string{"id_block.id_keys=" + strings.Repeat("0", 96), "id_block.author_keys=unknown"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q\nwant %q", got, want)
	}
	f.IDKeyDigest = mustHex(strings.Repeat("ab", 48))
	f.AuthorKeyDigest = mustHex(strings.Repeat("cd", 48))
	if vs := p.Check(vm, f); len(vs) != 0 {
		t.Fatalf("conforming VM: %v", vs)
	}
	// An explicit host data equal to the derived digest also satisfies "derived".
	d, err := vm.DerivedHostData()
	if err != nil {
		t.Fatal(err)
	}
	vm.SNP.HostData = b64(d[:])
	if vs := p.Check(vm, f); len(vs) != 0 {
		t.Fatalf("explicit derived host data: %v", vs)
	}
	vm.MemoryMiB++ // the definition changed: the old digest no longer matches
	if got := rules(p.Check(vm, f)); len(got) != 1 || !strings.HasPrefix(got[0], "host_data.required=") {
		t.Fatalf("stale host data: %q", got)
	}
}

func TestPolicyDecodeErrors(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"unknown key", "[snp]\nforbid = [\"debug\"]\nbogus = 1\n", `p.toml:3: unknown key "snp.bogus"`},
		{"no firmware", "[vcpu]\nmodels = [\"EPYC-v4\"]\n", "no digest listed"},
		{"bad bit", "[firmware]\nallow_any = true\n[vcpu]\nmodels = [\"EPYC-v4\"]\n[snp]\nforbid = [\"dbg\"]\n", `unknown guest-policy bit "dbg"`},
		{"both", "[firmware]\nallow_any = true\n[vcpu]\nmodels = [\"EPYC-v4\"]\n[snp]\nforbid = [\"smt\"]\nrequire = [\"smt\"]\n", `"smt" is both forbidden and required`},
		{"digest", "[firmware]\nsha256 = [\"abc\"]\n[vcpu]\nmodels = [\"EPYC-v4\"]\n", "want 64 hex digits"},
		{"no models", "[firmware]\nallow_any = true\n", "vcpu.models: list the allowed CPU models"},
		{"version", "[firmware]\nallow_any = true\n[vcpu]\nmodels = [\"EPYC-v4\"]\n[qemu]\nmin_version = \"ten\"\n", "qemu.min_version"},
		{"abi", "[firmware]\nallow_any = true\n[vcpu]\nmodels = [\"EPYC-v4\"]\n[snp]\nmin_abi = \"1\"\n", "snp.min_abi"},
		{"bounds", "[firmware]\nallow_any = true\n[vcpu]\nmodels = [\"EPYC-v4\"]\nmin = 4\nmax = 2\n", "want 1 <= min <= max"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodePolicy("p.toml", []byte(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
	// Several problems are all reported.
	_, err := DecodePolicy("p.toml", []byte("[snp]\nforbid = [\"x\"]\n"))
	if err == nil || !strings.Contains(err.Error(), "no digest listed") || !strings.Contains(err.Error(), `"x"`) ||
		!strings.Contains(err.Error(), "vcpu.models") {
		t.Fatalf("not every problem reported: %v", err)
	}
}

func TestPolicyEmptyListAllowsNothing(t *testing.T) {
	p, err := DecodePolicy("p.toml", []byte("[firmware]\nallow_any = true\n[vcpu]\nmodels = [\"EPYC-v4\"]\n[devices]\nclasses = []\n"))
	if err != nil {
		t.Fatal(err)
	}
	vm := &VM{Name: "a", Firmware: "/fw"}
	vm.SetDefaults()
	f := bookwormOVMF(false)
	if got := rules(p.Check(vm, f)); !reflect.DeepEqual(got, []string{"devices.classes=console"}) {
		t.Fatalf("got %q", got)
	}
}

func FuzzDecodePolicy(f *testing.F) {
	if data, err := os.ReadFile(filepath.Join(snptest.RepoRoot(f), "config", "examples", "policy.toml")); err == nil {
		f.Add(data)
	}
	f.Add([]byte("[snp]\nforbid = [\"debug\"]\n[firmware]\nallow_any = true\n[vcpu]\nmodels=[\"a\"]\n"))
	f.Add([]byte("[qemu]\nmin_version = \"9.1\"\n[memory]\nmax_mib = 1\n"))
	vm := &VM{Name: "a", Firmware: "/fw", Kernel: "/k", SNP: SNP{Policy: 0xb0000, HostData: "derived"}}
	vm.SetDefaults()
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := DecodePolicy("p.toml", data)
		if err != nil {
			if p != nil || strings.Contains(err.Error(), "\n\n") {
				t.Fatalf("error with a policy or an empty line: %v", err)
			}
			return
		}
		// A valid policy must evaluate any VM without panicking, deterministically.
		a, b := p.Check(vm, Facts{}), p.Check(vm, bookwormOVMF(true))
		if !reflect.DeepEqual(a, p.Check(vm, Facts{})) || !reflect.DeepEqual(b, p.Check(vm, bookwormOVMF(true))) {
			t.Fatal("Check is not deterministic")
		}
	})
}

// TestGuestPolicyCeiling: forbidden bits clear, required bits set, ABI from min_abi,
// reserved bit 17 set, unknown names refused.
func TestGuestPolicyCeiling(t *testing.T) {
	c, err := (&Policy{SNP: SNPPolicy{Forbid: []string{"debug", "migrate_ma"}, Require: []string{"single_socket"}, MinABI: "1.51"}}).GuestPolicyCeiling()
	if err != nil {
		t.Fatal(err)
	}
	// ABI 1.51, SMT(16), reserved(17), single_socket(20), cxl(21); no debug(19), no migrate(18).
	want := uint64(51) | 1<<8 | 1<<16 | 1<<17 | 1<<20 | 1<<21
	if c != want {
		t.Fatalf("ceiling %#x, want %#x", c, want)
	}
	if _, err := (&Policy{SNP: SNPPolicy{Forbid: []string{"nope"}}}).GuestPolicyCeiling(); err == nil {
		t.Fatal("unknown bit accepted")
	}
}

// TestDiskDirs: a disk must lie, by its real path, in the image directory or one of
// devices.disk_dirs; a disk whose real path is unknown, or one reached through a
// symlink that leads elsewhere, breaks the rule.
func TestDiskDirs(t *testing.T) {
	var p Policy
	p.Devices.DiskDirs = []string{"/srv/vm-images"}
	p.Firmware.AllowAny = true
	p.VCPU.Models = []string{"EPYC-v4"}
	p.SetDefaults()
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	vm := &VM{Name: "d", Disks: []Disk{{Path: "/var/lib/snpd/images/a.img"}, {Path: "/srv/vm-images/b.qcow2"}, {Path: "/var/lib/snpd/images/link.img"}, {Path: "/x/c.img"}}}
	f := Facts{ImageDir: "/var/lib/snpd/images", DiskRealPaths: []string{"/var/lib/snpd/images/a.img", "/srv/vm-images/b.qcow2", "/etc/shadow", ""}}
	var got []string
	for _, v := range p.Check(vm, f) {
		if strings.HasPrefix(v.Rule, "devices.disk_dirs") {
			got = append(got, v.Value)
		}
	}
	if want := []string{"/etc/shadow", "/x/c.img"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("disk_dirs violations %q, want %q", got, want)
	}
	// A directory named like an allowed one is not inside it.
	f.DiskRealPaths = []string{"/var/lib/snpd/images-evil/a.img", "/srv/vm-images/b.qcow2", "/var/lib/snpd/images/x", "/var/lib/snpd/images/y"}
	got = nil
	for _, v := range p.Check(vm, f) {
		if strings.HasPrefix(v.Rule, "devices.disk_dirs") {
			got = append(got, v.Value)
		}
	}
	if want := []string{"/var/lib/snpd/images-evil/a.img"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("prefix trick: disk_dirs violations %q, want %q", got, want)
	}
	p.Devices.DiskDirs = []string{"relative/dir", "/"}
	if err := p.Validate(); err == nil || !strings.Contains(err.Error(), "devices.disk_dirs[0]") || !strings.Contains(err.Error(), "devices.disk_dirs[1]") {
		t.Fatalf("bad disk_dirs validated: %v", err)
	}
}
