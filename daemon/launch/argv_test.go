package launch

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-sev-guest/abi"
	"github.com/snpd/snpd/config"
	"github.com/snpd/snpd/snp/snptest"
)

var updateGolden = flag.Bool("update", false, "rewrite daemon/launch/testdata/*.golden from the current argv builder")

// argvTestFile is a SealedFile stand-in for pure argv tests: no memfd, fixed digests.
func argvTestFile(name string, size int64) *SealedFile {
	return &SealedFile{Path: "/test/" + name, Size: size}
}

// argvTestVM is a definition using every feature the argv builder has.
func argvTestVM() *config.VM {
	return &config.VM{
		Name: "full", VCPUs: 4, CPUModel: "EPYC-Milan", MemoryMiB: 2048,
		Firmware: "/test/OVMF.amdsev.fd", Kernel: "/test/vmlinuz", Initrd: "/test/initrd",
		Cmdline: "console=ttyS0 root=/dev/vda ro, quiet",
		SNP: config.SNP{
			Policy:   0x30000,
			HostData: base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{0xab}, 32)),
			IDBlock:  base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{1}, 96)),
			IDAuth:   base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{2}, 4096)),
			CBitPos:  51, ReducedPhysBits: 1, VCEKDisabled: true, AuthorKeyEnabled: true,
		},
		Disks: []config.Disk{
			{Path: "/var/lib/snpd/images/root.qcow2", Format: "qcow2"},
			{Path: "/var/lib/snpd/images/data,with,commas.img", Format: "raw", ReadOnly: true},
		},
		Networks: []config.Network{{Type: "user"}, {Type: "tap", Tap: "tap-snp0", MAC: "52:54:00:AB:CD:EF"}},
		Channel:  &config.Channel{VsockCID: 42, Serial: true},
	}
}

func argvTestSpec(t testing.TB, vm *config.VM, p Platform, accel Accel) *Spec {
	t.Helper()
	var k, i *SealedFile
	if vm.Kernel != "" {
		k = argvTestFile("vmlinuz", 1<<20)
	}
	if vm.Initrd != "" {
		i = argvTestFile("initrd", 1<<20)
	}
	s, err := NewSpec(vm, p, HostFacts{Accel: accel}, argvTestFile("OVMF.fd", 4<<20), k, i)
	if err != nil {
		t.Fatal(err)
	}
	s.Runtime.Dir = "/run/snpd/vms/" + vm.Name
	return s
}

// TestBuildArgvGolden compares the whole argv of representative specs with
// testdata/<name>.golden (one argument per line); go test -run Golden -update rewrites them.
func TestBuildArgvGolden(t *testing.T) {
	minimal := &config.VM{Name: "minimal", Firmware: "/usr/share/ovmf/OVMF.fd"}
	cases := []struct {
		name  string
		vm    *config.VM
		p     Platform
		accel Accel
	}{
		{"snp-full", argvTestVM(), PlatformSEVSNP, AccelKVM},
		{"none-full", argvTestVM(), PlatformNone, AccelKVM},
		{"none-minimal-tcg", minimal, PlatformNone, AccelTCG},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			args, files := BuildArgv(argvTestSpec(t, c.vm, c.p, c.accel))
			got := strings.Join(args, "\n") + "\n"
			path := filepath.Join("testdata", c.name+".golden")
			if *updateGolden {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test ./daemon -run Golden -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("argv differs from %s (rerun with -update if intended):\n%s", path, got)
			}
			if c.name == "snp-full" && len(files) != 8 {
				t.Errorf("extra files: %d, want 8 (qmp, firmware, kernel, initrd, 2+1 for the rw and ro disks, agent)", len(files))
			}
		})
	}
}

// TestBuildArgvPlatformsDiffer checks platform "none" is the SNP argv minus exactly the
// sev-snp-guest object and the confidential-guest-support machine property.
func TestBuildArgvPlatformsDiffer(t *testing.T) {
	snpArgs, _ := BuildArgv(argvTestSpec(t, argvTestVM(), PlatformSEVSNP, AccelKVM))
	noneArgs, _ := BuildArgv(argvTestSpec(t, argvTestVM(), PlatformNone, AccelKVM))
	var stripped []string
	for i := 0; i < len(snpArgs); i++ {
		a := snpArgs[i]
		if a == "-object" && strings.Contains(snpArgs[i+1], `"sev-snp-guest"`) {
			i++
			continue
		}
		stripped = append(stripped, strings.Replace(a, ",confidential-guest-support="+SNPObjectID, "", 1))
	}
	if !slices.Equal(stripped, noneArgs) {
		t.Fatalf("none argv is not the SNP argv without the SNP object:\nsnp-stripped %q\nnone         %q", stripped, noneArgs)
	}
	if slices.Equal(snpArgs, noneArgs) {
		t.Fatal("platforms give the same argv")
	}
}

// argValue returns the value after the n-th (0-based) occurrence of option opt.
func argValue(args []string, opt string, n int) (string, bool) {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == opt {
			if n == 0 {
				return args[i+1], true
			}
			n--
		}
	}
	return "", false
}

func TestBuildArgvFragments(t *testing.T) {
	type check func(t *testing.T, args []string)
	has := func(opt, want string) check {
		return func(t *testing.T, args []string) {
			for i := 0; i+1 < len(args); i++ {
				if args[i] == opt && args[i+1] == want {
					return
				}
			}
			t.Errorf("no %s %s in %q", opt, want, args)
		}
	}
	hasNot := func(sub string) check {
		return func(t *testing.T, args []string) {
			for _, a := range args {
				if strings.Contains(a, sub) {
					t.Errorf("argument %q contains %q", a, sub)
				}
			}
		}
	}
	jsonArg := func(opt string, n int, want map[string]any) check {
		return func(t *testing.T, args []string) {
			v, ok := argValue(args, opt, n)
			if !ok {
				t.Fatalf("no %s #%d", opt, n)
			}
			var got map[string]any
			if err := json.Unmarshal([]byte(v), &got); err != nil {
				t.Fatalf("%s %s: not JSON: %v", opt, v, err)
			}
			for k, w := range want {
				if g, ok := got[k]; !ok || !jsonEqual(g, w) {
					t.Errorf("%s #%d: %s = %v, want %v (in %s)", opt, n, k, g, w, v)
				}
			}
		}
	}
	base := func() *config.VM { return &config.VM{Name: "f", Firmware: "/fw"} }
	cases := []struct {
		name   string
		mod    func(*config.VM)
		p      Platform
		accel  Accel
		checks []check
	}{
		{"always", nil, PlatformNone, AccelTCG, []check{
			has("-sandbox", SandboxArg), has("-display", "none"), has("-machine", "q35,dump-guest-core=off"),
			has("-accel", "tcg"), has("-cpu", "EPYC-v4"), has("-smp", "1"), has("-m", "size=512M"),
			has("-bios", "/proc/self/fd/4"), has("-chardev", "socket,id=qmp,fd=3,server=on,wait=off"),
			has("-mon", "chardev=qmp,mode=control"), hasNot("sev-snp-guest"), hasNot("pflash"),
			func(t *testing.T, args []string) {
				for _, f := range []string{"-S", "-nodefaults", "-no-user-config"} {
					if !slices.Contains(args, f) {
						t.Errorf("%s missing", f)
					}
				}
			},
		}},
		{"kvm enforces the cpu model", nil, PlatformNone, AccelKVM, []check{has("-accel", "kvm"), has("-cpu", "EPYC-v4,enforce")}},
		{"snp machine and object", func(v *config.VM) { v.SNP.CBitPos, v.SNP.ReducedPhysBits = 51, 1 }, PlatformSEVSNP, AccelKVM, []check{
			has("-machine", "q35,dump-guest-core=off,confidential-guest-support=lsec0"),
			jsonArg("-object", 0, map[string]any{"qom-type": "sev-snp-guest", "id": "lsec0", "policy": 196608.0, "cbitpos": 51.0, "reduced-phys-bits": 1.0}),
			hasNot("kernel-hashes"), hasNot("id-block"),
		}},
		{"snp kernel hashes with a kernel", func(v *config.VM) {
			v.SNP.CBitPos, v.SNP.ReducedPhysBits = 51, 1
			v.Kernel, v.Cmdline = "/k", "a=b"
		}, PlatformSEVSNP, AccelKVM, []check{
			jsonArg("-object", 0, map[string]any{"kernel-hashes": true}),
			has("-kernel", "/proc/self/fd/5"), has("-append", "a=b"),
		}},
		{"qcow2 never follows backing files", func(v *config.VM) { v.Disks = []config.Disk{{Path: "/d.qcow2", Format: "qcow2"}} }, PlatformNone, AccelTCG, []check{
			has("-add-fd", "fd=5,set=0,opaque=disk0"), has("-add-fd", "fd=6,set=0,opaque=disk0"),
			jsonArg("-blockdev", 0, map[string]any{"driver": "file", "filename": "/dev/fdset/0", "read-only": false}),
			jsonArg("-blockdev", 1, map[string]any{"driver": "qcow2", "file": "disk0-file", "backing": nil}),
			jsonArg("-device", 1, map[string]any{"driver": "virtio-blk-pci-non-transitional", "drive": "disk0", "iommu_platform": true}),
		}},
		{"read-only raw disk", func(v *config.VM) { v.Disks = []config.Disk{{Path: "/d.img", ReadOnly: true}} }, PlatformNone, AccelTCG, []check{
			has("-add-fd", "fd=5,set=0,opaque=disk0"), hasNot("fd=6"),
			jsonArg("-blockdev", 0, map[string]any{"filename": "/dev/fdset/0", "read-only": true}),
			jsonArg("-blockdev", 1, map[string]any{"driver": "raw", "read-only": true}),
			hasNot("backing"),
		}},
		{"tap runs no scripts", func(v *config.VM) {
			v.Networks = []config.Network{{Type: "tap", Tap: "tap0", MAC: "52:54:00:00:00:01"}}
		}, PlatformNone, AccelTCG, []check{
			jsonArg("-netdev", 0, map[string]any{"type": "tap", "ifname": "tap0", "script": "no", "downscript": "no"}),
			jsonArg("-device", 1, map[string]any{"driver": "virtio-net-pci-non-transitional", "iommu_platform": true, "mac": "52:54:00:00:00:01"}),
		}},
		{"vsock", func(v *config.VM) { v.Channel = &config.Channel{VsockCID: 7} }, PlatformNone, AccelTCG, []check{
			jsonArg("-device", 1, map[string]any{"driver": "vhost-vsock-pci", "guest-cid": 7.0, "iommu_platform": true}),
		}},
		{"agent port", func(v *config.VM) { v.Channel = &config.Channel{Serial: true} }, PlatformNone, AccelTCG, []check{
			has("-chardev", "socket,id=agent0,fd=5,server=on,wait=off"),
			jsonArg("-device", 2, map[string]any{"driver": "virtserialport", "name": AgentPortName, "chardev": "agent0"}),
		}},
		{"no console", func(v *config.VM) { v.Console = "none" }, PlatformNone, AccelTCG, []check{hasNot("console0"), hasNot("isa-serial")}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			vm := base()
			if c.mod != nil {
				c.mod(vm)
			}
			var k *SealedFile
			if vm.Kernel != "" {
				k = argvTestFile("k", 4096)
			}
			s, err := NewSpec(vm, c.p, HostFacts{Accel: c.accel}, argvTestFile("fw", 4096), k, nil)
			if err != nil {
				t.Fatal(err)
			}
			args, _ := BuildArgv(s)
			for _, ch := range c.checks {
				ch(t, args)
			}
		})
	}
}

func jsonEqual(a, b any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return bytes.Equal(x, y)
}

// TestBuildArgvRuntimeDirEscaped: a comma in the runtime directory cannot add a -chardev
// option.
func TestBuildArgvRuntimeDirEscaped(t *testing.T) {
	s := argvTestSpec(t, &config.VM{Name: "x", Firmware: "/fw"}, PlatformNone, AccelTCG)
	s.Runtime.Dir = "/run/a,append=on"
	args, _ := BuildArgv(s)
	v, _ := argValue(args, "-chardev", 1)
	if v != "file,id=console0,path=/run/a,,append=on/console.log" {
		t.Fatalf("console chardev %q", v)
	}
}

// optionsWithValue lists the QEMU options BuildArgv may emit that take a value; every
// other argument must be one of the flags below. A fuzzed definition must never make
// an argument appear in an option position.
var argvOptions = map[string]bool{
	"-name": true, "-pidfile": true, "-add-fd": true, "-sandbox": true, "-display": true, "-machine": true, "-accel": true, "-cpu": true,
	"-smp": true, "-m": true, "-object": true, "-bios": true, "-kernel": true, "-initrd": true,
	"-append": true, "-chardev": true, "-mon": true, "-device": true, "-blockdev": true, "-netdev": true,
}
var argvFlags = map[string]bool{"-S": true, "-nodefaults": true, "-no-user-config": true}

// checkArgvShape fails when args are not a sequence of known flags and options with
// values, or a JSON-valued option does not decode to one object.
func checkArgvShape(t *testing.T, args []string) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case argvFlags[a]:
		case argvOptions[a]:
			if i+1 >= len(args) {
				t.Fatalf("option %s without value", a)
			}
			v := args[i+1]
			if a == "-object" || a == "-device" || a == "-blockdev" || a == "-netdev" {
				var m map[string]any
				if err := json.Unmarshal([]byte(v), &m); err != nil {
					t.Fatalf("%s value is not one JSON object: %q: %v", a, v, err)
				}
			}
			i++
		default:
			t.Fatalf("argument %d %q is in an option position", i, a)
		}
	}
}

// FuzzSpecArgv feeds arbitrary definition strings through NewSpec and BuildArgv: either
// NewSpec rejects the definition, or the argv has the fixed shape (no injected options,
// every JSON value one object) and the user's strings come back unchanged from JSON.
func FuzzSpecArgv(f *testing.F) {
	f.Add("vm1", "EPYC-v4", "/img/a.qcow2", "qcow2", "tap0", "52:54:00:00:00:01", "console=ttyS0", "")
	f.Add("x,y", "EPYC,+pmu", `/a","driver":"host_device`, "raw", "t,ap", "zz", "a -device b", "AAAA")
	f.Fuzz(func(t *testing.T, name, model, disk, format, tap, mac, cmdline, hostData string) {
		vm := &config.VM{
			Name: name, CPUModel: model, Firmware: "/fw", Kernel: "/k", Cmdline: cmdline,
			SNP:      config.SNP{HostData: hostData, CBitPos: 51, ReducedPhysBits: 1},
			Disks:    []config.Disk{{Path: disk, Format: format}},
			Networks: []config.Network{{Type: "tap", Tap: tap, MAC: mac}},
		}
		s, err := NewSpec(vm, PlatformSEVSNP, HostFacts{Accel: AccelKVM}, argvTestFile("fw", 4096), argvTestFile("k", 4096), nil)
		if err != nil {
			if strings.Contains(err.Error(), "\x00") {
				t.Fatalf("error carries a NUL: %q", err)
			}
			return
		}
		args, _ := BuildArgv(s)
		checkArgvShape(t, args)
		v, _ := argValue(args, "-blockdev", 0)
		var bd struct{ Filename string }
		// QEMU gets the disk as fdset 0, never by path: the path reaches no argument.
		if err := json.Unmarshal([]byte(v), &bd); err != nil || bd.Filename != "/dev/fdset/0" {
			t.Fatalf("disk %q: -blockdev file %q (%v), want /dev/fdset/0", disk, bd.Filename, err)
		}
		if a, _ := argValue(args, "-append", 0); cmdline != "" && a != cmdline {
			t.Fatalf("cmdline %q came back as %q", cmdline, a)
		}
	})
}

// TestSNPObjectMatchesLibvirt builds the spec for the settings of libvirt's own SEV-SNP
// test domain and compares our -object JSON with the line libvirt 11.3 generates.
func TestSNPObjectMatchesLibvirt(t *testing.T) {
	path := filepath.Join(sharedDirForLaunch(t), "testdata", "libvirt", "launch-security-sev-snp.x86_64-latest.args")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var line string
	for _, l := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(l, `-object '{"qom-type":"sev-snp-guest"`) {
			line = strings.TrimSuffix(strings.TrimPrefix(l, "-object '"), "' \\")
		}
	}
	if line == "" {
		t.Fatalf("%s has no sev-snp-guest -object line", path)
	}
	var lv struct {
		CBitPos                 uint32 `json:"cbitpos"`
		ReducedPhysBits         uint32 `json:"reduced-phys-bits"`
		Policy                  uint64 `json:"policy"`
		GuestVisibleWorkarounds []byte `json:"guest-visible-workarounds"`
		IDBlock                 []byte `json:"id-block"`
		IDAuth                  []byte `json:"id-auth"`
		HostData                []byte `json:"host-data"`
	}
	if err := json.Unmarshal([]byte(line), &lv); err != nil {
		t.Fatal(err)
	}
	pol, err := abi.ParseSnpPolicy(lv.Policy)
	if err != nil {
		t.Fatal(err)
	}
	// The domain: policy 0x30000, authorKey='yes', vcek='no', cbitpos 47, reducedPhysBits 1.
	s := &Spec{Platform: PlatformSEVSNP, SNP: SNPSpec{
		Policy: pol, CBitPos: 47, ReducedPhysBits: 1, AuthorKey: true, VCEKDisabled: true,
		GuestVisibleWorkarounds: lv.GuestVisibleWorkarounds, IDBlock: lv.IDBlock, IDAuth: lv.IDAuth, HostData: lv.HostData,
	}}
	if got := mustJSON(s.snpObject()); got != line {
		t.Fatalf("sev-snp-guest object differs from libvirt's:\nours    %s\nlibvirt %s", got, line)
	}
}

// sharedDirForLaunch locates <repo root>/../shared or skips.
func sharedDirForLaunch(t testing.TB) string {
	t.Helper()
	return snptest.SharedDir(t, "testdata/libvirt")
}

// TestRecordedChannel: the CID and the serial port are read back from the argv snpd
// launched with (the same builders the argv uses), not from the current definition.
func TestRecordedChannel(t *testing.T) {
	argv := []string{"qemu", "-device", mustJSON(virtioDevice("vhost-vsock-pci", device{"id": "vsock0", "guest-cid": uint32(77)})),
		"-device", mustJSON(device{"driver": "virtserialport", "bus": "virtio-serial0.0", "chardev": "agent0", "name": AgentPortName, "id": "agent0"})}
	if cid := recordedCID(argv); cid != 77 {
		t.Fatalf("recordedCID = %d", cid)
	}
	if !hasSerialAgent(argv) {
		t.Fatal("serial port not found")
	}
	if recordedCID(argv[:1]) != 0 || hasSerialAgent(argv[:3]) {
		t.Fatal("found a channel that is not there")
	}
	if serial, cid := RecordedChannel(argv); !serial || cid != 77 {
		t.Fatalf("RecordedChannel = %v, %d", serial, cid)
	}
}
