package launch

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/snpd/snpd/config"
	"github.com/snpd/snpd/qmp"
	"golang.org/x/sys/unix"
)

func TestProbeQEMU(t *testing.T) {
	ltNeed(t)
	caps, err := ProbeQEMU(context.Background(), ltQEMU)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("QEMU %s (%s): sev-snp-guest %v", caps.Version, caps.Version.Package, caps.SNPProps)
	if !caps.Version.AtLeast(9, 1) {
		t.Fatalf("installed QEMU %s is older than 9.1", caps.Version)
	}
	if err := caps.CheckSNP(); err != nil {
		t.Fatal(err)
	}
	// A binary missing properties is refused with every problem named.
	broken := *caps
	broken.SNPProps = map[string]string{"policy": "uint32"}
	err = broken.CheckSNP()
	if err == nil || !strings.Contains(err.Error(), "policy is uint32, want uint64") || !strings.Contains(err.Error(), "id-block missing") {
		t.Fatalf("CheckSNP on a broken binary: %v", err)
	}
	none := *caps
	none.SNPProps = nil
	if err := none.CheckSNP(); err == nil || !strings.Contains(err.Error(), "no sev-snp-guest") {
		t.Fatalf("CheckSNP without the type: %v", err)
	}
}

func TestProbeQEMUNotQEMU(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := ProbeQEMU(ctx, "/bin/true")
	if err == nil || !strings.Contains(err.Error(), "probing qemu /bin/true") {
		t.Fatalf("probing /bin/true: %v", err)
	}
	if _, err := ProbeQEMU(ctx, "/nonexistent/qemu"); err == nil {
		t.Fatal("probing a missing binary succeeded")
	}
}

// TestSNPObjectAgainstQEMU validates the SNP argv against the real binary: every property
// BuildArgv emits on sev-snp-guest exists with the matching type, QEMU accepts the
// object, and qom-get reads back exactly what the verification expects; a perturbed
// expectation is reported property by property.
func TestSNPObjectAgainstQEMU(t *testing.T) {
	ltNeed(t)
	caps, err := ProbeQEMU(context.Background(), ltQEMU)
	if err != nil {
		t.Fatal(err)
	}
	for _, vm := range []*config.VM{argvTestVM(), {Name: "plain", Firmware: "/fw", SNP: config.SNP{CBitPos: 51, ReducedPhysBits: 1}}} {
		t.Run(vm.Name, func(t *testing.T) {
			spec := argvTestSpec(t, vm, PlatformSEVSNP, AccelKVM)
			obj := mustJSON(spec.snpObject())
			var m map[string]any
			if err := json.Unmarshal([]byte(obj), &m); err != nil {
				t.Fatal(err)
			}
			for k, v := range m {
				if k == "qom-type" || k == "id" {
					continue
				}
				typ, ok := caps.SNPProps[k]
				if !ok {
					t.Errorf("emitted property %s does not exist on sev-snp-guest", k)
					continue
				}
				var want string
				switch v.(type) {
				case bool:
					want = "bool"
				case string:
					want = "string"
				case float64:
					if typ != "uint64" && typ != "uint32" {
						t.Errorf("property %s: QEMU type %s for a number", k, typ)
					}
					continue
				}
				if typ != want {
					t.Errorf("property %s: QEMU type %s, emitted %s", k, typ, want)
				}
			}
			c := ltObjectQEMU(t, obj)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			props := snpProps(spec)
			if diffs := verifySNPObject(ctx, c, props); len(diffs) > 0 {
				t.Fatalf("QEMU reads back differently: %q", diffs)
			}
			props["policy"] = float64(0x30001)
			props["vcek-disabled"] = !spec.SNP.VCEKDisabled
			diffs := verifySNPObject(ctx, c, props)
			if len(diffs) != 2 || !strings.Contains(diffs[0], "lsec0.policy is 196608, want 196609") || !strings.Contains(diffs[1], "lsec0.vcek-disabled") {
				t.Fatalf("perturbed expectation: %q", diffs)
			}
		})
	}
}

// ltObjectQEMU starts `qemu -machine none -object obj` (no guest, no KVM needed) and
// returns a QMP client to it.
func ltObjectQEMU(t *testing.T, obj string) *qmp.Client {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	ours, theirs := os.NewFile(uintptr(fds[0]), "ours"), os.NewFile(uintptr(fds[1]), "theirs")
	defer ours.Close()
	args := []string{"-machine", "none", "-S", "-nodefaults", "-no-user-config", "-display", "none",
		"-sandbox", SandboxArg, "-object", obj, "-chardev", "socket,id=qmp,fd=3", "-mon", "chardev=qmp,mode=control"}
	t.Logf("argv: %q", args)
	inst, _, err := StartProcess(ltQEMU, args, []*os.File{theirs}, t.TempDir()+"/qemu.stderr")
	theirs.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inst.Kill() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := qmp.NewClientFile(ctx, ours, nil)
	if err != nil {
		<-inst.Done()
		t.Fatalf("QEMU refused the object: %v %q", err, inst.Exit().StderrTail)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestDetectHost(t *testing.T) {
	h := DetectHost()
	_, kvmErr := os.Stat("/dev/kvm")
	if (kvmErr == nil) != (h.Accel == AccelKVM) {
		t.Errorf("accel %s with /dev/kvm stat error %v", h.Accel, kvmErr)
	}
	cb, rpb, _, ok := hostSEVBits()
	if ok && (cb < 32 || cb > 63 || rpb == 0) {
		t.Errorf("CPUID 0x8000001F: cbitpos %d reduced %d", cb, rpb)
	}
	if !ok && (h.CBitPos != 0 || h.ReducedPhysBits != 0) {
		t.Errorf("no SEV reported but host facts %+v", h)
	}
	t.Logf("host: %+v (SEV reported by CPUID: %v)", h, ok)
}

// TestLaunchRefusesSNPWithoutSNPObject: a QEMU without sev-snp-guest (simulated by its
// probe result) is refused before anything starts, with one clear line.
func TestLaunchRefusesSNPWithoutSNPObject(t *testing.T) {
	ltNeed(t)
	l := &Launcher{QEMU: ltQEMU, Platform: PlatformSEVSNP, RuntimeDir: ltRuntimeDir(t),
		Host: &HostFacts{CBitPos: 51, ReducedPhysBits: 1, Accel: AccelKVM}}
	l.caps = &QEMUCaps{Path: ltQEMU, Version: qmp.VersionInfo{QEMU: qmp.VersionTriple{Major: 8, Minor: 2}}}
	_, err := l.Launch(context.Background(), ltVM("old"), LaunchHooks{})
	if err == nil || !strings.Contains(err.Error(), "has no sev-snp-guest object (SEV-SNP needs QEMU >= 9.1)") {
		t.Fatalf("%v", err)
	}
	ltAssertNothingLeft(t, l, "old")
}

// TestMain lets TestProbeDiesWithSnpd run a probe in a child process it then kills.
func TestMain(m *testing.M) {
	if os.Getenv("SNPD_TEST_PROBE_FOREVER") != "" {
		_ = withProbeQEMU(context.Background(), ltQEMU, []string{"-machine", "none"}, func(context.Context, *qmp.Client) error {
			fmt.Println("probing")
			select {}
		})
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// TestProbeDiesWithSnpd: a QEMU started to probe the binary does not outlive the snpd
// that started it (a guest's QEMU must; a probe left behind would sit paused forever).
func TestProbeDiesWithSnpd(t *testing.T) {
	ltNeed(t)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "SNPD_TEST_PROBE_FOREVER=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "probing\n" {
		_ = cmd.Process.Kill()
		t.Fatalf("helper: %q %v", line, err)
	}
	var probes []int
	for _, tid := range taskIDs(t, cmd.Process.Pid) {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", cmd.Process.Pid, tid))
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				probes = append(probes, pid)
			}
		}
	}
	if len(probes) != 1 {
		_ = cmd.Process.Kill()
		t.Fatalf("children of the prober: %v, want the one probe", probes)
	}
	t.Cleanup(func() { _ = syscall.Kill(probes[0], syscall.SIGKILL) })
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()
	deadline := time.Now().Add(5 * time.Second)
	for syscall.Kill(probes[0], 0) == nil {
		if st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", probes[0])); strings.Contains(string(st), ") Z ") {
			break // dead, waiting to be reaped by init
		}
		if time.Now().After(deadline) {
			t.Fatalf("probe qemu %d still runs 5 s after its snpd was killed", probes[0])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// taskIDs lists the thread ids of pid.
func taskIDs(t *testing.T, pid int) []int {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, e := range ents {
		if id, err := strconv.Atoi(e.Name()); err == nil {
			out = append(out, id)
		}
	}
	return out
}
