package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/snpd/snpd/daemon/api"
	"github.com/snpd/snpd/daemon/launch"
	"github.com/snpd/snpd/daemon/store"
)

// TestReattachAfterSIGKILL is the restart story with the real QEMU on platform "none":
// three running VMs survive a SIGKILL of snpd and are adopted by the next snpd with the
// same pids; a VM whose launch snpd died in (paused before cont) is killed and reported;
// a QEMU killed with SIGKILL is reported crashed with its signal (as snpd's child, and
// after a reattach through the pidfd), noticed within a second.
func TestReattachAfterSIGKILL(t *testing.T) {
	needQEMU(t)
	e := newTestEnv(t, "")
	d1 := startDaemon(t, e, "SNPD_TEST_HALT_BEFORE_CONT=half")
	c := d1.Client
	names := []string{"a", "b", "c"}
	for _, n := range append(names, "half", "child", "gone") {
		mustDefine(t, c, n, "")
	}
	pids := map[string]int{}
	for _, n := range names {
		info, err := c.Start(ctxT(t, time.Minute), n)
		if err != nil {
			t.Fatalf("starting %s: %v", n, err)
		}
		if info.State != api.StateRunning || info.PID <= 0 || !pidAlive(info.PID) {
			t.Fatalf("%s after start: %+v", n, info.VMSummary)
		}
		pids[n] = info.PID
	}
	t.Cleanup(func() {
		for _, p := range pids {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
	})

	gone, err := c.Start(ctxT(t, time.Minute), "gone")
	if err != nil {
		t.Fatal(err)
	}

	// A QEMU killed while snpd (its parent) runs: crashed, with the signal.
	info, err := c.Start(ctxT(t, time.Minute), "child")
	if err != nil {
		t.Fatal(err)
	}
	events, cancelEvents := context.WithCancel(context.Background())
	defer cancelEvents()
	got := make(chan api.Event, 16)
	go func() {
		_ = c.Events(events, "child", func(ev api.Event) error { got <- ev; return nil })
	}()
	time.Sleep(100 * time.Millisecond) // let the stream subscribe
	killedAt := time.Now()
	if err := syscall.Kill(info.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-got:
		if ev.State != api.StateCrashed {
			t.Fatalf("event %+v, want crashed", ev)
		}
		if d := time.Since(killedAt); d > time.Second {
			t.Errorf("crash noticed after %s, want < 1s", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no crashed event within 5s")
	}
	ci, err := vmState(c, "child")
	if err != nil {
		t.Fatal(err)
	}
	if ci.State != api.StateCrashed || ci.Last.Exit == nil || !ci.Last.Exit.Known || ci.Last.Exit.Signal != "SIGKILL" {
		t.Fatalf("child after SIGKILL: state %s exit %+v", ci.State, ci.Last.Exit)
	}

	// snpd dies with SIGKILL in the middle of launching "half": QEMU is left paused
	// before cont with a durable "starting" record.
	_, err = c.Start(ctxT(t, time.Minute), "half")
	if err == nil {
		t.Fatal("start of half returned although snpd killed itself")
	}
	<-d1.done
	halfRun := lastRunFromStore(t, e, "half")
	if halfRun.State != api.StateStarting || halfRun.PID <= 0 || !pidAlive(halfRun.PID) {
		t.Fatalf("half after snpd's death: %+v (alive %v)", halfRun, pidAlive(halfRun.PID))
	}
	pids["half"] = halfRun.PID
	// A QEMU that dies while no snpd runs.
	if err := syscall.Kill(gone.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "gone's qemu to exit", 5*time.Second, func() (bool, error) { return !pidAlive(gone.PID), nil })
	for _, n := range names {
		if !pidAlive(pids[n]) {
			t.Fatalf("%s (pid %d) died with snpd", n, pids[n])
		}
	}

	d2 := startDaemon(t, e)
	c = d2.Client
	// The adoption goes on while snpd serves.
	st := waitReattached(t, c)
	for _, n := range names {
		info, err := vmState(c, n)
		if err != nil {
			t.Fatal(err)
		}
		if info.State != api.StateRunning || info.PID != pids[n] || !pidAlive(pids[n]) {
			t.Errorf("%s after restart: state %s pid %d (was %d)", n, info.State, info.PID, pids[n])
		}
		if !strings.Contains(info.Last.Transitions[len(info.Last.Transitions)-1].Reason, "reattached") {
			t.Errorf("%s: last transition %+v", n, info.Last.Transitions)
		}
	}
	hi, err := vmState(c, "half")
	if err != nil {
		t.Fatal(err)
	}
	if hi.State != api.StateFailed || !strings.Contains(hi.Last.Transitions[len(hi.Last.Transitions)-1].Reason, "half-started") {
		t.Errorf("half after restart: %s %+v", hi.State, hi.Last.Transitions)
	}
	gi, err := vmState(c, "gone")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("gone: %s", gi.Last.Exit)
	if ex := gi.Last.Exit; gi.State != api.StateCrashed || ex == nil || !strings.Contains(ex.Detail, "while snpd was not running") ||
		(ex.Known && ex.Signal != "SIGKILL") {
		t.Errorf("gone after restart: %s exit %+v", gi.State, gi.Last.Exit)
	}
	waitFor(t, "the half-started qemu to be gone", 5*time.Second, func() (bool, error) { return !pidAlive(pids["half"]), nil })
	if st.VMs[api.StateRunning] != 3 || len(st.Reattached) != 5 {
		t.Errorf("status after restart: %+v", st)
	}

	// A reattached QEMU (no longer snpd's child) killed with SIGKILL: crashed; the
	// signal comes from the pidfd (Linux >= 6.15), else the record says it is unknown.
	killedAt = time.Now()
	if err := syscall.Kill(pids["c"], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var cc *api.VMInfo
	waitFor(t, "c to be reported crashed", 5*time.Second, func() (bool, error) {
		var err error
		cc, err = vmState(c, "c")
		return err == nil && cc.State == api.StateCrashed, err
	})
	noticed := time.Since(killedAt)
	t.Logf("reattached qemu crash noticed after %s; exit %s", noticed, cc.Last.Exit)
	if noticed > 1500*time.Millisecond {
		t.Errorf("crash of a reattached qemu noticed after %s", noticed)
	}
	if ex := cc.Last.Exit; ex == nil || (ex.Known && ex.Signal != "SIGKILL") || (!ex.Known && !strings.Contains(ex.Detail, "not snpd's child")) {
		t.Errorf("c exit %+v", ex)
	}

	// Stop and kill through the API work on reattached VMs.
	ai, err := c.Stop(ctxT(t, 30*time.Second), "a", api.StopRequest{TimeoutSeconds: 1})
	if err != nil || ai.State != api.StateStopped || pidAlive(pids["a"]) {
		t.Errorf("stop a: %v %+v", err, ai)
	}
	bi, err := c.Kill(ctxT(t, 30*time.Second), "b")
	if err != nil || bi.State != api.StateStopped || pidAlive(pids["b"]) {
		t.Errorf("kill b: %v %+v", err, bi)
	}
	if _, err := c.Kill(ctxT(t, 5*time.Second), "b"); !errors.Is(err, api.ErrConflict) {
		t.Errorf("killing a stopped vm: %v", err)
	}
}

// waitReattached waits (up to 20 s) until snpd has dealt with every VM it found with a
// QEMU at start, and returns its status then.
func waitReattached(t *testing.T, c *api.Client) *api.Status {
	t.Helper()
	var st *api.Status
	waitFor(t, "the reattach to finish", 20*time.Second, func() (bool, error) {
		var err error
		st, err = c.Status(ctxT(t, 5*time.Second))
		return err == nil && st.Reattaching == 0, err
	})
	return st
}

// lastRunFromStore reads a VM's newest run directly (snpd must not be running).
func lastRunFromStore(t *testing.T, e *testEnv, name string) *api.Run {
	t.Helper()
	s, err := store.Open(e.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r, _, err := s.LastRun(name)
	if err != nil || r == nil {
		t.Fatalf("last run of %s: %v", name, err)
	}
	return r
}

// TestRestartOnCrash checks the optional per-VM restart policy.
func TestRestartOnCrash(t *testing.T) {
	needQEMU(t)
	e := newTestEnv(t, "")
	d := startDaemon(t, e)
	mustDefine(t, d.Client, "phoenix", "restart = \"on-crash\"\n")
	info, err := d.Client.Start(ctxT(t, time.Minute), "phoenix")
	if err != nil {
		t.Fatal(err)
	}
	first := info.PID
	if err := syscall.Kill(first, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var again *api.VMInfo
	waitFor(t, "phoenix to run again", 30*time.Second, func() (bool, error) {
		var err error
		again, err = vmState(d.Client, "phoenix")
		return err == nil && again.State == api.StateRunning && again.PID != first, err
	})
	t.Cleanup(func() { _ = syscall.Kill(again.PID, syscall.SIGKILL) })
	if again.Starts != 2 {
		t.Errorf("starts = %d, want 2", again.Starts)
	}
	runs, err := d.Client.Runs(ctxT(t, 5*time.Second), "phoenix")
	if err != nil || len(runs) != 2 || runs[0].State != api.StateCrashed || runs[0].Exit.Signal != "SIGKILL" {
		t.Fatalf("runs: %v %+v", err, runs)
	}
	if _, err := d.Client.Stop(ctxT(t, 30*time.Second), "phoenix", api.StopRequest{TimeoutSeconds: 1}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if info, _ := vmState(d.Client, "phoenix"); info.State != api.StateStopped {
		t.Errorf("a stopped on-crash vm came back: %s", info.State)
	}
}

func TestParseZombieStat(t *testing.T) {
	// A real zombie line: comm with a space and a ')' inside, killed by SIGKILL (9).
	fields := make([]string, 50)
	for i := range fields {
		fields[i] = "0"
	}
	fields[0], fields[19], fields[49] = "Z", "4242", "9"
	line := []byte("123 (qemu) x) " + strings.Join(fields, " ") + "\n")
	ws, ok := parseZombieStat(line, 4242)
	if !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("got %#x %v", uint32(ws), ok)
	}
	if _, ok := parseZombieStat(line, 4243); ok {
		t.Error("start time mismatch accepted (pid reuse)")
	}
	fields[0] = "S"
	if _, ok := parseZombieStat([]byte("1 (q) "+strings.Join(fields, " ")), 0); ok {
		t.Error("a live process reported as exited")
	}
}

func FuzzParseZombieStat(f *testing.F) {
	f.Add([]byte("1 (a) Z 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 7 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 256"), uint64(7))
	f.Add([]byte("((("), uint64(0))
	f.Fuzz(func(t *testing.T, b []byte, ticks uint64) {
		ws, ok := parseZombieStat(b, ticks)
		if !ok && ws != 0 {
			t.Fatal("status without ok")
		}
	})
}

// TestOpenRecordedRefusesOtherProcesses: a recorded pid is only adopted when its start
// time and executable match the record (pid reuse, another binary, a dead pid).
func TestOpenRecordedRefusesOtherProcesses(t *testing.T) {
	self := os.Getpid()
	ticks, err := launch.ProcStartTicks(self)
	if err != nil {
		t.Fatal(err)
	}
	exe, _, err := launch.ProcExe(self)
	if err != nil {
		t.Fatal(err)
	}
	var ae *adoptError
	_, err = openRecorded(&api.Run{PID: self, ProcStartTicks: ticks, QEMU: testQEMU}, testQEMU)
	if !errors.As(err, &ae) || !strings.Contains(err.Error(), "not "+testQEMU) {
		t.Errorf("another executable: %v", err)
	}
	_, err = openRecorded(&api.Run{PID: self, ProcStartTicks: ticks + 1, QEMU: exe}, testQEMU)
	if !errors.As(err, &ae) || !strings.Contains(err.Error(), "belongs to another process") {
		t.Errorf("pid reuse: %v", err)
	}
	fd, err := openRecorded(&api.Run{PID: self, ProcStartTicks: ticks, QEMU: exe}, testQEMU)
	if err != nil {
		t.Fatalf("the recorded process itself: %v", err)
	}
	syscall.Close(fd)
	cmd := exec.Command("/bin/true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	_, err = openRecorded(&api.Run{PID: cmd.Process.Pid, ProcStartTicks: 1, QEMU: testQEMU}, testQEMU)
	if !errors.As(err, &ae) || !strings.Contains(err.Error(), "gone") {
		t.Errorf("dead pid: %v", err)
	}
}

// TestReattachFrozenQEMUsConcurrently: QEMUs that do not answer on QMP (stopped with
// SIGSTOP) delay neither the API nor each other: snpd answers at once while it adopts
// them, and all three are dealt with in about one QMP timeout, not three.
func TestReattachFrozenQEMUsConcurrently(t *testing.T) {
	needQEMU(t)
	e := newTestEnv(t, "")
	d1 := startDaemon(t, e)
	var pids []int
	for _, n := range []string{"f1", "f2", "f3"} {
		mustDefine(t, d1.Client, n, "")
		info, err := d1.Client.Start(ctxT(t, time.Minute), n)
		if err != nil {
			t.Fatal(err)
		}
		pids = append(pids, info.PID)
	}
	t.Cleanup(func() {
		for _, p := range pids {
			_ = syscall.Kill(p, syscall.SIGCONT)
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
	})
	d1.kill9()
	for _, p := range pids {
		if err := syscall.Kill(p, syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
	}
	began := time.Now()
	d2 := startDaemon(t, e)
	st, err := d2.Client.Status(ctxT(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if answered := time.Since(began); answered > 4*time.Second || st.Reattaching == 0 {
		t.Errorf("status answered after %s with %d reattaching; want an answer while the frozen QEMUs are adopted", answered, st.Reattaching)
	}
	if _, err := d2.Client.Start(ctxT(t, 5*time.Second), "f1"); !errors.Is(err, api.ErrConflict) || !strings.Contains(err.Error(), "being reattached") {
		t.Errorf("start of a vm being reattached: %v", err)
	}
	st = waitReattached(t, d2.Client)
	took := time.Since(began)
	t.Logf("three frozen QEMUs reattached in %s", took)
	if took > 2*reattachQMPTimeout+2*time.Second {
		t.Errorf("reattaching three frozen QEMUs took %s: one at a time?", took)
	}
	for _, r := range st.Reattached {
		if r.State != api.StateRunning || !strings.Contains(r.Detail, "qmp unreachable") {
			t.Errorf("frozen %s: %s %s", r.VM, r.State, r.Detail)
		}
	}
}

// TestReattachThroughWrapperScript: with qemu set to a wrapper script that execs the
// real binary, a running QEMU is adopted after a restart (the process runs the real
// binary, which the launch recorded), not reported dead.
func TestReattachThroughWrapperScript(t *testing.T) {
	needQEMU(t)
	dir := t.TempDir()
	wrapper := filepath.Join(dir, "qemu-wrapper")
	if err := os.WriteFile(wrapper, []byte("#!/bin/sh\nexec "+testQEMU+" \"$@\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	e := newTestEnv(t, fmt.Sprintf("qemu = %q\n", wrapper))
	d1 := startDaemon(t, e)
	mustDefine(t, d1.Client, "w", "")
	info, err := d1.Client.Start(ctxT(t, time.Minute), "w")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(info.PID, syscall.SIGKILL) })
	if info.Last.QEMU != wrapper || info.Last.Exe != testQEMU {
		t.Errorf("run records qemu %q exe %q; want the wrapper and the binary it runs", info.Last.QEMU, info.Last.Exe)
	}
	d1.kill9()
	d2 := startDaemon(t, e)
	waitReattached(t, d2.Client)
	wi, err := vmState(d2.Client, "w")
	if err != nil || wi.State != api.StateRunning || wi.PID != info.PID {
		t.Fatalf("after the restart: %v %+v", err, wi)
	}
}
