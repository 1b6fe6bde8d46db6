package daemon

import (
	"context"
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/snpd/snpd/daemon/api"
	"github.com/snpd/snpd/daemon/launch"
)

// TestOrphanFromCrashDuringLaunch: snpd dies right after starting a VM's QEMU, before
// the pid reaches the store. The next snpd finds that QEMU by the runtime-directory
// mark on its command line, kills it, reports it, and the VM starts again.
func TestOrphanFromCrashDuringLaunch(t *testing.T) {
	needQEMU(t)
	e := newTestEnv(t, "")
	d1 := startDaemon(t, e, "SNPD_TEST_HALT_AFTER_SPAWN=orphan")
	mustDefine(t, d1.Client, "orphan", "")
	if _, err := d1.Client.Start(ctxT(t, time.Minute), "orphan"); err == nil {
		t.Fatal("start returned although snpd killed itself")
	}
	<-d1.done
	found, err := launch.FindQEMUs(e.RuntimeDir)
	if err != nil {
		t.Fatal(err)
	}
	if len(found["orphan"]) != 1 {
		t.Fatalf("QEMUs of vm orphan after the crash: %v, want one", found)
	}
	pid := found["orphan"][0]
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	if run := lastRunFromStore(t, e, "orphan"); run.State != api.StateStarting || run.PID != 0 {
		t.Fatalf("run after the crash: %+v; want starting with no pid recorded", run)
	}

	d2 := startDaemon(t, e)
	st := waitReattached(t, d2.Client)
	if pidAlive(pid) {
		t.Fatalf("orphan qemu %d still runs after the next snpd started", pid)
	}
	var reported bool
	for _, r := range st.Reattached {
		if r.VM == "orphan" && r.PID == pid && strings.Contains(r.Detail, "orphan qemu") {
			reported = true
		}
	}
	if !reported {
		t.Errorf("status does not report the orphan: %+v", st.Reattached)
	}
	info, err := vmState(d2.Client, "orphan")
	if err != nil || info.State != api.StateFailed {
		t.Fatalf("orphan after restart: %v %+v", err, info)
	}
	info, err = d2.Client.Start(ctxT(t, time.Minute), "orphan")
	if err != nil {
		t.Fatalf("the vm does not start again: %v", err)
	}
	t.Cleanup(func() { _ = syscall.Kill(info.PID, syscall.SIGKILL) })
	if info.State != api.StateRunning || info.Starts != 2 {
		t.Errorf("second start: %+v", info.VMSummary)
	}
}

// TestPIDRecordedBeforeVerification: the pid of a starting VM is durable as soon as
// QEMU runs, so a crash after that leaves a run the next snpd adopts or kills by pid.
func TestPIDRecordedBeforeVerification(t *testing.T) {
	needQEMU(t)
	e := newTestEnv(t, "")
	d := startDaemon(t, e, "SNPD_TEST_HALT_BEFORE_CONT=p")
	mustDefine(t, d.Client, "p", "")
	_, _ = d.Client.Start(ctxT(t, time.Minute), "p")
	<-d.done
	run := lastRunFromStore(t, e, "p")
	t.Cleanup(func() { _ = syscall.Kill(run.PID, syscall.SIGKILL) })
	if run.PID <= 0 || run.ProcStartTicks == 0 || run.RuntimeDir == "" || run.Exe == "" {
		t.Fatalf("run of a QEMU paused before cont: %+v; want pid, start time, runtime dir and executable", run)
	}
}

// TestStopOutlivesTheClient: a client that gives up on `vm stop` after a second does not
// get its guest killed at once: the graceful stop runs on snpd's clock to its timeout.
// (OVMF without an OS ignores the ACPI power button, so the timeout decides.)
func TestStopOutlivesTheClient(t *testing.T) {
	needQEMU(t)
	e := newTestEnv(t, "")
	d := startDaemon(t, e)
	mustDefine(t, d.Client, "s", "")
	info, err := d.Client.Start(ctxT(t, time.Minute), "s")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(info.PID, syscall.SIGKILL) })
	asked := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := d.Client.Stop(ctx, "s", api.StopRequest{TimeoutSeconds: 5}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("stop with a 1 s client deadline: %v, want the client's deadline", err)
	}
	time.Sleep(1500 * time.Millisecond)
	if !pidAlive(info.PID) {
		t.Fatal("the guest was killed when the client gave up")
	}
	if si, err := vmState(d.Client, "s"); err != nil || si.State != api.StateStopping {
		t.Fatalf("after the client left: %v %+v", err, si)
	}
	var si *api.VMInfo
	waitFor(t, "the stop to end", 20*time.Second, func() (bool, error) {
		var err error
		si, err = vmState(d.Client, "s")
		return err == nil && si.State == api.StateStopped, err
	})
	took := time.Since(asked)
	if pidAlive(info.PID) || took < 4500*time.Millisecond {
		t.Errorf("stopped after %s (alive %v); want QEMU killed at the 5 s timeout", took, pidAlive(info.PID))
	}
	if si.Last.StopBy == nil || si.Last.Exit == nil || !si.Last.Exit.Known {
		t.Errorf("stopped run: stop_by %v exit %+v", si.Last.StopBy, si.Last.Exit)
	}
}

// TestStopSurvivesRestart: snpd dies while a graceful stop waits for the guest; the next
// snpd reattaches the VM as stopping and kills QEMU at the recorded deadline.
func TestStopSurvivesRestart(t *testing.T) {
	needQEMU(t)
	e := newTestEnv(t, "")
	d1 := startDaemon(t, e)
	mustDefine(t, d1.Client, "st", "")
	info, err := d1.Client.Start(ctxT(t, time.Minute), "st")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(info.PID, syscall.SIGKILL) })
	go func() { _, _ = d1.Client.Stop(context.Background(), "st", api.StopRequest{TimeoutSeconds: 6}) }()
	waitFor(t, "the stop to begin", 10*time.Second, func() (bool, error) {
		si, err := vmState(d1.Client, "st")
		return err == nil && si.State == api.StateStopping, err
	})
	// The stopping state is published first and written right after (without holding
	// the Manager's lock); give the write its moment before the crash.
	time.Sleep(time.Second)
	run := currentRun(t, d1, "st")
	d1.kill9()
	if run.StopBy == nil {
		t.Fatal("the stopping run records no deadline")
	}
	if !pidAlive(info.PID) {
		t.Fatal("the guest died with snpd")
	}
	d2 := startDaemon(t, e)
	waitReattached(t, d2.Client)
	si, err := vmState(d2.Client, "st")
	if err != nil || si.State != api.StateStopping || !strings.Contains(si.Last.Transitions[len(si.Last.Transitions)-1].Reason, "finishing the graceful stop") {
		t.Fatalf("after the restart: %v %+v", err, si)
	}
	waitFor(t, "the interrupted stop to end", 30*time.Second, func() (bool, error) {
		si, err = vmState(d2.Client, "st")
		return err == nil && si.State == api.StateStopped, err
	})
	ended := time.Now()
	if pidAlive(info.PID) {
		t.Fatal("stopped, but QEMU still runs")
	}
	if early := run.StopBy.Sub(ended); early > 500*time.Millisecond {
		t.Errorf("killed %s before the recorded deadline %s", early, run.StopBy)
	}
	// After the deadline the guest gets quit over QMP (up to 5 s), then SIGKILL.
	if late := ended.Sub(*run.StopBy); late > 8*time.Second {
		t.Errorf("killed %s after the recorded deadline", late)
	}
}

// currentRun reads a VM's newest run through the API of a running snpd.
func currentRun(t *testing.T, d *testDaemon, name string) *api.Run {
	t.Helper()
	info, err := vmState(d.Client, name)
	if err != nil || info.Last == nil {
		t.Fatalf("%s: %v", name, err)
	}
	return info.Last
}
