package launch

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/snpd/snpd/config"
	"github.com/snpd/snpd/daemon/api"
	"github.com/snpd/snpd/qmp"
	"github.com/snpd/snpd/snp"
	"github.com/snpd/snpd/snp/uki"
)

// Launcher starts VMs: it seals the boot files, computes the expected digest, builds the
// argv, starts QEMU paused, verifies it over QMP and resumes it. The zero value is not
// usable; set QEMU, Platform and RuntimeDir. Safe for concurrent use by different VMs.
type Launcher struct {
	// QEMU is the absolute path of qemu-system-x86_64.
	QEMU string
	// Platform is PlatformSEVSNP ("" means that) or PlatformNone.
	Platform Platform
	// RuntimeDir holds per-VM directories <RuntimeDir>/vms/<name>/ (qmp.sock,
	// agent.sock, console.log, qemu.stderr), created 0700.
	RuntimeDir string
	// Host are the host facts; nil means DetectHost() at each launch, and on platform
	// "none" TCG instead of KVM when KVM cannot run the CPU model (see KVMRunsModel).
	Host *HostFacts
	// Placer puts each QEMU in a cgroup of its own with the VM's limits (nil: QEMU stays
	// in snpd's cgroup and the limits are not applied); see Placer.
	Placer Placer
	// NoPlacer says why there is no Placer, for the launch records ("" with a Placer).
	NoPlacer string
	// QMPTimeout bounds connecting to QEMU's monitor and each verification command;
	// 0 means 10 s.
	QMPTimeout time.Duration

	capsMu    sync.Mutex
	caps      *QEMUCaps
	kvmModels map[string]kvmModel

	busyMu sync.Mutex
	busy   map[string]bool // names with a launch in progress

	// seals (sealed memfds, at most 256 MiB) and measured (launch digests) let launches
	// from unchanged boot files skip copying and hashing them again (cache.go).
	seals    sealCache
	measured measureCache

	// perturb, when set (tests only), changes the verification expectation after it was
	// derived from the spec, to exercise the mismatch path against a real QEMU.
	perturb func(*expectation)
	// detect, when set (tests only), replaces DetectHost and HostProductLine's reading of
	// this host's CPUID and /dev/kvm; lineErr is why it has no product line.
	detect func() (h HostFacts, lineErr error)
}

// LaunchHooks let the caller take part in a launch. Nil hooks are skipped.
type LaunchHooks struct {
	// Admit is called after firmware/kernel/initrd are sealed and hashed and the
	// expected digest is computed, before QEMU starts: the host policy check. rec is
	// filled except for the process fields. An error aborts the launch (nothing started).
	Admit func(vm *config.VM, spec *Spec, rec *api.LaunchRecord) error
	// DiskOwner is whose rights the disks are opened with: each must be readable (and
	// writable unless read-only) by it, or the launch fails before QEMU starts. nil:
	// root's. The daemon passes the credentials of whoever defined the VM. DiskRoots
	// are the directories the host sanctions for disks (see OpenDisk).
	DiskOwner *api.Caller
	DiskRoots []string
	// Spawned is called right after QEMU started, paused, before its monitor is asked
	// anything: rec carries the process (PID, StartTicks, RuntimeDir, Argv). An error
	// kills QEMU and aborts.
	Spawned func(rec *api.LaunchRecord) error
	// BeforeCont is called after the paused machine was verified over QMP, before
	// `cont`: write the durable record here. An error kills QEMU and aborts.
	BeforeCont func(rec *api.LaunchRecord) error
}

func (l *Launcher) qmpTimeout() time.Duration {
	if l.QMPTimeout > 0 {
		return l.QMPTimeout
	}
	return 10 * time.Second
}

func (l *Launcher) platform() (Platform, error) { return ParsePlatform(string(l.Platform)) }

func (l *Launcher) host() HostFacts {
	if l.Host != nil {
		return *l.Host
	}
	if l.detect != nil {
		h, _ := l.detect()
		return h
	}
	return DetectHost()
}

// hostProductLineErr says why this host has no product line (HostProductLine).
func (l *Launcher) hostProductLineErr() error {
	if l.detect != nil {
		_, err := l.detect()
		return err
	}
	_, err := HostProductLine()
	if err == nil {
		err = errors.New("CPUID changed between two reads")
	}
	return err
}

// Caps probes the QEMU binary once and caches the result.
func (l *Launcher) Caps(ctx context.Context) (*QEMUCaps, error) {
	l.capsMu.Lock()
	defer l.capsMu.Unlock()
	if l.caps != nil {
		return l.caps, nil
	}
	c, err := ProbeQEMU(ctx, l.QEMU)
	if err != nil {
		return nil, err
	}
	l.caps = c
	return c, nil
}

// VMDir is the runtime directory of VM name.
func (l *Launcher) VMDir(name string) string { return filepath.Join(l.RuntimeDir, "vms", name) }

// sealed are the boot files of one launch.
type sealed struct{ fw, kernel, initrd *SealedFile }

func (s *sealed) Close() {
	s.fw.Close()
	s.kernel.Close()
	s.initrd.Close()
}

func (l *Launcher) sealBootFiles(vm *config.VM) (*sealed, error) {
	s := &sealed{}
	var err error
	if vm.Firmware == "" {
		return nil, errors.New("no firmware in the definition")
	}
	if s.fw, err = l.seals.Seal("firmware", vm.Firmware, MaxFirmwareSize); err != nil {
		return nil, err
	}
	if vm.Kernel != "" {
		if s.kernel, err = l.seals.Seal("kernel", vm.Kernel, MaxKernelSize); err != nil {
			s.Close()
			return nil, err
		}
	}
	if vm.Initrd != "" {
		if s.initrd, err = l.seals.Seal("initrd", vm.Initrd, MaxInitrdSize); err != nil {
			s.Close()
			return nil, err
		}
	}
	return s, nil
}

// Prepare does the launch steps that start nothing: seal the boot files, build the
// spec, compute the expected digest (and the ID block if the definition asks for one)
// and fill a record. The caller must Close the returned spec's files (Spec.Close).
func (l *Launcher) Prepare(ctx context.Context, vm *config.VM) (*Spec, *api.LaunchRecord, error) {
	platform, err := l.platform()
	if err != nil {
		return nil, nil, err
	}
	// Errors are classified for the API: what the definition asks for (its files, its
	// values, what they measure to) wraps api.ErrInvalid; what the host lacks or fails at
	// keeps no kind (a 5xx).
	host, accelNote, err := l.hostFor(ctx, platform, vm.CPUModel)
	if err != nil {
		return nil, nil, err
	}
	files, err := l.sealBootFiles(vm)
	if err != nil {
		return nil, nil, fmt.Errorf("sealing boot files: %w", err)
	}
	spec, err := NewSpec(vm, platform, host, files.fw, files.kernel, files.initrd)
	if err != nil {
		files.Close()
		return nil, nil, fmt.Errorf("%w: %w", err, api.ErrInvalid)
	}
	m, err := l.measured.Measure(spec)
	if err != nil {
		spec.Close()
		return nil, nil, fmt.Errorf("computing launch digest: %w: %w", err, api.ErrInvalid)
	}
	if err := buildIDBlock(spec, m); err != nil {
		spec.Close()
		return nil, nil, fmt.Errorf("building ID block: %w", err)
	}
	rec := newRecord(spec, m)
	rec.AccelNote = accelNote
	return spec, rec, nil
}

// hostFor returns the host facts for a launch. With Host unset on platform "none", KVM
// is used only when it can run the CPU model with all its features (a nested or limited
// host may not); otherwise TCG, and note says why. Results are cached per model. On
// platform "sev-snp" without KVM it fails with what to check on the host.
func (l *Launcher) hostFor(ctx context.Context, platform Platform, model string) (HostFacts, string, error) {
	h := l.host()
	if platform == PlatformSEVSNP && h.Accel != AccelKVM {
		// Without KVM there is no SEV-SNP: say what to check rather than let a QEMU
		// probe fail on "-accel kvm".
		return h, "", fmt.Errorf("SEV-SNP is not available on this host (/dev/kvm is missing or not usable): %s", SNPHostHint)
	}
	if l.Host == nil && platform == PlatformSEVSNP && h.CBitPos == 0 {
		// CPUID did not report SEV (e.g. a hypervisor hides leaf 0x8000001F): ask the
		// SEV firmware through QEMU, which also tells whether SEV works at all here.
		c, err := SEVCapabilities(ctx, l.QEMU)
		if err != nil {
			return h, "", err
		}
		h.CBitPos, h.ReducedPhysBits = uint32(c.CBitPos), uint32(c.ReducedPhysBits)
	}
	if l.Host == nil && platform == PlatformSEVSNP && h.ProductLine == "" {
		// Every export and verification names the chip's product line (the AMD roots a
		// verifier pins): never guess it from the guest's vCPU model.
		return h, "", fmt.Errorf("determining the host chip's product line: %w", l.hostProductLineErr())
	}
	if l.Host != nil || platform != PlatformNone || h.Accel != AccelKVM {
		return h, "", nil
	}
	if model == "" {
		model = config.DefaultCPUModel
	}
	l.capsMu.Lock()
	defer l.capsMu.Unlock()
	r, ok := l.kvmModels[model]
	if !ok {
		runs, reason, err := KVMRunsModel(ctx, l.QEMU, model)
		if err != nil {
			return h, "", err
		}
		r = kvmModel{runs, reason}
		if l.kvmModels == nil {
			l.kvmModels = map[string]kvmModel{}
		}
		l.kvmModels[model] = r
	}
	if r.runs {
		return h, "", nil
	}
	h.Accel = AccelTCG
	return h, "KVM cannot run cpu model " + model + " on this host (" + r.reason + "); using TCG", nil
}

type kvmModel struct {
	runs   bool
	reason string
}

// Close releases the sealed files of the spec (the memfds) and the disks' descriptors.
// Safe to call twice.
func (s *Spec) Close() {
	for _, f := range []**SealedFile{&s.Firmware, &s.Kernel, &s.Initrd} {
		if *f != nil && (*f).File != nil {
			(*f).File.Close()
		}
	}
	s.closeDisks()
}

func hexOrEmpty(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return hex.EncodeToString(b)
}

func sha256Hex(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func newRecord(s *Spec, m *measurement) *api.LaunchRecord {
	r := &api.LaunchRecord{
		Name:           s.Name,
		Platform:       string(s.Platform),
		Confidential:   s.Platform == PlatformSEVSNP,
		ExpectedDigest: hex.EncodeToString(m.Digest[:]),
		FirmwareSHA256: hex.EncodeToString(s.Firmware.SHA256[:]),
		FirmwareSHA384: hex.EncodeToString(s.Firmware.SHA384[:]),
		FirmwareSize:   s.Firmware.Size,
		Cmdline:        s.Cmdline,
		VCPUs:          s.VCPUs,
		CPUModel:       s.CPUModel,
		VCPUSig:        m.VCPUSig,
		MemoryMiB:      s.MemoryMiB,
		VMMType:        s.SNP.VMMType,
		Policy:         s.SNP.PolicyBits(),
		GuestFeatures:  s.SNP.GuestFeatures,
		HostData:       hexOrEmpty(s.SNP.HostData),
		IDBlockSHA256:  sha256Hex(s.SNP.IDBlock),
		IDAuthSHA256:   sha256Hex(s.SNP.IDAuth),
		AuthorKey:      s.SNP.AuthorKey,
		KernelHashes:   s.SNP.KernelHashes,
		Accel:          string(s.Accel),
	}
	if s.Platform == PlatformNone {
		r.Note = api.NotConfidential
	} else {
		r.CBitPos, r.ReducedPhysBits = s.SNP.CBitPos, s.SNP.ReducedPhysBits
	}
	if s.Platform == PlatformSEVSNP {
		r.ProductLine = s.ProductLine
	}
	if s.Kernel != nil {
		r.KernelSHA256 = hex.EncodeToString(s.Kernel.SHA256[:])
		r.KernelUKI = kernelUKI(s.Kernel)
	}
	if s.Initrd != nil {
		r.InitrdSHA256 = hex.EncodeToString(s.Initrd.SHA256[:])
	}
	r.IDKeyDigest, r.AuthorKeyDigest = RecordKeyDigests(s.SNP.IDBlock, s.SNP.IDAuth, s.SNP.AuthorKey)
	return r
}

// Launch starts vm: Prepare, Admit, runtime directory and sockets, QEMU paused,
// verification over QMP, BeforeCont, cont. On any error nothing is left behind: QEMU is
// killed, the runtime directory removed. On success the guest runs and QEMU outlives
// snpd.
func (l *Launcher) Launch(ctx context.Context, vm *config.VM, h LaunchHooks) (*Instance, error) {
	if vm == nil {
		return nil, errors.New("launching: no VM definition")
	}
	// Two launches of one name would fight over its runtime directory.
	l.busyMu.Lock()
	if l.busy[vm.Name] {
		l.busyMu.Unlock()
		return nil, fmt.Errorf("launching %s: another launch of it is in progress", vm.Name)
	}
	if l.busy == nil {
		l.busy = map[string]bool{}
	}
	l.busy[vm.Name] = true
	l.busyMu.Unlock()
	defer func() {
		l.busyMu.Lock()
		delete(l.busy, vm.Name)
		l.busyMu.Unlock()
	}()
	tr, t0 := traceFrom(ctx), time.Now()
	spec, rec, err := l.Prepare(ctx, vm)
	tr.done(StepMeasure, t0, err)
	if err != nil {
		return nil, fmt.Errorf("launching %s: %w", vm.Name, err)
	}
	defer spec.Close()
	t0 = time.Now()
	caps, err := l.Caps(ctx)
	if err == nil && spec.Platform == PlatformSEVSNP {
		err = caps.CheckSNP()
	}
	tr.done(StepProbe, t0, err)
	if err != nil {
		return nil, fmt.Errorf("launching %s: %w", vm.Name, err)
	}
	rec.QEMUPath, rec.QEMUVersion = l.QEMU, caps.Version.String()
	if caps.Version.Package != "" {
		rec.QEMUVersion += " (" + caps.Version.Package + ")"
	}
	if err := OpenDisks(spec, h.DiskOwner, h.DiskRoots...); err != nil {
		return nil, fmt.Errorf("launching %s: %w", vm.Name, err)
	}
	if h.Admit != nil {
		t0 = time.Now()
		err := h.Admit(vm, spec, rec)
		tr.done(StepAdmit, t0, err)
		if err != nil {
			return nil, fmt.Errorf("launching %s: %w", vm.Name, err)
		}
	}
	inst, err := l.start(ctx, spec, rec, h)
	if err != nil {
		return nil, fmt.Errorf("launching %s: %w", vm.Name, err)
	}
	return inst, nil
}

// start runs the steps that create host state; on error it undoes all of them.
func (l *Launcher) start(ctx context.Context, spec *Spec, rec *api.LaunchRecord, h LaunchHooks) (_ *Instance, err error) {
	tr, t0, step := traceFrom(ctx), time.Now(), StepSpawn
	defer func() {
		if err != nil {
			tr.done(step, t0, err)
		}
	}()
	dir := l.VMDir(spec.Name)
	if err := l.makeVMDir(dir); err != nil {
		return nil, err
	}
	var inst *Instance
	defer func() {
		if err != nil {
			if inst != nil {
				if inst.QMP != nil {
					inst.QMP.Close()
				}
				inst.Kill()
			}
			os.RemoveAll(dir)
		}
	}()
	spec.Runtime.Dir = dir
	qmpL, err := listenUnixFile(filepath.Join(dir, QMPSocketName))
	if err != nil {
		return nil, err
	}
	defer qmpL.Close()
	spec.Runtime.QMP = qmpL
	if spec.AgentSerial {
		agentL, err := listenUnixFile(filepath.Join(dir, AgentSocketName))
		if err != nil {
			return nil, err
		}
		defer agentL.Close()
		spec.Runtime.Agent = agentL
	}
	args, extra := BuildArgv(spec)
	rec.Argv = append([]string{l.QEMU}, args...)
	rec.RuntimeDir = dir
	rec.StartedAt = time.Now().UTC()
	inst, err = spawnQEMU(l.QEMU, args, extra, filepath.Join(dir, StderrName))
	if err != nil {
		return nil, err
	}
	inst.Name, inst.Dir, inst.Record = spec.Name, dir, rec
	rec.PID, rec.StartTicks = inst.PID, inst.StartTicks
	if h.Spawned != nil {
		if err := h.Spawned(rec); err != nil {
			return nil, fmt.Errorf("recording the qemu process: %w", err)
		}
	}
	// Into its own cgroup while it is paused before its first instruction (-S), and
	// still snpd's unreaped child, so the pid cannot name another process.
	if l.Placer != nil {
		if rec.Cgroup, err = l.Placer.Place(ctx, spec.Name, inst.PID, spec.Limits); err != nil {
			return nil, fmt.Errorf("placing qemu in its cgroup: %w", err)
		}
	} else if l.NoPlacer != "" {
		rec.Cgroup = "snpd's own: " + l.NoPlacer
	}

	inst.QMP, err = l.connect(ctx, inst, filepath.Join(dir, QMPSocketName))
	if err != nil {
		return nil, err
	}
	// The monitor answered, so the process is QEMU itself now (a wrapper script named
	// as qemu has exec'd it): this is the executable reattach will check.
	if exe, _, err := ProcExe(inst.PID); err == nil {
		rec.QEMUExe = exe
	}
	tr.done(step, t0, nil)
	t0, step = time.Now(), StepVerify
	exp := expectFromSpec(spec)
	if l.perturb != nil {
		l.perturb(&exp)
	}
	if err := verify(ctx, inst.QMP, exp, l.qmpTimeout()); err != nil {
		return nil, err
	}
	tr.done(step, t0, nil)
	if h.BeforeCont != nil {
		t0, step = time.Now(), StepRecord
		if err := h.BeforeCont(rec); err != nil {
			return nil, fmt.Errorf("recording launch: %w", err)
		}
		tr.done(step, t0, nil)
	}
	t0, step = time.Now(), StepCont
	cctx, cancel := context.WithTimeout(ctx, l.qmpTimeout())
	defer cancel()
	if err := inst.QMP.Cont(cctx); err != nil {
		return nil, fmt.Errorf("resuming guest: %w%s", err, exitHint(inst))
	}
	st, err := inst.QMP.QueryStatus(cctx)
	if err != nil {
		return nil, fmt.Errorf("checking guest runs: %w%s", err, exitHint(inst))
	}
	if !st.Running {
		return nil, fmt.Errorf("guest is %q after cont, not running", st.Status)
	}
	tr.done(step, t0, nil)
	return inst, nil
}

// makeVMDir creates dir (0700) and its parents. A leftover directory whose QMP socket
// answers nobody is removed first; one with a live QEMU is an error.
func (l *Launcher) makeVMDir(dir string) error {
	if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
		return fmt.Errorf("creating runtime directory: %w", err)
	}
	err := os.Mkdir(dir, 0o700)
	if errors.Is(err, os.ErrExist) {
		c, derr := net.DialTimeout("unix", filepath.Join(dir, QMPSocketName), 200*time.Millisecond)
		if derr == nil {
			c.Close()
			return fmt.Errorf("runtime directory %s belongs to a running QEMU", dir)
		}
		if err := os.RemoveAll(dir); err != nil {
			return fmt.Errorf("removing stale runtime directory: %w", err)
		}
		err = os.Mkdir(dir, 0o700)
	}
	if err != nil {
		return fmt.Errorf("creating runtime directory: %w", err)
	}
	return nil
}

// listenUnixFile creates a listening unix socket at path (0600) and returns it as a
// file for QEMU to inherit. The socket file stays when the returned file is closed.
func listenUnixFile(path string) (*os.File, error) {
	// sun_path holds 108 bytes including the terminating NUL.
	if len(path) >= 108 {
		return nil, fmt.Errorf("creating socket: path %s is %d bytes, longer than a unix socket allows (107); use a shorter runtime_dir", path, len(path))
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("creating socket: %w", err)
	}
	l.SetUnlinkOnClose(false)
	defer l.Close()
	if err := os.Chmod(path, 0o600); err != nil {
		return nil, fmt.Errorf("restricting socket: %w", err)
	}
	f, err := l.File()
	if err != nil {
		return nil, fmt.Errorf("creating socket: %w", err)
	}
	return f, nil
}

// connect dials QEMU's monitor, giving up early if QEMU exits (the usual reason being an
// argument or host problem QEMU printed on stderr).
func (l *Launcher) connect(ctx context.Context, inst *Instance, path string) (*qmp.Client, error) {
	cctx, cancel := context.WithTimeout(ctx, l.qmpTimeout())
	defer cancel()
	go func() {
		select {
		case <-inst.Done():
			cancel()
		case <-cctx.Done():
		}
	}()
	c, err := qmp.Dial(cctx, path, nil)
	if err == nil {
		return c, nil
	}
	select {
	case <-inst.Done():
		return nil, l.qemuExitError(inst.Exit())
	case <-time.After(200 * time.Millisecond):
		select {
		case <-inst.Done():
			return nil, l.qemuExitError(inst.Exit())
		default:
		}
	}
	return nil, fmt.Errorf("connecting to QEMU's monitor: %w", err)
}

// qemuExitError is qemuExitError for this launcher's platform: on sev-snp, QEMU failing
// to initialize KVM also means SEV-SNP is not available here.
func (l *Launcher) qemuExitError(ex ExitInfo) error {
	if p, _ := l.platform(); p == PlatformSEVSNP {
		if line, ok := kvmFailure(ex); ok {
			return snpUnavailable(line)
		}
	}
	return qemuExitError(ex)
}

// kvmFailure finds QEMU's line saying KVM could not be used ("Could not access KVM
// kernel module: No such file or directory", "failed to initialize kvm: ...").
func kvmFailure(ex ExitInfo) (string, bool) {
	for i := len(ex.StderrTail) - 1; i >= 0; i-- {
		l := ex.StderrTail[i]
		if strings.Contains(l, "failed to initialize kvm") || strings.Contains(l, "Could not access KVM kernel module") {
			return stripQEMUPrefix(strings.TrimSpace(l)), true
		}
	}
	return "", false
}

// snpUnavailable is the one line a user sees when SEV-SNP does not work on this host,
// with QEMU's own words.
func snpUnavailable(qemuLine string) error {
	return fmt.Errorf("SEV-SNP is not available on this host (qemu: %s): %s", qemuLine, SNPHostHint)
}

// SNPHostHint is what to check on a host where SEV-SNP does not work.
const SNPHostHint = "check that /dev/kvm and /dev/sev exist, kvm_amd is loaded with sev_snp=1 (/sys/module/kvm_amd/parameters/sev_snp) and the host kernel is >= 6.11"

// qemuExitError turns an early QEMU exit into one line, with what to check on the host
// when SEV-SNP is unavailable.
func qemuExitError(ex ExitInfo) error {
	last := ""
	for i := len(ex.StderrTail) - 1; i >= 0; i-- {
		if s := strings.TrimSpace(ex.StderrTail[i]); s != "" {
			last = s
			break
		}
	}
	for _, l := range ex.StderrTail {
		// QEMU 10: "SEV is not enabled in KVM", "-accel kvm: vm-type SEV-SNP not supported
		// by KVM", "sev_kvm_init: Failed to open /dev/sev ...".
		if strings.Contains(l, "SEV") && (strings.Contains(l, "KVM") || strings.Contains(l, "/dev/sev")) ||
			strings.Contains(l, "/dev/sev") {
			return snpUnavailable(stripQEMUPrefix(strings.TrimSpace(l)))
		}
	}
	if last == "" {
		return fmt.Errorf("qemu exited at start (%s) with no message", ex)
	}
	return fmt.Errorf("qemu exited at start (%s): %s", ex, stripQEMUPrefix(last))
}

// stripQEMUPrefix removes "qemu-system-x86_64: " and a -msg timestamp prefix.
func stripQEMUPrefix(s string) string {
	if i := strings.Index(s, "qemu-system-x86_64: "); i >= 0 {
		return s[i+len("qemu-system-x86_64: "):]
	}
	return s
}

func exitHint(inst *Instance) string {
	select {
	case <-inst.Done():
		return " (" + qemuExitError(inst.Exit()).Error() + ")"
	default:
		return ""
	}
}

// expectation is what the paused machine must look like, derived from the spec.
type expectation struct {
	VCPUs       int
	MemoryBytes uint64
	PCI         map[PCIDevice]int
	// SNP is nil on platform none (then query-sev must fail: not a SEV guest).
	SNP *snpExpect
}

type snpExpect struct {
	Policy uint64
	// Props are the expected qom-get values on /objects/<SNPObjectID>.
	Props map[string]any
}

func expectFromSpec(s *Spec) expectation {
	e := expectation{VCPUs: s.VCPUs, MemoryBytes: s.MemoryMiB << 20, PCI: s.ExpectedPCIDevices()}
	if s.Platform == PlatformSEVSNP {
		e.SNP = &snpExpect{Policy: s.SNP.PolicyBits(), Props: snpProps(s)}
	}
	return e
}

// snpProps are the sev-snp-guest property values QEMU must report for the spec, as
// qom-get returns them (numbers as float64 from JSON, binary properties base64).
func snpProps(s *Spec) map[string]any {
	b64 := func(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
	return map[string]any{
		"policy":                    float64(s.SNP.PolicyBits()),
		"cbitpos":                   float64(s.SNP.CBitPos),
		"reduced-phys-bits":         float64(s.SNP.ReducedPhysBits),
		"id-block":                  b64(s.SNP.IDBlock),
		"id-auth":                   b64(s.SNP.IDAuth),
		"host-data":                 b64(s.SNP.HostData),
		"guest-visible-workarounds": b64(s.SNP.GuestVisibleWorkarounds),
		"author-key-enabled":        s.SNP.AuthorKey,
		"vcek-disabled":             s.SNP.VCEKDisabled,
		"kernel-hashes":             s.SNP.KernelHashes,
	}
}

// q35Base are the PCI functions q35 always has with -nodefaults: host bridge, LPC/ISA
// bridge, AHCI controller, SMBus controller.
var q35Base = map[PCIDevice]int{
	{0x8086, 0x29c0}: 1,
	{0x8086, 0x2918}: 1,
	{0x8086, 0x2922}: 1,
	{0x8086, 0x2930}: 1,
}

// verify checks the paused machine against exp and returns one error listing every
// difference.
func verify(ctx context.Context, c *qmp.Client, exp expectation, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var diffs []Mismatch
	add := func(check, format string, a ...any) {
		diffs = append(diffs, Mismatch{Check: check, Detail: fmt.Sprintf(format, a...)})
	}

	// All queries are sent at once (the client pipelines them; QEMU answers in order):
	// one round trip's latency instead of one per command. Evaluation below is in a
	// fixed order so the report is deterministic.
	var (
		wg              sync.WaitGroup
		st              qmp.StatusInfo
		sev             qmp.SevInfo
		cpus            []qmp.CPUInfoFast
		mem             qmp.MemoryInfo
		buses           []qmp.PCIInfo
		objDiffs        []string
		stErr, sevErr   error
		cpusErr, memErr error
		pciErr          error
	)
	wg.Go(func() { st, stErr = c.QueryStatus(ctx) })
	wg.Go(func() { sev, sevErr = c.QuerySEV(ctx) })
	wg.Go(func() { cpus, cpusErr = c.QueryCPUsFast(ctx) })
	wg.Go(func() { mem, memErr = c.QueryMemorySizeSummary(ctx) })
	wg.Go(func() { buses, pciErr = c.QueryPCI(ctx) })
	if exp.SNP != nil {
		wg.Go(func() { objDiffs = verifySNPObject(ctx, c, exp.SNP.Props) })
	}
	wg.Wait()

	if stErr != nil {
		return fmt.Errorf("verifying machine: query-status: %w", stErr)
	}
	if st.Running || (st.Status != qmp.RunStatePrelaunch && st.Status != qmp.RunStatePaused) {
		add("status", "status is %q (running %v), want prelaunch or paused", st.Status, st.Running)
	}
	var qe *qmp.Error
	switch {
	case exp.SNP == nil && sevErr == nil && sev.Enabled:
		add("sev", "query-sev reports a %s guest on platform none", sev.SevType)
	case exp.SNP == nil:
	case errors.As(sevErr, &qe):
		add("sev", "query-sev: %s, want sev-type sev-snp", qe.Desc)
	case sevErr != nil:
		return fmt.Errorf("verifying machine: query-sev: %w", sevErr)
	default:
		if sev.SevType != qmp.SevTypeSNP {
			add("sev", "sev-type is %q, want %q", sev.SevType, qmp.SevTypeSNP)
		}
		if sev.SNPPolicy == nil {
			add("sev", "snp-policy missing, want %#x", exp.SNP.Policy)
		} else if *sev.SNPPolicy != exp.SNP.Policy {
			add("sev", "snp-policy is %#x, want %#x", *sev.SNPPolicy, exp.SNP.Policy)
		}
	}
	for _, d := range objDiffs {
		add("snp-object", "%s", d)
	}
	if cpusErr != nil {
		return fmt.Errorf("verifying machine: query-cpus-fast: %w", cpusErr)
	}
	if len(cpus) != exp.VCPUs {
		add("vcpus", "vCPUs: %d, want %d", len(cpus), exp.VCPUs)
	}
	if memErr != nil {
		return fmt.Errorf("verifying machine: query-memory-size-summary: %w", memErr)
	}
	if mem.BaseMemory != exp.MemoryBytes {
		add("memory", "base memory: %d bytes, want %d", mem.BaseMemory, exp.MemoryBytes)
	}
	if mem.PluggedMemory != nil && *mem.PluggedMemory != 0 {
		add("memory", "plugged memory: %d bytes, want 0", *mem.PluggedMemory)
	}
	if pciErr != nil {
		return fmt.Errorf("verifying machine: query-pci: %w", pciErr)
	}
	for _, d := range comparePCI(buses, exp.PCI) {
		add("pci", "%s", d)
	}
	if len(diffs) > 0 {
		return &MismatchError{Diffs: diffs}
	}
	return nil
}

// verifySNPObject reads every expected property of the sev-snp-guest object with
// qom-get (all sent at once) and lists the differences, sorted by property name.
func verifySNPObject(ctx context.Context, c *qmp.Client, props map[string]any) []string {
	names := make([]string, 0, len(props))
	for n := range props {
		names = append(names, n)
	}
	sort.Strings(names)
	got := make([]any, len(names))
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, n := range names {
		wg.Go(func() { errs[i] = c.QOMGet(ctx, "/objects/"+SNPObjectID, n, &got[i]) })
	}
	wg.Wait()
	var diffs []string
	for i, n := range names {
		if errs[i] != nil {
			diffs = append(diffs, fmt.Sprintf("%s.%s: %v", SNPObjectID, n, errs[i]))
			continue
		}
		g := got[i]
		if g == nil {
			g = "" // unset string properties read back as null
		}
		if want := props[n]; g != want {
			diffs = append(diffs, fmt.Sprintf("%s.%s is %v, want %v", SNPObjectID, n, g, want))
		}
	}
	return diffs
}

// comparePCI checks that the machine's PCI functions are exactly the q35 base set plus
// want (as multisets of vendor:device).
func comparePCI(buses []qmp.PCIInfo, want map[PCIDevice]int) []string {
	got := map[PCIDevice]int{}
	var walk func([]qmp.PCIDeviceInfo)
	walk = func(devs []qmp.PCIDeviceInfo) {
		for _, d := range devs {
			got[PCIDevice{uint16(d.ID.Vendor), uint16(d.ID.Device)}]++
			if d.PCIBridge != nil {
				walk(d.PCIBridge.Devices)
			}
		}
	}
	for _, b := range buses {
		walk(b.Devices)
	}
	all := map[PCIDevice]int{}
	for k, v := range q35Base {
		all[k] += v
	}
	for k, v := range want {
		all[k] += v
	}
	keys := map[PCIDevice]bool{}
	for k := range got {
		keys[k] = true
	}
	for k := range all {
		keys[k] = true
	}
	sorted := make([]PCIDevice, 0, len(keys))
	for k := range keys {
		sorted = append(sorted, k)
	}
	sort.Slice(sorted, func(i, j int) bool {
		if sorted[i].Vendor != sorted[j].Vendor {
			return sorted[i].Vendor < sorted[j].Vendor
		}
		return sorted[i].Device < sorted[j].Device
	})
	var diffs []string
	for _, k := range sorted {
		if got[k] != all[k] {
			diffs = append(diffs, fmt.Sprintf("PCI %04x:%04x: %d present, want %d", k.Vendor, k.Device, got[k], all[k]))
		}
	}
	return diffs
}

// RecordKeyDigests returns the ID and author key digests (hex) the AMD-SP will report for
// an ID block and ID auth pair, for the launch record; empty strings when there is no ID
// block, or when the pair does not verify (the record then fails attestation closed).
func RecordKeyDigests(block, auth []byte, authorKey bool) (idKey, author string) {
	if len(block) == 0 || len(auth) == 0 {
		return "", ""
	}
	info, err := snp.VerifyIDAuth(block, auth)
	if err != nil {
		return "", ""
	}
	idKey = hex.EncodeToString(info.IDKeyDigest[:])
	if authorKey && info.HasAuthorKey {
		author = hex.EncodeToString(info.AuthorKeyDigest[:])
	}
	return idKey, author
}

// kernelUKI describes the sealed kernel when it is a unified kernel image (snp/uki reads
// the same sealed bytes QEMU loads); nil for any other kernel. A kernel whose PE headers
// do not parse is still launched: it is measured as the bytes it is.
func kernelUKI(k *SealedFile) *api.UKIInfo {
	sum, err := uki.Describe(k, k.Size)
	if err != nil || !sum.UKI {
		return nil
	}
	info := &api.UKIInfo{Cmdline: sum.Cmdline, Uname: sum.Uname, OSRelease: sum.OSRelease, Stub: sum.Stub}
	for _, sec := range sum.Sections {
		info.Sections = append(info.Sections, api.UKISection{Name: sec.Name, Size: sec.Size, SHA256: sec.SHA256})
	}
	return info
}
