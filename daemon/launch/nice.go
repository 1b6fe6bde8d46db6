package launch

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
)

// MaxQEMUNice is the largest nice value QEMU can be started with (Linux's weakest).
const MaxQEMUNice = 19

// startProcessNiced is StartProcess with QEMU at CPU priority nice (0..19; 0: snpd's own),
// so that the control plane (snpd, snpctl, sshd) keeps getting the CPU while many guests
// boot or spin. Lowering a priority needs no privilege; snpd never raises it.
//
// Two kernel mechanisms decide how much CPU a thread gets, and both are set:
//   - The thread's nice value. Go cannot run code between fork and exec, so the fork
//     happens on an OS thread locked to this goroutine whose own nice value was raised
//     first: the child and every thread QEMU creates inherit it, with no window in which
//     QEMU runs at snpd's priority. The locked thread is never unlocked, so the Go
//     runtime discards it when the goroutine ends (and creates new threads from its
//     template thread meanwhile), and no other goroutine ever runs at that priority
//     (onNicedThread; it never uses the main thread, which cannot exit).
//   - The autogroup's nice value (CONFIG_SCHED_AUTOGROUP, on in Debian's kernels): QEMU
//     runs in its own session (Setsid), which the kernel puts in a new autogroup at nice
//     0, and autogroups share the CPU equally whatever their threads' nice values when
//     snpd is not under a cgroup CPU controller. /proc/PID/autogroup is written right
//     after exec; a kernel without autogroups has no such file and needs nothing.
//
// QEMUs are spawned one at a time (spawnMu), whatever the number of concurrent starts.
//
// If QEMU cannot be put at that priority it is killed and an error returned.
func startProcessNiced(nice int, qemuPath string, args []string, extra []*os.File, stderrPath string) (*Instance, *exec.Cmd, error) {
	if nice < 0 || nice > MaxQEMUNice {
		return nil, nil, fmt.Errorf("qemu nice value %d: must be 0..%d", nice, MaxQEMUNice)
	}
	spawnMu.Lock()
	defer spawnMu.Unlock()
	if nice == 0 {
		return StartProcess(qemuPath, args, extra, stderrPath)
	}
	var (
		inst *Instance
		cmd  *exec.Cmd
	)
	err := onNicedThread(nice, func() (err error) {
		inst, cmd, err = StartProcess(qemuPath, args, extra, stderrPath)
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	if err := setAutogroupNice(inst.PID, nice); err != nil {
		_ = inst.Kill()
		<-inst.Done()
		return nil, nil, err
	}
	return inst, cmd, nil
}

// spawnMu makes concurrent starts spawn their QEMUs one after the other. On Linux the Go
// runtime does not serialize forks (syscall.acquireForkLock), so 20 concurrent starts
// meant up to 20 vfork children at once, each sharing snpd's address space until its exec
// and running at QEMU's low priority, while 20 QEMUs began to load. snpd itself then
// stalled: the API's accept loop waited 8-15 ms at a time for a P, and `snpctl vm list`
// calls spaced 20 ms apart during the burst had a p99 of 60-77 ms. Serialized, the same
// calls' p99 was 17-39 ms, and the 20 starts took 0.70-0.80 s instead of 0.67-0.72 s
// (BenchmarkStart20WhileListing with SNPD_BENCH_THINK=20ms, 2 CPUs, TCG guests). The lock
// is taken before the niced thread exists; taking it inside gave the same figures, so the
// gain comes from the forks being one at a time, not from the threads' priority.
var spawnMu sync.Mutex

// onNicedThread runs f on an OS thread of its own whose nice value is raised to nice
// first (never lowered below the thread's current one), and lets that thread die
// afterwards: Go cannot restore a raised nice value without CAP_SYS_NICE, so no other
// goroutine may ever run on it. The main thread is never used: it cannot exit (Go parks
// it for good instead), and ps shows its nice value as the process's.
func onNicedThread(nice int, f func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if unix.Gettid() == unix.Getpid() {
			// Holding the main thread, this goroutine makes sure the next one runs on
			// another thread; the main thread was not touched and is given back.
			err := onNicedThread(nice, f)
			runtime.UnlockOSThread()
			done <- err
			return
		}
		// No UnlockOSThread from here on: the thread ends with this goroutine.
		cur, err := threadNice()
		if err != nil {
			done <- err
			return
		}
		// PRIO_PROCESS with who 0 is the calling thread on Linux, not the whole process.
		if err := unix.Setpriority(unix.PRIO_PROCESS, 0, max(nice, cur)); err != nil {
			done <- fmt.Errorf("lowering the cpu priority for qemu: %w", err)
			return
		}
		done <- f()
	}()
	return <-done
}

// threadNice returns the calling thread's nice value (-20..19).
func threadNice() (int, error) {
	// The raw syscall returns 20-nice (1..40) so that no valid value looks like an error;
	// x/sys returns it unconverted.
	p, err := unix.Getpriority(unix.PRIO_PROCESS, 0)
	if err != nil {
		return 0, fmt.Errorf("reading the cpu priority: %w", err)
	}
	return 20 - p, nil
}

// setAutogroupNice sets the nice value of pid's scheduler autogroup (see
// startProcessNiced); pid must lead its own session. No autogroup support: nothing to do.
func setAutogroupNice(pid, nice int) error {
	f, err := os.OpenFile("/proc/"+strconv.Itoa(pid)+"/autogroup", os.O_WRONLY, 0)
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ESRCH) {
		return nil // no autogroups, or QEMU already exited (the launch reports that)
	}
	if err == nil {
		_, err = f.WriteString(strconv.Itoa(nice))
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("lowering qemu's autogroup cpu priority: %w", err)
	}
	return nil
}
