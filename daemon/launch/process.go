package launch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/snpd/snpd/daemon/api"
	"github.com/snpd/snpd/qmp"
	"golang.org/x/sys/unix"
)

// StderrTailLines is how many trailing lines of qemu.stderr ExitInfo keeps.
const StderrTailLines = 20

// ExitInfo is how a QEMU process ended.
type ExitInfo struct {
	// Code is the exit status, or -1 when QEMU was killed by a signal or the status is
	// unknown (an instance reattached after an snpd restart is not snpd's child).
	Code int
	// Signal names the signal that killed QEMU ("killed"); empty otherwise.
	Signal string
	// Known is false when the exit status could not be observed (reattached instance).
	Known bool
	// StderrTail holds the last StderrTailLines lines of qemu.stderr.
	StderrTail []string
}

// String is a one-line summary ("exit status 1", "signal: killed").
func (e ExitInfo) String() string {
	switch {
	case !e.Known:
		return "exit status unknown"
	case e.Signal != "":
		return "signal: " + e.Signal
	default:
		return "exit status " + strconv.Itoa(e.Code)
	}
}

// Instance is one running (or ended) QEMU started or reattached by snpd.
type Instance struct {
	// Name is the VM name; Dir its runtime directory.
	Name, Dir string
	// PID is QEMU's process id; StartTicks field 22 of /proc/PID/stat at start.
	PID        int
	StartTicks uint64
	// QMP is the monitor connection (nil only if the monitor could not be reached).
	QMP *qmp.Client
	// Record is the launch record (as passed to BeforeCont).
	Record *api.LaunchRecord

	proc *os.Process
	done chan struct{}
	mu   sync.Mutex
	exit ExitInfo
}

// Done is closed when QEMU has exited.
func (i *Instance) Done() <-chan struct{} { return i.done }

// Exit returns how QEMU ended; valid after Done is closed (zero before).
func (i *Instance) Exit() ExitInfo {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.exit
}

// Kill sends SIGKILL to QEMU (through a pidfd for a child, so a recycled PID is never
// hit) and waits for it to exit. Killing an exited QEMU is not an error.
func (i *Instance) Kill() error {
	select {
	case <-i.done:
		return nil
	default:
	}
	if err := i.proc.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("killing qemu (pid %d): %w", i.PID, err)
	}
	<-i.done
	return nil
}

// Stop ends QEMU gracefully: system_powerdown and up to grace for the guest to power
// off; then quit over QMP (up to 5 s); then SIGKILL. It returns once QEMU has exited;
// the exit status and stderr tail are in Exit. If ctx ends first QEMU is killed and
// ctx's error returned.
func (i *Instance) Stop(ctx context.Context, grace time.Duration) error {
	select {
	case <-i.done:
		return nil
	default:
	}
	wait := func(d time.Duration) (exited bool, err error) {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-i.done:
			return true, nil
		case <-t.C:
			return false, nil
		case <-ctx.Done():
			return false, ctx.Err()
		}
	}
	cmdCtx := func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, 2*time.Second) }
	if i.QMP != nil && grace > 0 {
		c, cancel := cmdCtx()
		err := i.QMP.SystemPowerdown(c)
		cancel()
		if err == nil {
			if ok, err := wait(grace); ok {
				return nil
			} else if err != nil {
				return errors.Join(err, i.Kill())
			}
		}
	}
	if i.QMP != nil {
		c, cancel := cmdCtx()
		err := i.QMP.Quit(c)
		cancel()
		if err == nil {
			if ok, err := wait(5 * time.Second); ok {
				return nil
			} else if err != nil {
				return errors.Join(err, i.Kill())
			}
		}
	}
	return i.Kill()
}

// spawnMu makes concurrent starts spawn their QEMUs one after the other. On Linux the Go
// runtime does not serialize forks (syscall.acquireForkLock), so 20 concurrent starts
// meant up to 20 vfork children at once, each sharing snpd's address space until its
// exec, while 20 QEMUs began to load; snpd's API then stalled for a P (`vm list` p99
// 60-77 ms against 17-39 ms serialized, 20 guests on 2 CPUs, TCG).
var spawnMu sync.Mutex

// spawnQEMU is StartProcess for a guest, one spawn at a time (spawnMu).
func spawnQEMU(qemuPath string, args []string, extra []*os.File, stderrPath string) (*Instance, error) {
	spawnMu.Lock()
	defer spawnMu.Unlock()
	inst, _, err := StartProcess(qemuPath, args, extra, stderrPath)
	return inst, err
}

// StartProcess starts QEMU in its own session (so it survives snpd and its signals),
// with stdout and stderr appended to stderrPath, stdin /dev/null, a minimal environment
// and extra inherited as fds 3.... The caller still owns extra.
func StartProcess(qemuPath string, args []string, extra []*os.File, stderrPath string) (*Instance, *exec.Cmd, error) {
	// Setsid and no Pdeathsig: QEMU must outlive snpd so a restart leaves guests alone.
	return startProcess(qemuPath, args, extra, stderrPath, &syscall.SysProcAttr{Setsid: true})
}

// startProcess is StartProcess with the given process attributes.
func startProcess(qemuPath string, args []string, extra []*os.File, stderrPath string, attr *syscall.SysProcAttr) (*Instance, *exec.Cmd, error) {
	ef, err := os.OpenFile(stderrPath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("creating %s: %w", stderrPath, err)
	}
	defer ef.Close()
	cmd := exec.Command(qemuPath, args...)
	cmd.Env = []string{"LC_ALL=C"}
	cmd.Dir = "/"
	cmd.Stdout, cmd.Stderr = ef, ef
	cmd.ExtraFiles = extra
	cmd.SysProcAttr = attr
	if err := cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("starting qemu: %w", err)
	}
	inst := &Instance{PID: cmd.Process.Pid, proc: cmd.Process, done: make(chan struct{})}
	inst.StartTicks, _ = ProcStartTicks(inst.PID) // 0 only if it already exited
	go func() {
		err := cmd.Wait()
		ex := ExitInfo{Known: true, Code: cmd.ProcessState.ExitCode()}
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			ex.Signal = ws.Signal().String()
		}
		_ = err // the status is in ProcessState
		ex.StderrTail = tailLines(stderrPath, StderrTailLines)
		inst.mu.Lock()
		inst.exit = ex
		inst.mu.Unlock()
		close(inst.done)
	}()
	return inst, cmd, nil
}

// ProcStartTicks reads field 22 (starttime, clock ticks after boot) of /proc/PID/stat.
func ProcStartTicks(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, fmt.Errorf("reading process start time: %w", err)
	}
	return parseStatStartTicks(b)
}

// parseStatStartTicks extracts field 22 from a /proc/PID/stat line. The command name
// (field 2) is in parentheses and may contain spaces and ')', so fields are counted after
// the last ')'.
func parseStatStartTicks(b []byte) (uint64, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("parsing /proc stat: no command name")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); field 22 is f[19].
	if len(f) < 20 {
		return 0, fmt.Errorf("parsing /proc stat: %d fields after the command name, want >= 20", len(f))
	}
	v, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parsing /proc stat starttime: %w", err)
	}
	return v, nil
}

// tailLines returns the last n lines of the file (reading at most its last 64 KiB).
func tailLines(path string, n int) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	const max = 64 << 10
	st, err := f.Stat()
	if err != nil {
		return nil
	}
	off := st.Size() - max
	if off < 0 {
		off = 0
	}
	b, err := io.ReadAll(io.NewSectionReader(f, off, max))
	if err != nil {
		return nil
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if off > 0 && len(lines) > 0 {
		lines = lines[1:] // partial first line
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	if len(lines) == 1 && lines[0] == "" {
		return nil
	}
	return lines
}

// ProcExe returns /proc/PID/exe's target; deleted reports a binary replaced on disk
// since the process started (a package upgrade).
func ProcExe(pid int) (path string, deleted bool, err error) {
	p, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
	if err != nil {
		return "", false, fmt.Errorf("reading /proc/%d/exe: %w", pid, err)
	}
	if s, ok := strings.CutSuffix(p, " (deleted)"); ok {
		return s, true, nil
	}
	return p, false, nil
}

// FindQEMUs lists the QEMU processes snpd launched from runtimeDir, by VM name: every
// process whose command line carries "-pidfile <runtimeDir>/vms/<name>/qemu.pid", the
// mark BuildArgv gives each launch. It finds a QEMU whatever its state (paused before
// its first cont, running, a zombie) and whoever its parent is, which is how the next
// snpd finds a QEMU whose launch an earlier snpd did not live to record. Processes that
// vanish during the scan are skipped.
func FindQEMUs(runtimeDir string) (map[string][]int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("listing processes: %w", err)
	}
	prefix := filepath.Join(runtimeDir, "vms") + "/"
	out := map[string][]int{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if name, ok := qemuMark(pid, prefix); ok {
			out[name] = append(out[name], pid)
		}
	}
	return out, nil
}

// qemuMark returns the VM name of pid's "-pidfile <prefix><name>/qemu.pid" argument.
func qemuMark(pid int, prefix string) (string, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return "", false
	}
	args := strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")
	for i := 0; i+1 < len(args); i++ {
		if args[i] != "-pidfile" {
			continue
		}
		rest, ok := strings.CutPrefix(args[i+1], prefix)
		if !ok {
			return "", false
		}
		name, file, ok := strings.Cut(rest, "/")
		if !ok || file != PIDFileName || name == "" {
			return "", false
		}
		return name, true
	}
	return "", false
}

// KillQEMU kills the QEMU pid of VM name that FindQEMUs found in runtimeDir, and waits
// up to timeout for it to exit. A pidfd is taken first and the mark checked again
// through it, so a pid reused meanwhile is never signalled. A process already gone is
// no error.
func KillQEMU(runtimeDir, name string, pid int, timeout time.Duration) error {
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("opening pidfd of qemu %d: %w", pid, err)
	}
	defer unix.Close(fd)
	if got, ok := qemuMark(pid, filepath.Join(runtimeDir, "vms")+"/"); !ok || got != name {
		return nil // exited, and the pid is someone else's now
	}
	if err := unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("killing qemu %d: %w", pid, err)
	}
	// The pidfd becomes readable when the process exits (a zombie counts).
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	deadline := time.Now().Add(timeout)
	for {
		n, err := unix.Poll(fds, int(max(time.Until(deadline), 0)/time.Millisecond))
		if n > 0 {
			return nil
		}
		if err != nil && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("waiting for qemu %d to exit: %w", pid, err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("qemu %d did not exit within %s of SIGKILL", pid, timeout)
		}
	}
}
