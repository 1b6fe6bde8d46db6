package launch

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/snpd/snpd/config"
	"github.com/snpd/snpd/daemon/api"
	"github.com/snpd/snpd/qmp"
)

const (
	ltQEMU = "/usr/bin/qemu-system-x86_64"
	ltOVMF = "/usr/share/ovmf/OVMF.fd"
)

// ltNeed skips when the real QEMU or Debian's OVMF is absent (scripts/install-deps.sh
// installs both; KVM is optional: the launcher falls back to TCG).
func ltNeed(t testing.TB) {
	t.Helper()
	for _, p := range []string{ltQEMU, ltOVMF} {
		if _, err := os.Stat(p); err != nil {
			t.Skipf("%s is missing (run scripts/install-deps.sh): %v", p, err)
		}
	}
}

// ltRuntimeDir is a short runtime directory (unix socket paths are limited to 108 bytes).
func ltRuntimeDir(t testing.TB) string {
	dir, err := os.MkdirTemp("", "snpd-lt-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// ltProcessesMentioning lists pids whose command line contains s.
func ltProcessesMentioning(s string) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err == nil && bytes.Contains(b, []byte(s)) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// ltAssertNothingLeft checks a failed launch left no QEMU and no runtime directory.
func ltAssertNothingLeft(t *testing.T, l *Launcher, name string) {
	t.Helper()
	if _, err := os.Stat(l.VMDir(name)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("runtime directory %s left behind (%v)", l.VMDir(name), err)
	}
	if pids := ltProcessesMentioning(l.RuntimeDir); len(pids) > 0 {
		t.Errorf("processes left running: %v", pids)
	}
}

func ltVM(name string) *config.VM {
	return &config.VM{
		Name: name, VCPUs: 2, MemoryMiB: 256, Firmware: ltOVMF,
		Networks: []config.Network{{Type: "user"}},
		Channel:  &config.Channel{Serial: true},
	}
}

// TestLaunchOVMFPlatformNone boots Debian's OVMF under the real QEMU on platform none:
// launch paused, verify over QMP, record, cont, see it running, then stop (powerdown,
// falling back to quit: OVMF without a boot disk ignores the ACPI button).
func TestLaunchOVMFPlatformNone(t *testing.T) {
	ltNeed(t)
	l := &Launcher{QEMU: ltQEMU, Platform: PlatformNone, RuntimeDir: ltRuntimeDir(t)}
	vm := ltVM("ovmf")
	var admitted, recorded *api.LaunchRecord
	hooks := LaunchHooks{
		Admit: func(v *config.VM, s *Spec, rec *api.LaunchRecord) error {
			if rec.PID != 0 {
				t.Error("Admit saw a started QEMU")
			}
			admitted = rec
			return nil
		},
		BeforeCont: func(rec *api.LaunchRecord) error {
			recorded = rec
			// The machine must still be paused when the record is written.
			st, err := os.ReadFile("/proc/" + strconv.Itoa(rec.PID) + "/stat")
			if err != nil || len(st) == 0 {
				t.Errorf("QEMU not alive at BeforeCont: %v", err)
			}
			return nil
		},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	inst, err := l.Launch(ctx, vm, hooks)
	if err != nil {
		t.Fatal(err)
	}
	defer inst.Kill()
	rec := inst.Record
	t.Logf("argv: %q", rec.Argv)
	if rec.AccelNote != "" {
		t.Logf("accelerator: %s (%s)", rec.Accel, rec.AccelNote)
	}
	if admitted != rec || recorded != rec {
		t.Fatal("hooks did not see the instance's record")
	}
	st, err := inst.QMP.QueryStatus(ctx)
	if err != nil || !st.Running || st.Status != qmp.RunStateRunning {
		t.Fatalf("after Launch: status %+v, %v; want running", st, err)
	}

	// The record describes what runs.
	fw, _ := os.ReadFile(ltOVMF)
	sum := sha256.Sum256(fw)
	if rec.FirmwareSHA256 != hex.EncodeToString(sum[:]) {
		t.Errorf("firmware digest %s, want sha256 of %s", rec.FirmwareSHA256, ltOVMF)
	}
	if len(rec.ExpectedDigest) != 96 || rec.ExpectedDigest == strings.Repeat("0", 96) {
		t.Errorf("expected digest %q", rec.ExpectedDigest)
	}
	if rec.Confidential || rec.Note != api.NotConfidential || rec.Platform != "none" {
		t.Errorf("platform none record: confidential %v note %q platform %q", rec.Confidential, rec.Note, rec.Platform)
	}
	cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(inst.PID) + "/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Split(strings.TrimSuffix(string(cmdline), "\x00"), "\x00"); strings.Join(got, "\n") != strings.Join(rec.Argv, "\n") {
		t.Errorf("running QEMU's argv differs from the record:\n%q\n%q", got, rec.Argv)
	}
	if ticks, err := ProcStartTicks(inst.PID); err != nil || ticks != rec.StartTicks || ticks == 0 {
		t.Errorf("start ticks %d (%v), record %d", ticks, err, rec.StartTicks)
	}
	// QEMU runs in its own session so it outlives snpd.
	if sid, _ := ltSessionID(inst.PID); sid != inst.PID {
		t.Errorf("QEMU session id %d, want its own pid %d (setsid)", sid, inst.PID)
	}
	// The sealed firmware reached QEMU as a memfd, not by path.
	if !ltHasMemfd(t, inst.PID, "snpd-firmware") {
		t.Error("QEMU holds no snpd-firmware memfd")
	}
	for _, f := range []string{QMPSocketName, AgentSocketName, StderrName, ConsoleLogName} {
		if _, err := os.Stat(filepath.Join(inst.Dir, f)); err != nil {
			t.Errorf("runtime file %s: %v", f, err)
		}
	}

	start := time.Now()
	if err := inst.Stop(ctx, time.Second); err != nil {
		t.Fatal(err)
	}
	ex := inst.Exit()
	t.Logf("stopped in %v: %s", time.Since(start), ex)
	if !ex.Known || ex.Code != 0 || ex.Signal != "" {
		t.Errorf("exit %+v, want status 0 from quit", ex)
	}
	select {
	case <-inst.Done():
	default:
		t.Fatal("Done not closed after Stop")
	}
}

func ltSessionID(pid int) (int, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	return strconv.Atoi(f[3]) // field 6: session
}

// ltHasMemfd reports whether process pid has a memfd named name open (it opened
// /proc/self/fd/N, which for a memfd yields the same memfd).
func ltHasMemfd(t *testing.T, pid int, name string) bool {
	dir := "/proc/" + strconv.Itoa(pid) + "/fd"
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if l, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil && strings.HasPrefix(l, "/memfd:"+name) {
			return true
		}
	}
	return false
}

// TestLaunchVerificationMismatchKills perturbs what the verification expects (vCPUs,
// memory, an extra disk) against a real paused QEMU: the launch must fail listing every
// difference, never call BeforeCont, and leave nothing behind.
func TestLaunchVerificationMismatchKills(t *testing.T) {
	ltNeed(t)
	l := &Launcher{QEMU: ltQEMU, Platform: PlatformNone, RuntimeDir: ltRuntimeDir(t)}
	l.perturb = func(e *expectation) {
		e.VCPUs = 3
		e.MemoryBytes += 1 << 20
		e.PCI[pciVirtioBlk]++
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	steps := &ltSteps{}
	_, err := l.Launch(WithTrace(ctx, steps.trace()), ltVM("mismatch"), LaunchHooks{BeforeCont: func(*api.LaunchRecord) error {
		t.Error("BeforeCont called for a machine that failed verification")
		return nil
	}})
	if err == nil {
		t.Fatal("launch succeeded with a perturbed expectation")
	}
	t.Log(err)
	for _, want := range []string{"vCPUs: 2, want 3", "base memory: 268435456 bytes, want 269484032", "PCI 1af4:1042: 0 present, want 1"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q", want)
		}
	}
	// The refusal is typed, each difference named by what was compared (snpd counts
	// them as runtime policy refusals), and the trace ends at the verify step.
	var me *MismatchError
	if !errors.As(err, &me) {
		t.Fatalf("error is not a *MismatchError: %T", err)
	}
	var checks []string
	for _, d := range me.Diffs {
		checks = append(checks, d.Check)
	}
	if strings.Join(checks, ",") != "vcpus,memory,pci" {
		t.Errorf("mismatch checks %q, want vcpus,memory,pci", checks)
	}
	if got := steps.String(); got != "measure,probe,spawn,verify!" {
		t.Errorf("trace %q, want measure,probe,spawn,verify! (! marks the step that failed)", got)
	}
	ltAssertNothingLeft(t, l, "mismatch")
}

// ltSteps records what a Trace reports: step names in order, "!" after a failed one.
type ltSteps struct {
	names []string
	took  []time.Duration
}

func (s *ltSteps) trace() *Trace {
	return &Trace{StepDone: func(step string, took time.Duration, err error) {
		if err != nil {
			step += "!"
		}
		s.names = append(s.names, step)
		s.took = append(s.took, took)
	}}
}

func (s *ltSteps) String() string { return strings.Join(s.names, ",") }

// TestLaunchTraceReportsEveryStep: a launch that succeeds reports its seven steps in
// order, each once, with durations that add up to no more than the launch took.
func TestLaunchTraceReportsEveryStep(t *testing.T) {
	ltNeed(t)
	l := &Launcher{QEMU: ltQEMU, Platform: PlatformNone, RuntimeDir: ltRuntimeDir(t)}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	steps := &ltSteps{}
	hooks := LaunchHooks{
		Admit:      func(*config.VM, *Spec, *api.LaunchRecord) error { return nil },
		BeforeCont: func(*api.LaunchRecord) error { time.Sleep(20 * time.Millisecond); return nil },
	}
	t0 := time.Now()
	inst, err := l.Launch(WithTrace(ctx, steps.trace()), ltVM("traced"), hooks)
	took := time.Since(t0)
	if err != nil {
		t.Fatal(err)
	}
	defer inst.Kill()
	if got := steps.String(); got != "measure,probe,admit,spawn,verify,record,cont" {
		t.Fatalf("trace %q", got)
	}
	var sum time.Duration
	for i, d := range steps.took {
		if d < 0 {
			t.Errorf("step %s took %v", steps.names[i], d)
		}
		sum += d
	}
	if sum > took {
		t.Errorf("steps add up to %v, more than the launch's %v", sum, took)
	}
	if steps.took[5] < 20*time.Millisecond {
		t.Errorf("record took %v, but BeforeCont slept 20ms", steps.took[5])
	}

	// A refusal by Admit ends the trace there.
	steps = &ltSteps{}
	_, err = l.Launch(WithTrace(ctx, steps.trace()), ltVM("refused"), LaunchHooks{Admit: func(*config.VM, *Spec, *api.LaunchRecord) error {
		return errors.New("rule x: no")
	}})
	if err == nil || steps.String() != "measure,probe,admit!" {
		t.Fatalf("refused launch: %v, trace %q", err, steps)
	}
}

// TestLaunchBeforeContErrorKills: a failing durable record must not leave a guest.
func TestLaunchBeforeContErrorKills(t *testing.T) {
	ltNeed(t)
	l := &Launcher{QEMU: ltQEMU, Platform: PlatformNone, RuntimeDir: ltRuntimeDir(t)}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, err := l.Launch(ctx, ltVM("norecord"), LaunchHooks{BeforeCont: func(*api.LaunchRecord) error {
		return errors.New("disk full")
	}})
	if err == nil || !strings.Contains(err.Error(), "recording launch: disk full") {
		t.Fatalf("err %v", err)
	}
	ltAssertNothingLeft(t, l, "norecord")
}

// TestLaunchAdmitRefusalStartsNothing: a policy refusal happens before QEMU starts.
func TestLaunchAdmitRefusalStartsNothing(t *testing.T) {
	ltNeed(t)
	l := &Launcher{QEMU: ltQEMU, Platform: PlatformNone, RuntimeDir: ltRuntimeDir(t)}
	var digest string
	_, err := l.Launch(context.Background(), ltVM("refused"), LaunchHooks{Admit: func(_ *config.VM, s *Spec, rec *api.LaunchRecord) error {
		digest = rec.ExpectedDigest
		return errors.New("rule firmware.sha256: not allowed")
	}})
	if err == nil || !strings.Contains(err.Error(), "rule firmware.sha256") {
		t.Fatalf("err %v", err)
	}
	if len(digest) != 96 {
		t.Errorf("Admit ran before the digest was computed: %q", digest)
	}
	ltAssertNothingLeft(t, l, "refused")
}

// TestLaunchSNPWithoutSNPHost starts an SNP VM on this host, which has no SEV-SNP, with
// the host facts claiming KVM and a C-bit, so QEMU itself fails: on SEV ("vm-type
// SEV-SNP not supported by KVM") where KVM works, on KVM ("failed to initialize kvm")
// where there is no /dev/kvm. Either way: one clear line saying SEV-SNP is not available
// and what to check, and nothing left behind.
func TestLaunchSNPWithoutSNPHost(t *testing.T) {
	ltNeed(t)
	if _, err := os.Stat("/dev/sev"); err == nil {
		t.Skip("this host has /dev/sev: the no-SNP failure cannot be provoked here")
	}
	l := &Launcher{QEMU: ltQEMU, Platform: PlatformSEVSNP, RuntimeDir: ltRuntimeDir(t),
		Host: &HostFacts{CBitPos: 51, ReducedPhysBits: 1, Accel: DetectHost().Accel}}
	_, err := l.Launch(context.Background(), ltVM("snp"), LaunchHooks{})
	if err == nil {
		t.Fatal("SNP launch succeeded on a host without SEV-SNP")
	}
	msg := err.Error()
	t.Log(msg)
	if strings.Contains(msg, "\n") {
		t.Errorf("error is not one line: %q", msg)
	}
	for _, want := range []string{"SEV-SNP is not available on this host", "/dev/kvm", "/dev/sev", "sev_snp=1", "6.11"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q", want)
		}
	}
	ltAssertNothingLeft(t, l, "snp")
}

// TestLaunchRefusesBusyRuntimeDir: a second launch of a running VM's name fails without
// touching the first.
func TestLaunchRefusesBusyRuntimeDir(t *testing.T) {
	ltNeed(t)
	l := &Launcher{QEMU: ltQEMU, Platform: PlatformNone, RuntimeDir: ltRuntimeDir(t)}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	inst, err := l.Launch(ctx, ltVM("twice"), LaunchHooks{})
	if err != nil {
		t.Fatal(err)
	}
	defer inst.Kill()
	if _, err := l.Launch(ctx, ltVM("twice"), LaunchHooks{}); err == nil || !strings.Contains(err.Error(), "belongs to a running QEMU") {
		t.Fatalf("second launch: %v", err)
	}
	if st, err := inst.QMP.QueryStatus(ctx); err != nil || !st.Running {
		t.Fatalf("first instance disturbed: %+v %v", st, err)
	}
	if err := inst.Kill(); err != nil {
		t.Fatal(err)
	}
	if ex := inst.Exit(); ex.Signal != "killed" || ex.Code != -1 {
		t.Errorf("exit after Kill: %+v", ex)
	}
	// A stale directory (QEMU gone) is replaced.
	inst2, err := l.Launch(ctx, ltVM("twice"), LaunchHooks{})
	if err != nil {
		t.Fatalf("launch over a stale runtime directory: %v", err)
	}
	inst2.Kill()
}

// TestLaunchWithDisks attaches a read-only raw disk and a qcow2 disk through -blockdev:
// QEMU accepts them and the PCI verification counts the virtio-blk functions.
func TestLaunchWithDisks(t *testing.T) {
	ltNeed(t)
	qemuImg := "/usr/bin/qemu-img"
	if _, err := os.Stat(qemuImg); err != nil {
		t.Skipf("%s is missing (qemu-utils; run scripts/install-deps.sh): %v", qemuImg, err)
	}
	dir := t.TempDir()
	raw, qcow := filepath.Join(dir, "ro.img"), filepath.Join(dir, "rw.qcow2")
	if err := os.WriteFile(raw, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(qemuImg, "create", "-q", "-f", "qcow2", qcow, "16M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v %s", err, out)
	}
	l := &Launcher{QEMU: ltQEMU, Platform: PlatformNone, RuntimeDir: ltRuntimeDir(t)}
	vm := ltVM("disks")
	vm.Disks = []config.Disk{{Path: raw, Format: "raw", ReadOnly: true}, {Path: qcow, Format: "qcow2"}}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	inst, err := l.Launch(ctx, vm, LaunchHooks{})
	if err != nil {
		t.Fatal(err)
	}
	defer inst.Kill()
	t.Logf("argv: %q", inst.Record.Argv)
	var ro bool
	if err := inst.QMP.QOMGet(ctx, "/machine/peripheral/disk0", "drive", new(any)); err != nil {
		t.Fatalf("disk0 device missing: %v", err)
	}
	var blocks []struct {
		NodeName string `json:"node-name"`
		RO       bool   `json:"ro"`
	}
	if err := inst.QMP.Execute(ctx, "query-named-block-nodes", nil, &blocks); err != nil {
		t.Fatal(err)
	}
	for _, b := range blocks {
		if b.NodeName == "disk0" {
			ro = b.RO
		}
		if b.NodeName == "disk1" && b.RO {
			t.Error("qcow2 disk1 is read-only")
		}
	}
	if !ro {
		t.Errorf("read-only disk0 is writable: %+v", blocks)
	}
}

// TestInstanceStopPaths: quit without grace, SIGKILL when ctx ends during the grace
// period, and stopping an ended instance.
func TestInstanceStopPaths(t *testing.T) {
	ltNeed(t)
	l := &Launcher{QEMU: ltQEMU, Platform: PlatformNone, RuntimeDir: ltRuntimeDir(t)}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	inst, err := l.Launch(ctx, ltVM("quit"), LaunchHooks{})
	if err != nil {
		t.Fatal(err)
	}
	if err := inst.Stop(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if ex := inst.Exit(); !ex.Known || ex.Code != 0 {
		t.Errorf("quit: %+v", ex)
	}
	if err := inst.Stop(ctx, time.Second); err != nil {
		t.Errorf("Stop of an ended instance: %v", err)
	}
	if err := inst.Kill(); err != nil {
		t.Errorf("Kill of an ended instance: %v", err)
	}

	inst, err = l.Launch(ctx, ltVM("killed"), LaunchHooks{})
	if err != nil {
		t.Fatal(err)
	}
	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancelShort()
	err = inst.Stop(short, time.Minute)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Stop with an ending ctx: %v", err)
	}
	if ex := inst.Exit(); ex.Signal != "killed" {
		t.Errorf("after ctx ended: %+v, want killed", ex)
	}
}

// TestLaunchRuntimeDirTooLong: a socket path over the unix limit is one clear error and
// leaves nothing behind.
func TestLaunchRuntimeDirTooLong(t *testing.T) {
	ltNeed(t)
	long := filepath.Join(ltRuntimeDir(t), strings.Repeat("d", 90))
	l := &Launcher{QEMU: ltQEMU, Platform: PlatformNone, RuntimeDir: long, Host: &HostFacts{Accel: AccelTCG}}
	_, err := l.Launch(context.Background(), ltVM("long"), LaunchHooks{})
	if err == nil || !strings.Contains(err.Error(), "longer than a unix socket allows") {
		t.Fatalf("%v", err)
	}
	ltAssertNothingLeft(t, l, "long")
}

// TestLaunchSNPHostFactsFromQEMU: without explicit host facts and with CPUID silent about
// SEV (as here), the launcher asks QEMU's query-sev-capabilities, which on a host with
// KVM but no SEV-SNP fails with the same one-line guidance; on a host without KVM the
// launcher gives that guidance before asking (a QEMU without KVM cannot answer).
// Nothing is left behind.
func TestLaunchSNPHostFactsFromQEMU(t *testing.T) {
	ltNeed(t)
	if _, err := os.Stat("/dev/sev"); err == nil {
		t.Skip("this host has /dev/sev: the no-SNP failure cannot be provoked here")
	}
	if _, _, _, ok := hostSEVBits(); ok {
		t.Skip("CPUID reports SEV here: the QEMU fallback is not used")
	}
	l := &Launcher{QEMU: ltQEMU, Platform: PlatformSEVSNP, RuntimeDir: ltRuntimeDir(t)}
	_, err := l.Launch(context.Background(), ltVM("snpcaps"), LaunchHooks{})
	if err == nil || !strings.Contains(err.Error(), "SEV-SNP is not available on this host") || !strings.Contains(err.Error(), "sev_snp=1") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("%v", err)
	}
	t.Log(err)
	ltAssertNothingLeft(t, l, "snpcaps")
}

// TestLaunchSameNameConcurrently: of two simultaneous launches of one name, exactly one
// runs; the other fails without touching the winner's runtime directory.
func TestLaunchSameNameConcurrently(t *testing.T) {
	ltNeed(t)
	l := &Launcher{QEMU: ltQEMU, Platform: PlatformNone, RuntimeDir: ltRuntimeDir(t)}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	type result struct {
		inst *Instance
		err  error
	}
	ch := make(chan result, 2)
	for range 2 {
		go func() {
			inst, err := l.Launch(ctx, ltVM("race"), LaunchHooks{})
			ch <- result{inst, err}
		}()
	}
	var ok []*Instance
	var errs []error
	for range 2 {
		r := <-ch
		if r.err != nil {
			errs = append(errs, r.err)
		} else {
			ok = append(ok, r.inst)
		}
	}
	for _, i := range ok {
		defer i.Kill()
	}
	if len(ok) != 1 || len(errs) != 1 {
		t.Fatalf("%d launched, errors %v; want exactly one of each", len(ok), errs)
	}
	t.Log(errs[0])
	if st, err := ok[0].QMP.QueryStatus(ctx); err != nil || !st.Running {
		t.Fatalf("winner: %+v %v", st, err)
	}
	if _, err := os.Stat(filepath.Join(ok[0].Dir, QMPSocketName)); err != nil {
		t.Fatalf("winner's QMP socket: %v", err)
	}
}

// TestSNPWithoutKVMSaysSNPUnavailable: on platform sev-snp, a host without a usable
// /dev/kvm (TCG) is refused before anything is sealed or started, with the SEV-SNP hint
// and as a host failure (no api kind: a 5xx), and QEMU's own "failed to initialize kvm"
// maps to the same hint; on platform none that QEMU message stays as it is.
func TestSNPWithoutKVMSaysSNPUnavailable(t *testing.T) {
	l := &Launcher{QEMU: ltQEMU, Platform: PlatformSEVSNP, RuntimeDir: ltRuntimeDir(t),
		Host: &HostFacts{CBitPos: 51, ReducedPhysBits: 1, Accel: AccelTCG}}
	_, _, err := l.Prepare(context.Background(), ltVM("nokvm"))
	if err == nil || !strings.Contains(err.Error(), "SEV-SNP is not available on this host (/dev/kvm") ||
		!strings.Contains(err.Error(), SNPHostHint) || errors.Is(err, api.ErrInvalid) {
		t.Errorf("Prepare on sev-snp without KVM: %v", err)
	}

	ex := ExitInfo{Known: true, Code: 1, StderrTail: []string{
		"qemu-system-x86_64: -accel kvm: Could not access KVM kernel module: No such file or directory",
		"qemu-system-x86_64: -accel kvm: failed to initialize kvm: No such file or directory",
	}}
	err = l.qemuExitError(ex)
	if want := "SEV-SNP is not available on this host (qemu: -accel kvm: failed to initialize kvm: No such file or directory): " + SNPHostHint; err == nil || err.Error() != want {
		t.Errorf("sev-snp: %v\nwant %s", err, want)
	}
	none := &Launcher{Platform: PlatformNone}
	if err := none.qemuExitError(ex); err == nil || strings.Contains(err.Error(), "SEV-SNP") || !strings.Contains(err.Error(), "failed to initialize kvm") {
		t.Errorf("platform none: %v", err)
	}
}
