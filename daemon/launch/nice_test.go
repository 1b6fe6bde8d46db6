package launch

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/snpd/snpd/qmp"
)

// threadNices returns the nice value (field 19 of /proc/PID/task/TID/stat) of every
// thread of pid ("self" for this process), by thread id.
func threadNices(t *testing.T, pid string) map[string]int {
	t.Helper()
	dir := filepath.Join("/proc", pid, "task")
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), "stat"))
		if err != nil {
			continue // the thread exited meanwhile
		}
		i := bytes.LastIndexByte(b, ')')
		f := strings.Fields(string(b[i+1:]))
		// f[0] is field 3 (state); field 19 (nice) is f[16].
		n, err := strconv.Atoi(f[16])
		if err != nil {
			t.Fatalf("%s/%s/stat: nice %q: %v", dir, e.Name(), f[16], err)
		}
		out[e.Name()] = n
	}
	return out
}

// niceQEMU starts `qemu -machine none -S` through startProcessNiced and waits until its
// monitor answers, so that QEMU's own threads (RCU, monitor I/O...) exist.
func niceQEMU(t *testing.T, nice int) *Instance {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	ours, theirs := os.NewFile(uintptr(fds[0]), "ours"), os.NewFile(uintptr(fds[1]), "theirs")
	defer ours.Close()
	args := []string{"-machine", "none", "-S", "-nodefaults", "-no-user-config", "-display", "none",
		"-sandbox", SandboxArg, "-chardev", "socket,id=qmp,fd=3", "-mon", "chardev=qmp,mode=control"}
	t.Logf("argv: %q (nice %d)", args, nice)
	inst, _, err := startProcessNiced(nice, ltQEMU, args, []*os.File{theirs}, t.TempDir()+"/qemu.stderr")
	theirs.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inst.Kill(); <-inst.Done() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := qmp.NewClientFile(ctx, ours, nil)
	if err != nil {
		t.Fatalf("connecting to QEMU's monitor: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return inst
}

// TestStartProcessNiced checks with the real QEMU that every QEMU thread (including
// those created after exec) and QEMU's autogroup run at the requested nice value, and
// that no thread of snpd itself is left at that priority.
func TestStartProcessNiced(t *testing.T) {
	if _, err := os.Stat(ltQEMU); err != nil {
		t.Skipf("%s is missing (run scripts/install-deps.sh): %v", ltQEMU, err)
	}
	self := threadNices(t, "self")
	var base int
	for _, n := range self {
		base = n
	}
	for _, nice := range []int{7, 0} {
		inst := niceQEMU(t, nice)
		pid := strconv.Itoa(inst.PID)
		want := max(nice, base)
		got := threadNices(t, pid)
		if len(got) < 2 {
			t.Errorf("nice %d: qemu has %d threads, want its helper threads too", nice, len(got))
		}
		for tid, n := range got {
			if n != want {
				t.Errorf("nice %d: qemu thread %s runs at nice %d, want %d", nice, tid, n, want)
			}
		}
		if b, err := os.ReadFile("/proc/" + pid + "/autogroup"); err == nil {
			// "/autogroup-123 nice 7"
			if f := strings.Fields(string(b)); len(f) != 3 || f[2] != strconv.Itoa(nice) {
				t.Errorf("nice %d: qemu's autogroup is %q", nice, b)
			}
			own, _ := os.ReadFile("/proc/self/autogroup")
			if bytes.Equal(own, b) {
				t.Errorf("qemu shares snpd's autogroup %q (it should lead its own session)", b)
			}
		} else {
			t.Logf("no autogroups on this kernel: %v", err)
		}
	}
	waitNoNicedThreads(t, base)
	// Many niced forks in a row: the Go scheduler often offers the main thread (which can
	// never exit); it must never be used, and every niced thread must go away.
	for range 50 {
		err := onNicedThread(7, func() error {
			if tid := unix.Gettid(); tid == unix.Getpid() {
				return fmt.Errorf("ran on the main thread %d", tid)
			}
			if n, err := threadNice(); err != nil || n != max(7, base) {
				return fmt.Errorf("thread at nice %d (%v), want %d", n, err, max(7, base))
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	waitNoNicedThreads(t, base)
	for _, bad := range []int{-1, MaxQEMUNice + 1} {
		if _, _, err := startProcessNiced(bad, ltQEMU, nil, nil, t.TempDir()+"/qemu.stderr"); err == nil || !strings.Contains(err.Error(), "must be 0..19") {
			t.Errorf("nice %d: err %v, want a range error", bad, err)
		}
	}
}

// waitNoNicedThreads fails unless every thread of this process is back at nice base
// soon: the forking thread ends with its goroutine, but at its lowered priority it may
// wait a while for a CPU on a loaded host before it gets to exit.
func waitNoNicedThreads(t *testing.T, base int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		var left []string
		for tid, n := range threadNices(t, "self") {
			if n != base {
				comm, _ := os.ReadFile("/proc/self/task/" + tid + "/comm")
				left = append(left, fmt.Sprintf("%s (%s) at nice %d", tid, bytes.TrimSpace(comm), n))
			}
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("threads of snpd left below nice %d: %s", base, left)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestSpawnsOneAtATime checks that startProcessNiced spawns under spawnMu, at QEMU's
// priority and at snpd's: while another spawn holds it, no process is started.
func TestSpawnsOneAtATime(t *testing.T) {
	for _, nice := range []int{0, 7} {
		spawnMu.Lock()
		started := make(chan *Instance, 1)
		go func() {
			inst, _, err := startProcessNiced(nice, "/bin/sleep", []string{"60"}, nil, t.TempDir()+"/stderr")
			if err != nil {
				t.Error(err)
			}
			started <- inst
		}()
		select {
		case inst := <-started:
			t.Errorf("nice %d: a process was spawned while spawnMu was held", nice)
			if inst != nil {
				inst.Kill()
			}
			spawnMu.Unlock()
			continue
		case <-time.After(300 * time.Millisecond):
		}
		spawnMu.Unlock()
		select {
		case inst := <-started:
			if inst != nil {
				inst.Kill()
				<-inst.Done()
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("nice %d: no process 30 s after spawnMu was released", nice)
		}
	}
}
