package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/snpd/snpd/daemon/api"
	"github.com/snpd/snpd/daemon/launch"
	"github.com/snpd/snpd/qmp"
)

// pidfdInfo mirrors the kernel's struct pidfd_info up to exit_code (PIDFD_INFO_SIZE_VER0,
// 64 bytes; include/uapi/linux/pidfd.h). x/sys/unix has no PIDFD_GET_INFO yet.
type pidfdInfo struct {
	Mask, CgroupID                                      uint64
	PID, TGID, PPID, RUID, RGID, EUID, EGID, SUID, SGID uint32
	FSUID, FSGID                                        uint32
	ExitCode                                            int32
}

const (
	// _IOWR(PIDFS_IOCTL_MAGIC=0xFF, 11, struct pidfd_info of 64 bytes).
	ioctlPidfdGetInfo = 3<<30 | 64<<16 | 0xFF<<8 | 11
	pidfdInfoExit     = 1 << 3 // PIDFD_INFO_EXIT, Linux >= 6.15
)

// pidfdExitStatus asks the kernel (Linux >= 6.15) for the wait status of the exited
// process behind pidfd. That works for a process that is not our child, as long as we
// held the pidfd when it exited; the status appears once its parent reaped it.
func pidfdExitStatus(pidfd int) (ws unix.WaitStatus, ok bool) {
	var info pidfdInfo
	info.Mask = pidfdInfoExit
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(pidfd), ioctlPidfdGetInfo, uintptr(unsafe.Pointer(&info)))
	if errno != 0 || info.Mask&pidfdInfoExit == 0 {
		return 0, false
	}
	return unix.WaitStatus(info.ExitCode), true
}

// zombieExitStatus reads the wait status of pid from /proc/PID/stat (field 52,
// exit_code) if pid is a zombie whose start time is startTicks (0: not checked).
func zombieExitStatus(pid int, startTicks uint64) (unix.WaitStatus, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false
	}
	return parseZombieStat(b, startTicks)
}

// parseZombieStat extracts state, start time and exit code from a /proc/PID/stat line;
// fields are counted after the last ')' because the command name may contain anything.
func parseZombieStat(b []byte, startTicks uint64) (unix.WaitStatus, bool) {
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); field 22 (starttime) is f[19], field 52 (exit_code) f[49].
	if len(f) < 50 || f[0] != "Z" {
		return 0, false
	}
	if st, err := strconv.ParseUint(f[19], 10, 64); err != nil || (startTicks != 0 && st != startTicks) {
		return 0, false
	}
	code, err := strconv.ParseUint(f[49], 10, 32)
	if err != nil {
		return 0, false
	}
	return unix.WaitStatus(code), true
}

// exitFromWaitStatus converts a wait status into an api.ExitStatus.
func exitFromWaitStatus(ws unix.WaitStatus, detail string) api.ExitStatus {
	e := api.ExitStatus{Known: true, Detail: detail}
	switch {
	case ws.Signaled():
		e.Signal = unix.SignalName(ws.Signal())
	case ws.Exited():
		c := ws.ExitStatus()
		e.Code = &c
	default:
		e.Known = false
		e.Detail = fmt.Sprintf("unexpected wait status %#x", uint32(ws))
	}
	return e
}

// goneDetail says why the exit status of a QEMU that ended while snpd was down is unknown.
const goneDetail = "qemu ended while snpd was not running; its exit status went to its new parent (init) and cannot be recovered"

// notChildDetail says why an exit status may be unknowable.
const notChildDetail = "qemu was not snpd's child (reattached after an snpd restart) and this kernel did not report its exit status"

// reattachedProc is a QEMU found running at start: watched through a pidfd, driven
// through a fresh QMP connection (nil if the monitor could not be reached).
type reattachedProc struct {
	pid        int
	startTicks uint64
	pidfd      int
	mon        *qmp.Client

	done     chan struct{}
	exit     api.ExitStatus
	killSent bool
	mu       sync.Mutex
}

func (p *reattachedProc) PID() int              { return p.pid }
func (p *reattachedProc) Done() <-chan struct{} { return p.done }
func (p *reattachedProc) Exit() api.ExitStatus  { return p.exit }

// watch waits for the pidfd to become readable (the process exited), polling in slices
// of 250 ms so an exit is noticed well within a second, then fetches the exit status.
func (p *reattachedProc) watch() {
	for {
		fds := []unix.PollFd{{Fd: int32(p.pidfd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 250)
		if err != nil && !errors.Is(err, unix.EINTR) {
			break
		}
		if n > 0 {
			break
		}
	}
	// While the process is a zombie, /proc/PID/stat carries its wait status; once the
	// new parent (init or a subreaper) reaped it, the pidfd does (Linux >= 6.15).
	var exit api.ExitStatus
	deadline := time.Now().Add(time.Second)
	for {
		if ws, ok := zombieExitStatus(p.pid, p.startTicks); ok {
			exit = exitFromWaitStatus(ws, "from /proc (qemu was reattached, not snpd's child)")
			break
		}
		if ws, ok := pidfdExitStatus(p.pidfd); ok {
			exit = exitFromWaitStatus(ws, "from the pidfd (qemu was reattached, not snpd's child)")
			break
		}
		if time.Now().After(deadline) {
			exit = api.ExitStatus{Known: false, Detail: notChildDetail}
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	p.mu.Lock()
	if !exit.Known && p.killSent {
		exit.Detail += "; snpd had sent SIGKILL"
	}
	p.exit = exit
	p.mu.Unlock()
	if p.mon != nil {
		p.mon.Close()
	}
	unix.Close(p.pidfd)
	close(p.done)
}

func (p *reattachedProc) Kill() error {
	p.mu.Lock()
	p.killSent = true
	p.mu.Unlock()
	select {
	case <-p.done:
		return os.ErrProcessDone
	default:
	}
	if err := unix.PidfdSendSignal(p.pidfd, unix.SIGKILL, nil, 0); err != nil {
		if errors.Is(err, unix.ESRCH) {
			return os.ErrProcessDone
		}
		return fmt.Errorf("sending SIGKILL to qemu %d: %w", p.pid, err)
	}
	return nil
}

func (p *reattachedProc) Stop(ctx context.Context, grace time.Duration) error {
	if p.mon != nil {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := p.mon.SystemPowerdown(cctx)
		cancel()
		if err != nil {
			_ = p.Kill()
		}
	} else if err := unix.PidfdSendSignal(p.pidfd, unix.SIGTERM, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("sending SIGTERM to qemu %d: %w", p.pid, err)
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.done:
		return nil
	case <-t.C:
	case <-ctx.Done():
	}
	_ = p.Kill()
	select {
	case <-p.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for qemu %d to exit: %w", p.pid, ctx.Err())
	}
}

// adoptError says why a recorded process is not (or no longer) ours.
type adoptError struct{ reason string }

func (e *adoptError) Error() string { return e.reason }

// openRecorded opens a pidfd for the process a run records and proves it is the same
// process: the pid's start time and executable must match the record. The pidfd is
// taken first, so the checks cannot race with pid reuse.
func openRecorded(run *api.Run, qemuPath string) (int, error) {
	if run.PID <= 0 {
		return -1, &adoptError{"no pid recorded"}
	}
	fd, err := unix.PidfdOpen(run.PID, 0)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return -1, &adoptError{fmt.Sprintf("qemu pid %d is gone", run.PID)}
		}
		return -1, fmt.Errorf("opening pidfd of %d: %w", run.PID, err)
	}
	fail := func(err error) (int, error) { unix.Close(fd); return -1, err }
	ticks, err := launch.ProcStartTicks(run.PID)
	if err != nil {
		return fail(&adoptError{fmt.Sprintf("qemu pid %d is gone", run.PID)})
	}
	if run.ProcStartTicks != 0 && ticks != run.ProcStartTicks {
		return fail(&adoptError{fmt.Sprintf("pid %d now belongs to another process (start time %d, recorded %d)", run.PID, ticks, run.ProcStartTicks)})
	}
	exe, _, err := launch.ProcExe(run.PID)
	if err != nil {
		return fail(&adoptError{fmt.Sprintf("qemu pid %d is gone", run.PID)})
	}
	// The executable the process ran when its launch was recorded (the binary a
	// wrapper script exec'd), else the configured QEMU path.
	want := run.Exe
	if want == "" {
		want = run.QEMU
		if want == "" {
			want = qemuPath
		}
		if wantReal, err := filepath.EvalSymlinks(want); err == nil {
			want = wantReal
		}
	}
	if exe != want {
		return fail(&adoptError{fmt.Sprintf("pid %d runs %s, not %s", run.PID, exe, want)})
	}
	// A zombie (exited, not reaped) still matches the checks above; the pidfd is then
	// readable at once and the watcher records the exit.
	return fd, nil
}

// reattachQMPTimeout bounds connecting to one reattached QEMU's monitor and asking its
// status; reattaches run concurrently, so a frozen QEMU delays only its own VM.
const reattachQMPTimeout = 5 * time.Second

// Reattaching is the adoption of the VMs found with a QEMU at start, which goes on in the
// background while snpd serves. Safe for concurrent use.
type Reattaching struct {
	mu      sync.Mutex
	results []api.ReattachResult
	pending int
	done    chan struct{}
}

// Results returns what was done so far and how many VMs are still being reattached.
func (r *Reattaching) Results() ([]api.ReattachResult, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.results), r.pending
}

// Done is closed once every VM was dealt with.
func (r *Reattaching) Done() <-chan struct{} { return r.done }

func (r *Reattaching) add(res api.ReattachResult, finished bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.results = append(r.results, res)
	if finished {
		r.pending--
		if r.pending == 0 {
			close(r.done)
		}
	}
}

// Reattach deals with every QEMU an earlier snpd left behind. Synchronously, before it
// returns: every VM the store records as having a QEMU (starting, running or stopping) is
// reserved, so no start, stop or undefine can race its adoption; and every orphan QEMU is
// killed: a process marked as launched from this runtime directory (launch.FindQEMUs)
// that no run records, because snpd died between starting it and recording its pid.
// Then, concurrently and in the background (the returned Reattaching reports on it): the
// same process (pidfd, start time, executable) with a QMP connection is watched again,
// and a graceful stop it was in is finished by its recorded deadline; one found paused
// before its first cont is killed and marked failed; one whose process is gone is marked
// crashed (with its exit status only where the kernel can tell it).
func (m *Manager) Reattach(ctx context.Context) (*Reattaching, error) {
	vms, err := m.store.ListVMs()
	if err != nil {
		return nil, err
	}
	type pending struct {
		name    string
		run     *api.Run
		restart string
		l       *liveVM
	}
	var todo []pending
	recorded := map[string]int{} // VM -> the pid its current run records
	for _, sv := range vms {
		last, _, err := m.store.LastRun(sv.Name)
		if err != nil {
			return nil, err
		}
		if last == nil || last.State.Terminal() {
			continue
		}
		var def struct {
			Restart string `json:"restart"`
		}
		_ = json.Unmarshal(sv.Definition, &def)
		todo = append(todo, pending{name: sv.Name, run: last, restart: def.Restart})
		recorded[sv.Name] = last.PID
	}
	r := &Reattaching{pending: len(todo), done: make(chan struct{})}
	m.mu.Lock()
	for i := range todo {
		todo[i].l = &liveVM{run: *todo[i].run, restart: todo[i].restart, finished: make(chan struct{}), reattaching: true}
		m.live[todo[i].name] = todo[i].l
	}
	m.mu.Unlock()
	for _, res := range m.killOrphans(recorded) {
		r.add(res, false)
	}
	if len(todo) == 0 {
		close(r.done)
		return r, nil
	}
	for _, p := range todo {
		go func() {
			res := m.reattachOne(ctx, p.name, p.run, p.l)
			m.log.Info("reattach", "vm", res.VM, "pid", res.PID, "state", res.State, "detail", res.Detail)
			r.add(res, true)
		}()
	}
	return r, nil
}

// killOrphans kills every QEMU launched from this runtime directory whose pid is not
// the one its VM's current run records (recorded: VM -> pid, for runs with a QEMU), and
// returns one result per orphan.
func (m *Manager) killOrphans(recorded map[string]int) []api.ReattachResult {
	found, err := launch.FindQEMUs(m.runtimeDir)
	if err != nil {
		m.log.Error("looking for orphan qemu processes", "err", err)
		return nil
	}
	var (
		mu  sync.Mutex
		out []api.ReattachResult
		wg  sync.WaitGroup
	)
	for name, pids := range found {
		for _, pid := range pids {
			if pid == recorded[name] {
				continue
			}
			wg.Go(func() {
				res := api.ReattachResult{VM: name, PID: pid, State: api.StateFailed,
					Detail: "orphan qemu (snpd stopped before its launch was recorded); killed"}
				if err := launch.KillQEMU(m.runtimeDir, name, pid, 5*time.Second); err != nil {
					res.Detail = "orphan qemu (snpd stopped before its launch was recorded): " + err.Error()
					m.log.Error("killing orphan qemu", "vm", name, "pid", pid, "err", err)
				} else {
					m.log.Warn("killed orphan qemu", "vm", name, "pid", pid)
				}
				mu.Lock()
				out = append(out, res)
				mu.Unlock()
			})
		}
	}
	wg.Wait()
	return out
}

// reattachOne adopts VM name's recorded run (l is its reservation in m.live).
func (m *Manager) reattachOne(ctx context.Context, name string, run *api.Run, l *liveVM) api.ReattachResult {
	res := api.ReattachResult{VM: name, PID: run.PID}
	// record ends the reservation with a terminal state.
	record := func(state api.State, reason string, exit *api.ExitStatus) api.ReattachResult {
		m.mu.Lock()
		l.run.Exit = exit
		m.transitionLocked(name, &l.run, state, reason)
		m.mu.Unlock()
		m.persist(name, l)
		m.mu.Lock()
		delete(m.live, name)
		close(l.finished)
		m.mu.Unlock()
		res.State, res.Detail = state, reason
		return res
	}
	fd, err := openRecorded(run, m.qemu)
	if err != nil {
		exit := api.ExitStatus{Detail: goneDetail}
		// Not reaped yet by its new parent: the zombie still carries the status.
		if ws, ok := zombieExitStatus(run.PID, run.ProcStartTicks); ok && run.ProcStartTicks != 0 {
			exit = exitFromWaitStatus(ws, "from /proc (qemu ended while snpd was not running, not yet reaped)")
		}
		if run.State == api.StateStarting {
			return record(api.StateFailed, "snpd stopped during the launch; "+err.Error(), &exit)
		}
		if run.State == api.StateStopping {
			return record(api.StateStopped, "stopped while snpd was down; "+err.Error(), &exit)
		}
		return record(api.StateCrashed, "qemu died while snpd was down; "+err.Error(), &exit)
	}
	p := &reattachedProc{pid: run.PID, startTicks: run.ProcStartTicks, pidfd: fd, done: make(chan struct{})}
	dir := run.RuntimeDir
	if dir == "" {
		dir = m.vmRuntimeDir(name)
	}
	qctx, cancel := context.WithTimeout(ctx, reattachQMPTimeout)
	mon, qerr := qmp.Dial(qctx, filepath.Join(dir, launch.QMPSocketName), nil)
	var st qmp.StatusInfo
	if qerr == nil {
		p.mon = mon
		st, qerr = mon.QueryStatus(qctx)
	}
	cancel()
	go p.watch()

	// Half-started: paused before its first cont (prelaunch; or paused while the record
	// still says starting). A starting VM whose monitor cannot be asked is killed too
	// (fail closed). One whose cont happened before snpd died is adopted as running:
	// its launch record was durable before cont.
	halfStarted := (qerr == nil && (st.Status == qmp.RunStatePrelaunch ||
		(run.State == api.StateStarting && st.Status == qmp.RunStatePaused))) ||
		(qerr != nil && run.State == api.StateStarting)
	if halfStarted {
		_ = p.Kill()
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
		}
		exit := p.Exit()
		detail := "found half-started (paused before cont) after an snpd restart; killed"
		if qerr == nil {
			detail += " (qmp status " + st.Status + ")"
		}
		return record(api.StateFailed, detail, &exit)
	}
	reason := "reattached after snpd restart"
	if qerr != nil {
		reason += "; qmp unreachable: " + qerr.Error()
	} else {
		reason += "; qmp status " + st.Status
	}
	state := api.StateRunning
	var stopIn time.Duration
	if run.State == api.StateStopping {
		// A graceful stop was under way: finish it by its recorded deadline.
		state = api.StateStopping
		stopIn = m.stopTimeout
		if run.StopBy != nil {
			stopIn = max(time.Until(*run.StopBy), 0)
		}
		reason += fmt.Sprintf("; finishing the graceful stop, kill in %s", stopIn.Round(time.Millisecond))
	}
	m.mu.Lock()
	l.proc, l.reattaching = p, false
	l.stopRequested = state == api.StateStopping
	m.transitionLocked(name, &l.run, state, reason)
	m.mu.Unlock()
	m.persist(name, l)
	go m.watch(name, l)
	if state == api.StateStopping {
		go m.stopProcess(name, l, stopIn)
	}
	res.State, res.Detail = state, reason
	return res
}
