package systemd

import (
	"context"
	"errors"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/snpd/snpd/systemd/systemdtest"
)

const recvTimeout = 5 * time.Second

func notifySocket(t *testing.T) *systemdtest.NotifySocket {
	t.Helper()
	s := systemdtest.NewNotifySocket(t)
	t.Setenv("NOTIFY_SOCKET", s.Path)
	return s
}

// expectNothing asserts no notification arrives within d.
func expectNothing(t *testing.T, s *systemdtest.NotifySocket, d time.Duration) {
	t.Helper()
	if n, err := s.Next(d); err == nil {
		t.Fatalf("unexpected notification %q", n.State)
	}
}

func TestReadyStatusStopping(t *testing.T) {
	s := notifySocket(t)

	if err := Ready("0 VMs running"); err != nil {
		t.Fatal(err)
	}
	n, err := s.Next(recvTimeout)
	if err != nil {
		t.Fatal(err)
	}
	if len(n.State) != 2 || n.State[0] != "READY=1" || n.State[1] != "STATUS=0 VMs running" {
		t.Errorf("Ready sent %q, want [READY=1 STATUS=0 VMs running] in one datagram", n.State)
	}
	// systemd's NotifyAccess=main accepts only the main process's messages.
	if n.Cred == nil || int(n.Cred.Pid) != os.Getpid() {
		t.Errorf("sender credentials %+v, want pid %d", n.Cred, os.Getpid())
	}

	// A newline in a formatted value must not smuggle in a second assignment.
	if err := Status("%d running, last %s", 3, "web\nREADY=1"); err != nil {
		t.Fatal(err)
	}
	n, err = s.Next(recvTimeout)
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := n.Get("STATUS"); v != "3 running, last web READY=1" || n.Has("READY=1") || len(n.State) != 1 {
		t.Errorf("Status sent %q", n.State)
	}

	if err := Stopping(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.WaitFor("STOPPING=1", recvTimeout); err != nil {
		t.Fatal(err)
	}
	if os.Getenv("NOTIFY_SOCKET") != s.Path {
		t.Errorf("NOTIFY_SOCKET = %q after notifying, want it kept (%q)", os.Getenv("NOTIFY_SOCKET"), s.Path)
	}
}

func TestExtendTimeout(t *testing.T) {
	s := notifySocket(t)
	if err := ExtendTimeout(90*time.Second + 1500*time.Nanosecond); err != nil {
		t.Fatal(err)
	}
	n, err := s.Next(recvTimeout)
	if err != nil {
		t.Fatal(err)
	}
	if !n.Has("EXTEND_TIMEOUT_USEC=90000001") {
		t.Errorf("sent %q", n.State)
	}
	if err := ExtendTimeout(0); err == nil {
		t.Error("ExtendTimeout(0): nil error")
	}
	expectNothing(t, s, 100*time.Millisecond)
}

func TestNotifyRejectsMalformedState(t *testing.T) {
	s := notifySocket(t)
	for _, st := range [][]string{
		{"READY=1\nSTATUS=x"},
		{"READY=1", "STATUS"},
		{"=1"},
		{"ready=1"},
		{"STATUS=a\x00b"},
	} {
		if err := Notify(st...); err == nil {
			t.Errorf("Notify(%q) = nil, want an error", st)
		}
	}
	expectNothing(t, s, 200*time.Millisecond)
}

func TestNotifyWithoutSocketIsNoop(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	os.Unsetenv("NOTIFY_SOCKET")
	if err := Ready("x"); err != nil {
		t.Errorf("Ready without NOTIFY_SOCKET: %v, want nil", err)
	}
}

func TestNotifyUnreachableSocketIsAnError(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", t.TempDir()+"/missing.sock")
	if err := Ready(""); err == nil {
		t.Error("Ready to a missing socket: nil error, want one")
	}
}

func TestWatchdogLoopPingsRepeatedly(t *testing.T) {
	s := notifySocket(t)
	t.Setenv("WATCHDOG_USEC", "40000") // 40 ms: pings every 20 ms
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- WatchdogLoop(ctx) }()

	const want = 8
	for i := 0; i < want; i++ {
		n, err := s.WaitFor("WATCHDOG=1", recvTimeout)
		if err != nil {
			t.Fatalf("ping %d: %v", i+1, err)
		}
		if n.Cred == nil || int(n.Cred.Pid) != os.Getpid() {
			t.Fatalf("ping from %+v, want pid %d", n.Cred, os.Getpid())
		}
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("WatchdogLoop returned %v after cancel, want nil", err)
		}
	case <-time.After(recvTimeout):
		t.Fatal("WatchdogLoop did not return after cancel")
	}
	if os.Getenv("NOTIFY_SOCKET") != s.Path {
		t.Error("NOTIFY_SOCKET was unset by the watchdog loop")
	}
}

func TestWatchdogLoopFuncSkipsPingsWhileUnhealthy(t *testing.T) {
	s := notifySocket(t)
	t.Setenv("WATCHDOG_USEC", "20000")
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
	var healthy atomic.Bool
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var checks atomic.Int32
	go WatchdogLoopFunc(ctx, func(context.Context) error {
		checks.Add(1)
		if !healthy.Load() {
			return errors.New("main loop wedged")
		}
		return nil
	})
	expectNothing(t, s, 300*time.Millisecond)
	if checks.Load() < 2 {
		t.Fatalf("health check ran %d times in 300 ms, want it run before each ping", checks.Load())
	}
	healthy.Store(true)
	if _, err := s.WaitFor("WATCHDOG=1", recvTimeout); err != nil {
		t.Fatalf("after recovery: %v", err)
	}
}

func TestWatchdogLoopOffOrForAnotherProcess(t *testing.T) {
	s := notifySocket(t)
	for _, env := range []struct{ usec, pid string }{
		{"", ""},
		{"40000", "1"}, // WATCHDOG_PID names another process: inherited, not ours
	} {
		t.Setenv("WATCHDOG_USEC", env.usec)
		t.Setenv("WATCHDOG_PID", env.pid)
		done := make(chan error, 1)
		go func() { done <- WatchdogLoop(context.Background()) }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%+v: %v", env, err)
			}
		case <-time.After(recvTimeout):
			t.Fatalf("%+v: WatchdogLoop kept running with the watchdog off", env)
		}
	}
	expectNothing(t, s, 100*time.Millisecond)
}

func TestWatchdogLoopMalformedEnv(t *testing.T) {
	notifySocket(t)
	t.Setenv("WATCHDOG_USEC", "9223372036854775807") // overflows time.Duration in ns
	t.Setenv("WATCHDOG_PID", "")
	if err := WatchdogLoop(context.Background()); err == nil {
		t.Error("WatchdogLoop with WATCHDOG_USEC overflowing: nil error, want one")
	}
}

func TestParseWatchdogEnv(t *testing.T) {
	for _, c := range []struct {
		usec, pid string
		want      time.Duration
		ok        bool
	}{
		{"", "", 0, true},
		{"30000000", "", 30 * time.Second, true},
		{"30000000", "42", 30 * time.Second, true},
		{"30000000", "43", 0, true},
		{"1", "42", time.Microsecond, true},
		{"0", "42", 0, false},
		{"+5", "42", 0, false},
		{"-5", "42", 0, false},
		{" 5", "42", 0, false},
		{"5s", "42", 0, false},
		{"9223372036854775", "", 9223372036854775 * time.Microsecond, true},
		{"9223372036854776", "", 0, false},
		{"99999999999999999999", "", 0, false},
		{"5", "x", 0, false},
		{"5", "0", 0, false},
	} {
		got, err := parseWatchdogEnv(c.usec, c.pid, 42)
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("parseWatchdogEnv(%q, %q) = %v, %v; want %v, ok=%v", c.usec, c.pid, got, err, c.want, c.ok)
		}
	}
}

func FuzzParseWatchdogEnv(f *testing.F) {
	f.Add("30000000", "42")
	f.Add("", "")
	f.Add("9223372036854775", "1")
	f.Add("+1", "42")
	f.Fuzz(func(t *testing.T, usec, pid string) {
		d, err := parseWatchdogEnv(usec, pid, 42)
		if err != nil {
			if d != 0 {
				t.Fatalf("error with interval %v", d)
			}
			return
		}
		if d < 0 {
			t.Fatalf("negative interval %v for %q", d, usec)
		}
		if d > 0 {
			u, perr := strconv.ParseUint(usec, 10, 64)
			if perr != nil || time.Duration(u)*time.Microsecond != d {
				t.Fatalf("%q parsed as %v", usec, d)
			}
		}
	})
}
