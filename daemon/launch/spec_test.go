package launch

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"io"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/snpd/snpd/config"
	"github.com/snpd/snpd/snp"
	snplaunch "github.com/snpd/snpd/snp/launch"
	"github.com/snpd/snpd/snp/snptest"
)

// TestArgvAndMeasurementFromOneSpec derives the QEMU argv and the measurement input
// from one spec (AmdSev firmware, kernel, initrd, cmdline) and checks they agree: vCPU
// count, CPU model, and that the fds QEMU gets are the very memfds the digest reads.
func TestArgvAndMeasurementFromOneSpec(t *testing.T) {
	fwImg := snptest.AmdSevOVMF(2 << 20)
	fw, err := SealBytes("firmware", fwImg)
	if err != nil {
		t.Fatal(err)
	}
	kernel, _ := SealBytes("kernel", bytes.Repeat([]byte("K"), 10000))
	initrd, _ := SealBytes("initrd", bytes.Repeat([]byte("I"), 5000))
	defer fw.Close()
	defer kernel.Close()
	defer initrd.Close()
	vm := &config.VM{Name: "one", VCPUs: 3, CPUModel: "EPYC-Milan", Firmware: "/fw", Kernel: "/k", Initrd: "/i",
		Cmdline: "console=ttyS0", SNP: config.SNP{CBitPos: 51, ReducedPhysBits: 1}}
	spec, err := NewSpec(vm, PlatformSEVSNP, HostFacts{Accel: AccelKVM}, fw, kernel, initrd)
	if err != nil {
		t.Fatal(err)
	}
	args, files := BuildArgv(spec)
	in, err := spec.MeasureInput()
	if err != nil {
		t.Fatal(err)
	}
	smp, _ := argValue(args, "-smp", 0)
	if smp != strconv.Itoa(in.VCPUs) || in.VCPUs != 3 {
		t.Errorf("-smp %s, measurement vCPUs %d", smp, in.VCPUs)
	}
	cpu, _ := argValue(args, "-cpu", 0)
	sig, err := snplaunch.CPUSignature(strings.TrimSuffix(cpu, ",enforce"))
	if err != nil || sig != in.VCPUSig || sig != 0xa00f11 {
		t.Errorf("-cpu %s has signature %#x (%v), measurement uses %#x", cpu, sig, err, in.VCPUSig)
	}
	if a, _ := argValue(args, "-append", 0); a != in.Cmdline {
		t.Errorf("-append %q, measured cmdline %q", a, in.Cmdline)
	}
	obj, _ := argValue(args, "-object", 0)
	if !strings.Contains(obj, `"kernel-hashes":true`) {
		t.Errorf("direct boot without kernel-hashes: %s", obj)
	}
	// The fd behind each of -bios, -kernel, -initrd is the sealed file the measurement reads.
	for _, c := range []struct {
		opt  string
		want *SealedFile
		r    io.Reader
	}{{"-bios", fw, io.NewSectionReader(in.Firmware, 0, in.FirmwareSize)}, {"-kernel", kernel, in.Kernel}, {"-initrd", initrd, in.Initrd}} {
		v, _ := argValue(args, c.opt, 0)
		fd, err := strconv.Atoi(strings.TrimPrefix(v, "/proc/self/fd/"))
		if err != nil || fd < 3 || fd-3 >= len(files) {
			t.Fatalf("%s %s: not an inherited fd", c.opt, v)
		}
		if files[fd-3] != c.want.File {
			t.Errorf("%s: fd %d is not the sealed %s", c.opt, fd, c.want.Path)
		}
		measured, _ := io.ReadAll(c.r)
		given, _ := io.ReadAll(io.NewSectionReader(files[fd-3], 0, c.want.Size))
		if !bytes.Equal(measured, given) {
			t.Errorf("%s: QEMU's bytes differ from the measured bytes", c.opt)
		}
	}
	// And the digest is computable from that input.
	m, err := measureSpec(spec)
	if err != nil {
		t.Fatal(err)
	}
	if m.Digest == ([48]byte{}) || !m.FirmwareHasKernelHashes {
		t.Errorf("measurement %+v", m)
	}
}

// TestDebianOVMFRefusesKernel: Debian's OVMF.fd has no kernel-hashes section, so a
// measured direct boot with it must fail with a clear error, before anything starts.
func TestDebianOVMFRefusesKernel(t *testing.T) {
	ltNeed(t)
	l := &Launcher{QEMU: ltQEMU, Platform: PlatformNone, RuntimeDir: ltRuntimeDir(t), Host: &HostFacts{Accel: AccelTCG}}
	k := t.TempDir() + "/vmlinuz"
	os.WriteFile(k, []byte("not a kernel"), 0o600)
	vm := &config.VM{Name: "k", Firmware: ltOVMF, Kernel: k}
	_, _, err := l.Prepare(t.Context(), vm)
	if err == nil || !strings.Contains(err.Error(), "SNP_KERNEL_HASHES") {
		t.Fatalf("Prepare: %v", err)
	}
}

func TestNewSpecReportsEveryProblem(t *testing.T) {
	vm := &config.VM{
		Name: "bad name", VCPUs: 1000, CPUModel: "EPYC,+pmu", Firmware: "/fw",
		SNP:      config.SNP{Policy: 0x1, HostData: "short"},
		Disks:    []config.Disk{{Path: "relative.img", Format: "vmdk"}},
		Networks: []config.Network{{Type: "bridge"}},
	}
	_, err := NewSpec(vm, PlatformSEVSNP, HostFacts{Accel: AccelTCG}, argvTestFile("fw", 4096), nil, nil)
	if err == nil {
		t.Fatal("accepted")
	}
	msg := err.Error()
	for _, want := range []string{"name", "vcpus", "cpu_model", "snp.policy", "host_data", "disk 0", "network 0", "needs KVM", "snp.cbitpos"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q:\n%s", want, msg)
		}
	}
	// The definition itself is not changed by defaulting.
	if vm.MemoryMiB != 0 || vm.Disks[0].Format != "vmdk" {
		t.Error("NewSpec modified the definition")
	}
}

func TestNewSpecFirmwareSize(t *testing.T) {
	_, err := NewSpec(&config.VM{Name: "a", Firmware: "/fw"}, PlatformNone, HostFacts{Accel: AccelTCG}, argvTestFile("fw", 4097), nil, nil)
	if err == nil || !strings.Contains(err.Error(), "not a multiple of 4096") {
		t.Fatalf("%v", err)
	}
}

func TestNewSpecIDBlockAndHostData(t *testing.T) {
	vm := &config.VM{Name: "id", Firmware: "/fw", SNP: config.SNP{
		CBitPos: 51, ReducedPhysBits: 1, HostData: "derived",
		IDBlock: base64.StdEncoding.EncodeToString(make([]byte, 96)),
		IDAuth:  base64.StdEncoding.EncodeToString(make([]byte, 4096)),
	}}
	s, err := NewSpec(vm, PlatformSEVSNP, HostFacts{Accel: AccelKVM}, argvTestFile("fw", 4096), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := vm.DerivedHostData()
	if !bytes.Equal(s.SNP.HostData, want[:]) || len(s.SNP.IDBlock) != 96 || len(s.SNP.IDAuth) != 4096 {
		t.Fatalf("host data %x id block %d id auth %d", s.SNP.HostData, len(s.SNP.IDBlock), len(s.SNP.IDAuth))
	}
}

func TestParseStatStartTicks(t *testing.T) {
	good := "4242 (qemu) evil) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 5 0 987654 1000 100"
	if v, err := parseStatStartTicks([]byte(good)); err != nil || v != 987654 {
		t.Fatalf("%d %v", v, err)
	}
	for _, bad := range []string{"", "4242 qemu S 1", "1 (x) S 1 2 3", "1 (x) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 x"} {
		if _, err := parseStatStartTicks([]byte(bad)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	self, err := ProcStartTicks(os.Getpid())
	if err != nil || self == 0 {
		t.Fatalf("own start ticks %d %v", self, err)
	}
}

// FuzzParseStatStartTicks: /proc/PID/stat content (a command name is chosen by whoever
// started the process) never panics the parser.
func FuzzParseStatStartTicks(f *testing.F) {
	f.Add([]byte("1 (a) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 55 0 0"))
	f.Add([]byte("1 ()) S"))
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := parseStatStartTicks(b)
		if err == nil && !bytes.Contains(b, []byte(strconv.FormatUint(v, 10))) {
			t.Fatalf("value %d not in input", v)
		}
	})
}

func TestQEMUExitError(t *testing.T) {
	for _, c := range []struct {
		tail []string
		want string
	}{
		{[]string{"qemu-system-x86_64: -accel kvm: vm-type SEV-SNP not supported by KVM"}, "SEV-SNP is not available on this host (qemu: -accel kvm: vm-type SEV-SNP not supported by KVM): check that /dev/kvm and /dev/sev exist"},
		{[]string{"qemu-system-x86_64: sev_kvm_init: SEV is not enabled in KVM"}, "SEV-SNP is not available on this host (qemu: sev_kvm_init: SEV is not enabled in KVM)"},
		{[]string{"warning: x", "qemu-system-x86_64: -cpu EPYC-v4,enforce: host doesn't support requested feature"}, "qemu exited at start (exit status 1): -cpu EPYC-v4,enforce: host doesn't support requested feature"},
		{nil, "with no message"},
	} {
		err := qemuExitError(ExitInfo{Known: true, Code: 1, StderrTail: c.tail})
		if !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: %v, want one line with %q", c.tail, err, c.want)
		}
	}
}

// TestPrepareBuildsIDBlock: with snp.id_key_file the launch builds an ID block for the
// expected digest and policy and signs it; VerifyIDAuth accepts the pair.
func TestPrepareBuildsIDBlock(t *testing.T) {
	dir := t.TempDir()
	fwPath := dir + "/amdsev.fd"
	if err := os.WriteFile(fwPath, snptest.AmdSevOVMF(1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalECPrivateKey(key)
	keyPath := dir + "/id.pem"
	os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600)
	for _, c := range []struct{ name, idKey, authorKey string }{
		{"key", keyPath, ""}, {"keyless", "keyless", ""}, {"key+author", keyPath, keyPath},
	} {
		t.Run(c.name, func(t *testing.T) {
			l := &Launcher{QEMU: ltQEMU, Platform: PlatformSEVSNP, RuntimeDir: dir, Host: &HostFacts{CBitPos: 51, ReducedPhysBits: 1, Accel: AccelKVM}}
			vm := &config.VM{Name: "id", Firmware: fwPath, SNP: config.SNP{IDKeyFile: c.idKey, AuthorKeyFile: c.authorKey,
				FamilyID: strings.Repeat("ab", 16), GuestSVN: 7}}
			spec, rec, err := l.Prepare(t.Context(), vm)
			if err != nil {
				t.Fatal(err)
			}
			defer spec.Close()
			info, err := snp.VerifyIDAuth(spec.SNP.IDBlock, spec.SNP.IDAuth)
			if err != nil {
				t.Fatal(err)
			}
			if got := hexOrEmpty(info.Block.LaunchDigest[:]); got != rec.ExpectedDigest {
				t.Errorf("ID block digest %s, expected digest %s", got, rec.ExpectedDigest)
			}
			if info.Block.Policy != rec.Policy || info.Block.GuestSVN != 7 || info.Block.FamilyID[0] != 0xab {
				t.Errorf("ID block %+v", info.Block)
			}
			if info.HasAuthorKey != (c.authorKey != "") || spec.SNP.AuthorKey != info.HasAuthorKey || rec.AuthorKey != info.HasAuthorKey {
				t.Errorf("author key: auth %v spec %v record %v", info.HasAuthorKey, spec.SNP.AuthorKey, rec.AuthorKey)
			}
			if info.Keyless != (c.idKey == "keyless") {
				t.Errorf("keyless %v", info.Keyless)
			}
			if rec.IDBlockSHA256 == "" || rec.IDAuthSHA256 == "" {
				t.Error("record lacks ID block digests")
			}
		})
	}
}
