package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/snpd/snpd/config"
	"github.com/snpd/snpd/daemon/api"
	"github.com/snpd/snpd/daemon/launch"
	"github.com/snpd/snpd/daemon/store"
)

// vmProcess is a QEMU process the Manager watches: one this snpd launched (its child,
// whose exit status can be waited for) or one it reattached to after a restart.
type vmProcess interface {
	// PID is QEMU's process id.
	PID() int
	// Done is closed when the process has exited.
	Done() <-chan struct{}
	// Exit is how the process ended; valid after Done is closed.
	Exit() api.ExitStatus
	// Stop asks the guest to power off (ACPI) and kills QEMU after grace; it returns
	// once the process has exited or ctx ends.
	Stop(ctx context.Context, grace time.Duration) error
	// Kill sends SIGKILL.
	Kill() error
}

// startHooks are the Manager's part in a launch (see launch.LaunchHooks).
type startHooks struct {
	// Spawned is called with the launch record as far as it is known right after QEMU
	// started (pid, start time, runtime directory), before anything else is asked of
	// it; an error aborts the launch (QEMU is killed). Implementations may skip it.
	Spawned func(*api.LaunchRecord) error
	// BeforeCont is called with the launch record once QEMU runs paused and has been
	// checked, before the first cont; an error from it aborts the launch (QEMU is
	// killed).
	BeforeCont func(*api.LaunchRecord) error
	// DiskOwner is whose rights the disks are opened with (nil: root's): whoever
	// defined the VM; DiskRoots the directories the host sanctions for disks.
	DiskOwner *api.Caller
	DiskRoots []string
}

// startFunc launches vm, calling h on the way. The returned process is running
// (resumed).
type startFunc func(ctx context.Context, vm *config.VM, h startHooks) (vmProcess, error)

// Manager owns the VMs: definitions and runs in the Store, the live QEMU processes, and
// the stream of state changes. All methods are safe for concurrent use.
type Manager struct {
	store       *store.Store
	start       startFunc
	log         *slog.Logger
	runtimeDir  string
	imageDir    string
	qemu        string
	stopTimeout time.Duration
	// validate checks a decoded definition (defaults applied) before it is stored.
	validate func(*config.VM) error
	// policy is the host policy (nil: none); platform the configured platform.
	policy   *config.Policy
	platform string
	// prepare measures a VM without starting it (libvirt registrations).
	prepare func(context.Context, *config.VM) (*api.LaunchRecord, error)

	mu   sync.Mutex
	live map[string]*liveVM
	subs map[chan api.Event]string
	seq  uint64
	// closed is set by Close: no more starts or restarts.
	closed bool
	// crashRestarts counts on-crash restarts per VM within restartWindow.
	crashRestarts map[string][]time.Time
	// onEvent, when set (observe.go), sees every published event, under mu.
	onEvent func(api.Event)
}

// liveVM is a VM with a QEMU process (starting, running or stopping), or reserved for
// a start in progress (proc nil).
type liveVM struct {
	run  api.Run
	proc vmProcess
	// stopRequested is set by Stop/Kill: the exit is then "stopped", not "crashed".
	stopRequested bool
	// reattaching is set while a VM found with a QEMU at start is being adopted
	// (Reattach); proc is nil until then.
	reattaching bool
	restart     string
	// finished is closed once the exit has been recorded.
	finished chan struct{}
	// writeMu orders this VM's store writes (see persist).
	writeMu sync.Mutex
}

const (
	restartWindow   = 10 * time.Minute
	restartMaxTimes = 5
)

// ManagerOptions configure NewManager.
type ManagerOptions struct {
	Store *store.Store
	// Start launches a VM (see startFunc).
	Start startFunc
	// Validate checks a definition before it is stored (nil: none beyond the name).
	Validate func(*config.VM) error
	// Policy is the host policy libvirt domains are checked against (nil: none);
	// Platform the configured platform ("sev-snp" or "none").
	Policy   *config.Policy
	Platform string
	// Prepare measures a VM without starting it (nil: libvirt registration unavailable).
	Prepare func(context.Context, *config.VM) (*api.LaunchRecord, error)
	// RuntimeDir is snpd's runtime directory (per-VM dirs are RuntimeDir/vms/<name>).
	RuntimeDir string
	// ImageDir is snpd's image directory (disks are always allowed there; libvirt
	// domains are checked with it).
	ImageDir string
	// QEMU is the configured QEMU binary path (reattach checks /proc/PID/exe against it).
	QEMU string
	// StopTimeout is the default graceful-stop timeout.
	StopTimeout time.Duration
	// Log receives state changes and errors (nil: discarded).
	Log *slog.Logger
}

// NewManager returns a Manager. Call Reattach before serving requests.
func NewManager(o ManagerOptions) *Manager {
	log := o.Log
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &Manager{
		store: o.Store, start: o.Start, log: log, runtimeDir: o.RuntimeDir, imageDir: o.ImageDir, qemu: o.QEMU,
		stopTimeout: o.StopTimeout, validate: o.Validate,
		policy: o.Policy, platform: o.Platform, prepare: o.Prepare,
		live: map[string]*liveVM{}, subs: map[chan api.Event]string{},
		crashRestarts: map[string][]time.Time{},
	}
}

// vmRuntimeDir is the per-VM runtime directory.
func (m *Manager) vmRuntimeDir(name string) string {
	return filepath.Join(m.runtimeDir, "vms", name)
}

// transitionLocked moves run to state at now in memory and publishes the event; the
// caller persists it (persist, or Store.PutRun for a run not live) after releasing m.mu,
// so no request waits on another VM's fsync. Callers hold m.mu.
func (m *Manager) transitionLocked(name string, run *api.Run, state api.State, reason string) {
	now := time.Now().UTC()
	run.State = state
	run.Transitions = append(run.Transitions, api.Transition{State: state, At: now, Reason: reason})
	m.publishLocked(api.Event{VM: name, State: state, At: now, PID: run.PID, Reason: reason})
	m.log.Info("vm state", "vm", name, "state", state, "pid", run.PID, "reason", reason)
}

// persist writes a snapshot of l's run to the store; called without m.mu. l.writeMu
// orders the writes of one VM: the snapshot is taken under it, so the last write always
// carries the newest state.
func (m *Manager) persist(name string, l *liveVM) {
	l.writeMu.Lock()
	defer l.writeMu.Unlock()
	m.mu.Lock()
	snap := l.run
	snap.Transitions = slices.Clone(l.run.Transitions)
	m.mu.Unlock()
	if err := m.store.PutRun(name, &snap); err != nil {
		m.log.Error("recording vm state", "vm", name, "state", snap.State, "err", err)
	}
}

// Subscribe returns a channel of state changes (of VM vm, or all if empty) and a cancel
// function that must be called to release it. Slow readers lose events (buffer 256).
func (m *Manager) Subscribe(vm string) (<-chan api.Event, func()) {
	ch := make(chan api.Event, 256)
	m.mu.Lock()
	m.subs[ch] = vm
	m.mu.Unlock()
	return ch, func() {
		m.mu.Lock()
		delete(m.subs, ch)
		m.mu.Unlock()
	}
}

// Define decodes req's TOML strictly, validates it and stores it. owner is who asks
// (nil: snpd itself, as root): every disk must be one owner may open (read, and write
// unless read-only), checked now and at every start.
func (m *Manager) Define(req api.DefineRequest, owner *api.Caller) (*api.VMInfo, error) {
	file := req.File
	if file == "" {
		file = "definition"
	}
	var vm config.VM
	if err := config.DecodeStrict(filepath.Base(file), []byte(req.TOML), &vm); err != nil {
		return nil, fmt.Errorf("decoding vm definition: %w: %w", err, api.ErrInvalid)
	}
	if err := api.ValidName(vm.Name); err != nil {
		return nil, err
	}
	if req.Dir != "" {
		if !filepath.IsAbs(req.Dir) {
			return nil, fmt.Errorf("dir %q: must be absolute: %w", req.Dir, api.ErrInvalid)
		}
		vm.ResolvePaths(filepath.Clean(req.Dir))
	}
	if m.validate != nil {
		if err := m.validate(&vm); err != nil {
			return nil, fmt.Errorf("validating vm %q: %w: %w", vm.Name, err, api.ErrInvalid)
		}
	}
	for i, d := range vm.Disks {
		files, _, err := launch.OpenDisk(d.Path, !d.ReadOnly, owner, m.diskRoots()...)
		for _, f := range files {
			f.Close()
		}
		if err != nil {
			return nil, fmt.Errorf("validating vm %q: disk %d: %w", vm.Name, i, err)
		}
	}
	def, err := json.Marshal(&vm)
	if err != nil {
		return nil, fmt.Errorf("encoding vm %q: %w", vm.Name, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.live[vm.Name]; ok && req.Replace {
		return nil, fmt.Errorf("vm %q is running; stop it before redefining: %w", vm.Name, api.ErrConflict)
	}
	sv := store.StoredVM{Name: vm.Name, TOML: req.TOML, File: req.File, Definition: def, DefinedAt: time.Now().UTC(), DefinedBy: owner}
	if err := m.store.PutVM(sv, req.Replace); err != nil {
		return nil, err
	}
	return m.info(vm.Name, nil)
}

// diskRoots are the directories the host sanctions for disks: the image directory and
// the policy's devices.disk_dirs (see launch.OpenDisk).
func (m *Manager) diskRoots() []string {
	var roots []string
	if m.imageDir != "" {
		roots = append(roots, m.imageDir)
	}
	if m.policy != nil {
		roots = append(roots, m.policy.Devices.DiskDirs...)
	}
	return roots
}

// Undefine removes a VM that has no QEMU process, with its run history.
func (m *Manager) Undefine(name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.live[name]; ok {
		return fmt.Errorf("vm %q is running; stop it first: %w", name, api.ErrConflict)
	}
	return m.store.DeleteVM(name)
}

// summary is a VM's list row from its definition (name, when defined, the fields shown)
// and its newest run (nil: never started).
func summary(name string, definedAt time.Time, def store.DefFields, run *api.Run, starts int) api.VMSummary {
	s := api.VMSummary{Name: name, State: api.StateStopped, Since: definedAt, Starts: starts,
		VCPUs: def.VCPUs, MemoryMiB: def.MemoryMiB, Restart: def.Restart}
	if run != nil && run.State != "" {
		s.State = run.State
		if n := len(run.Transitions); n > 0 {
			s.Since = run.Transitions[n-1].At
		}
		if !run.State.Terminal() {
			s.PID = run.PID
		}
	}
	return s
}

// decodeDefFields reads the summary fields of a stored definition (config.VM's JSON
// encoding); a definition that does not decode shows zeros.
func decodeDefFields(def json.RawMessage) store.DefFields {
	var f store.DefFields
	_ = json.Unmarshal(def, &f)
	return f
}

// List returns every VM with its state, sorted by name.
func (m *Manager) List() ([]api.VMSummary, error) {
	// Snapshot the live runs, then read the store without m.mu (one read transaction):
	// a list never waits on a launch or an fsync.
	live := map[string]api.Run{}
	m.mu.Lock()
	for name, l := range m.live {
		if l.run.Seq != 0 {
			r := l.run
			if n := len(r.Transitions); n > 0 {
				r.Transitions = r.Transitions[n-1:] // summary reads only the newest
			}
			live[name] = r
		}
	}
	m.mu.Unlock()
	rows, err := m.store.ListRows(func(name string) bool { _, ok := live[name]; return ok })
	if err != nil {
		return nil, err
	}
	out := make([]api.VMSummary, 0, len(rows))
	for _, row := range rows {
		if r, ok := live[row.Name]; ok {
			out = append(out, summary(row.Name, row.DefinedAt, row.DefFields, &r, r.Seq))
			continue
		}
		out = append(out, summary(row.Name, row.DefinedAt, row.DefFields, row.Last, row.Starts))
	}
	return out, nil
}

// Get returns one VM with its definition and last run.
func (m *Manager) Get(name string) (*api.VMInfo, error) {
	var live *api.Run
	m.mu.Lock()
	if l, ok := m.live[name]; ok && l.run.Seq != 0 {
		r := l.run
		r.Transitions = slices.Clone(l.run.Transitions)
		live = &r
	}
	m.mu.Unlock()
	return m.info(name, live)
}

// info reads name's definition and newest run from the store; live (if non-nil) is the
// in-memory run of a live VM, newer than the store's.
func (m *Manager) info(name string, live *api.Run) (*api.VMInfo, error) {
	sv, err := m.store.GetVM(name)
	if err != nil {
		return nil, err
	}
	last, starts, err := m.store.LastRun(name)
	if err != nil {
		return nil, err
	}
	if live != nil {
		last, starts = live, max(starts, live.Seq)
	}
	return &api.VMInfo{VMSummary: summary(sv.Name, sv.DefinedAt, decodeDefFields(sv.Definition), last, starts), DefinedAt: sv.DefinedAt, TOML: sv.TOML, Definition: sv.Definition, Last: last}, nil
}

// Runs returns up to limit of a VM's newest runs (0: all), oldest first.
func (m *Manager) Runs(name string, limit int) ([]api.Run, error) {
	if _, err := m.store.GetVM(name); err != nil {
		return nil, err
	}
	runs, _, err := m.store.Runs(name, limit)
	return runs, err
}

// Counts returns how many VMs are in each state.
func (m *Manager) Counts() (map[api.State]int, error) {
	l, err := m.List()
	if err != nil {
		return nil, err
	}
	c := map[api.State]int{}
	for _, v := range l {
		c[v.State]++
	}
	return c, nil
}

// Start launches a defined VM and returns once it runs or the start failed (the failure
// is recorded as a failed run).
func (m *Manager) Start(ctx context.Context, name string) (*api.VMInfo, error) {
	sv, err := m.store.GetVM(name)
	if err != nil {
		return nil, err
	}
	var vm config.VM
	if err := json.Unmarshal(sv.Definition, &vm); err != nil {
		return nil, fmt.Errorf("decoding stored definition of %q: %w", name, err)
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil, fmt.Errorf("snpd is shutting down: %w", api.ErrUnavailable)
	}
	if l, ok := m.live[name]; ok {
		m.mu.Unlock()
		if l.reattaching {
			return nil, fmt.Errorf("vm %q is being reattached after an snpd restart (pid %d): %w", name, l.run.PID, api.ErrConflict)
		}
		return nil, fmt.Errorf("vm %q is already %s (pid %d): %w", name, l.run.State, l.run.PID, api.ErrConflict)
	}
	l := &liveVM{restart: vm.Restart, finished: make(chan struct{})}
	m.live[name] = l
	m.mu.Unlock()

	run, err := m.store.NewRun(name, api.Run{
		State: api.StateStarting, QEMU: m.qemu, RuntimeDir: m.vmRuntimeDir(name),
		Transitions: []api.Transition{{State: api.StateStarting, At: time.Now().UTC()}},
	})
	if err != nil {
		m.mu.Lock()
		delete(m.live, name)
		m.mu.Unlock()
		return nil, err
	}
	m.mu.Lock()
	l.run = run
	m.publishLocked(api.Event{VM: name, State: api.StateStarting, At: run.Transitions[0].At})
	m.mu.Unlock()

	spawned := func(rec *api.LaunchRecord) error {
		if testHookAfterSpawn != nil {
			testHookAfterSpawn(name)
		}
		// The pid is durable before QEMU is asked anything: a crash of snpd from here on
		// leaves a run whose process the next snpd adopts or kills (and one before this
		// write leaves a QEMU marked with its runtime directory: see Reattach).
		m.mu.Lock()
		l.run.PID, l.run.ProcStartTicks, l.run.QEMU, l.run.RuntimeDir = rec.PID, rec.StartTicks, rec.QEMUPath, rec.RuntimeDir
		snap := l.run
		snap.Transitions = slices.Clone(l.run.Transitions)
		m.mu.Unlock()
		l.writeMu.Lock()
		defer l.writeMu.Unlock()
		return m.store.PutRun(name, &snap)
	}
	proc, err := m.start(ctx, &vm, startHooks{Spawned: spawned, DiskOwner: sv.DefinedBy, DiskRoots: m.diskRoots(), BeforeCont: func(rec *api.LaunchRecord) error {
		// Durable before cont: a crash of snpd from here on leaves a record reattach can
		// act on (a QEMU found paused before cont is killed).
		m.mu.Lock()
		l.run.PID, l.run.ProcStartTicks = rec.PID, rec.StartTicks
		if rec.QEMUPath != "" {
			l.run.QEMU = rec.QEMUPath
		}
		l.run.Exe = rec.QEMUExe
		if rec.RuntimeDir != "" {
			l.run.RuntimeDir = rec.RuntimeDir
		}
		b, err := json.Marshal(rec)
		if err != nil {
			return fmt.Errorf("encoding launch record: %w", err)
		}
		l.run.Record = b
		snap := l.run
		snap.Transitions = slices.Clone(l.run.Transitions)
		m.mu.Unlock()
		l.writeMu.Lock()
		err = m.store.PutRun(name, &snap)
		l.writeMu.Unlock()
		if err != nil {
			return err
		}
		if testHookBeforeCont != nil {
			testHookBeforeCont(name)
		}
		return nil
	}})
	m.mu.Lock()
	if err != nil {
		l.run.Error = err.Error()
		m.transitionLocked(name, &l.run, api.StateFailed, "start failed")
		m.mu.Unlock()
		m.persist(name, l)
		m.mu.Lock()
		delete(m.live, name)
		close(l.finished)
		m.mu.Unlock()
		return nil, fmt.Errorf("starting vm %q: %w", name, err)
	}
	l.proc = proc
	l.run.PID = proc.PID()
	m.transitionLocked(name, &l.run, api.StateRunning, "")
	m.mu.Unlock()
	m.persist(name, l)
	go m.watch(name, l)
	return m.Get(name)
}

// publishLocked sends ev (Seq assigned here) to the subscribers; callers hold m.mu.
func (m *Manager) publishLocked(ev api.Event) {
	m.seq++
	ev.Seq = m.seq
	if m.onEvent != nil {
		m.onEvent(ev)
	}
	for ch, filter := range m.subs {
		if filter == "" || filter == ev.VM {
			select {
			case ch <- ev:
			default: // a subscriber that does not keep up loses events rather than blocking VMs
			}
		}
	}
}

// testHookBeforeCont, set only by tests, runs after the pre-cont record is durable;
// testHookAfterSpawn right after QEMU started, before its pid is recorded.
var testHookBeforeCont, testHookAfterSpawn func(vm string)

// watch waits for a live VM's QEMU to exit and records how it ended.
func (m *Manager) watch(name string, l *liveVM) {
	<-l.proc.Done()
	exit := l.proc.Exit()
	m.mu.Lock()
	l.run.Exit = &exit
	state, reason := api.StateCrashed, "qemu exited unexpectedly: "+exit.String()
	if l.stopRequested {
		state, reason = api.StateStopped, "stopped: "+exit.String()
	}
	m.transitionLocked(name, &l.run, state, reason)
	m.mu.Unlock()
	m.persist(name, l)
	m.mu.Lock()
	delete(m.live, name)
	close(l.finished)
	restart := state == api.StateCrashed && l.restart == "on-crash" && !m.closed && m.allowRestartLocked(name)
	m.mu.Unlock()
	if restart {
		m.log.Info("restarting crashed vm", "vm", name)
		go func() {
			if _, err := m.Start(context.Background(), name); err != nil {
				m.log.Error("restarting crashed vm", "vm", name, "err", err)
			}
		}()
	}
}

// allowRestartLocked applies the restart budget: at most restartMaxTimes on-crash
// restarts per restartWindow, so a VM that crashes at boot does not loop forever.
func (m *Manager) allowRestartLocked(name string) bool {
	now := time.Now()
	var recent []time.Time
	for _, t := range m.crashRestarts[name] {
		if now.Sub(t) < restartWindow {
			recent = append(recent, t)
		}
	}
	if len(recent) >= restartMaxTimes {
		m.crashRestarts[name] = recent
		return false
	}
	m.crashRestarts[name] = append(recent, now)
	return true
}

// liveFor returns the live VM, or an error saying it is not running.
func (m *Manager) liveForLocked(name string) (*liveVM, error) {
	l, ok := m.live[name]
	if !ok {
		if _, err := m.store.GetVM(name); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("vm %q is not running: %w", name, api.ErrConflict)
	}
	if l.proc == nil {
		if l.reattaching {
			return nil, fmt.Errorf("vm %q is being reattached after an snpd restart; retry in a few seconds: %w", name, api.ErrConflict)
		}
		return nil, fmt.Errorf("vm %q is still starting: %w", name, api.ErrConflict)
	}
	return l, nil
}

// Stop powers a VM off (ACPI) and kills QEMU after timeout (0: the default). The stop
// runs on snpd's own clock: once accepted it goes to its end even if the caller gives up
// (ctx only bounds how long this call waits for it), and its deadline is recorded
// (Run.StopBy) so that a restarted snpd finishes it. It returns once the exit is
// recorded.
func (m *Manager) Stop(ctx context.Context, name string, timeout time.Duration) (*api.VMInfo, error) {
	if timeout <= 0 {
		timeout = m.stopTimeout
	}
	m.mu.Lock()
	l, err := m.liveForLocked(name)
	if err != nil {
		m.mu.Unlock()
		return nil, err
	}
	first := !l.stopRequested
	l.stopRequested = true
	if first {
		by := time.Now().Add(timeout).UTC()
		l.run.StopBy = &by
		m.transitionLocked(name, &l.run, api.StateStopping, fmt.Sprintf("graceful stop, kill after %s", timeout))
	}
	m.mu.Unlock()
	if first {
		m.persist(name, l)
		go m.stopProcess(name, l, timeout)
	}
	select {
	case <-l.finished:
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for vm %q to stop (the stop goes on): %w: %w", name, ctx.Err(), api.ErrUnavailable)
	}
	return m.Get(name)
}

// stopProcess runs a graceful stop of l's QEMU to its end: power off, then kill after
// grace. It is detached from any request.
func (m *Manager) stopProcess(name string, l *liveVM, grace time.Duration) {
	if err := l.proc.Stop(context.Background(), grace); err != nil {
		m.log.Warn("stopping vm", "vm", name, "err", err)
	}
}

// Kill kills a VM's QEMU at once and returns once the exit is recorded.
func (m *Manager) Kill(ctx context.Context, name string) (*api.VMInfo, error) {
	m.mu.Lock()
	l, err := m.liveForLocked(name)
	if err != nil {
		m.mu.Unlock()
		return nil, err
	}
	l.stopRequested = true
	m.mu.Unlock()
	if err := l.proc.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return nil, fmt.Errorf("killing vm %q: %w", name, err)
	}
	select {
	case <-l.finished:
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for vm %q to die: %w: %w", name, ctx.Err(), api.ErrUnavailable)
	}
	return m.Get(name)
}

// ConsoleLog returns the last maxBytes bytes of the VM's console log.
func (m *Manager) ConsoleLog(name string, maxBytes int64) ([]byte, error) {
	info, err := m.Get(name)
	if err != nil {
		return nil, err
	}
	dir := m.vmRuntimeDir(name)
	if info.Last != nil && info.Last.RuntimeDir != "" {
		dir = info.Last.RuntimeDir
	}
	f, err := os.Open(filepath.Join(dir, "console.log"))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("vm %q has no console log yet: %w", name, api.ErrNotFound)
		}
		return nil, fmt.Errorf("opening console log: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("reading console log: %w", err)
	}
	off := max(st.Size()-maxBytes, 0)
	b, err := io.ReadAll(io.NewSectionReader(f, off, st.Size()-off))
	if err != nil {
		return nil, fmt.Errorf("reading console log: %w", err)
	}
	return b, nil
}

// Close stops restarts and new starts. Running VMs are left running (snpd's exit must
// not touch guests); the next snpd reattaches to them.
func (m *Manager) Close() {
	m.mu.Lock()
	m.closed = true
	for ch := range m.subs {
		close(ch)
		delete(m.subs, ch)
	}
	m.mu.Unlock()
}
