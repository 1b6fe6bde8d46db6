package daemon

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/snpd/snpd/daemon/api"
	"github.com/snpd/snpd/systemd/systemdtest"
)

// TestRunNotifiesSystemd checks the sd_notify protocol of a running snpd: READY=1 only
// once the API answers, STATUS= lines with VM counts as states change, STOPPING=1 on
// SIGTERM (and guests keep running).
func TestRunNotifiesSystemd(t *testing.T) {
	needQEMU(t)
	n := systemdtest.NewNotifySocket(t)
	vmDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(vmDir, "imported.toml"), []byte(vmTOML("imported", "")), 0o644); err != nil {
		t.Fatal(err)
	}
	e := newTestEnv(t, fmt.Sprintf("vm_dir = %q\n", vmDir))
	d := startDaemon(t, e, "NOTIFY_SOCKET="+n.Path)
	ready, err := n.WaitFor("READY=1", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// Not socket-activated: the status names the configured socket snpd bound
	// (systemd/snpd_e2e_test.go checks the activated case).
	if st, err := d.Client.Status(ctxT(t, 5*time.Second)); err != nil {
		t.Error(err)
	} else if st.Socket != e.Socket {
		t.Errorf("status socket = %q, want %q", st.Socket, e.Socket)
	} else if !st.RunWithoutPolicy || st.Policy != "" {
		t.Errorf("status of an snpd configured with run_without_policy: policy %q, run_without_policy %v", st.Policy, st.RunWithoutPolicy)
	}
	// vm_dir's definitions are imported before READY.
	if st, _ := ready.Get("STATUS"); st != "1 vms: 1 stopped" {
		t.Errorf("STATUS with READY=1: %q", st)
	}
	mustDefine(t, d.Client, "n1", "")
	info, err := d.Client.Start(ctxT(t, time.Minute), "n1")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(info.PID, syscall.SIGKILL) })
	deadline := time.Now().Add(10 * time.Second)
	for {
		msg, err := n.Next(time.Until(deadline))
		if err != nil {
			t.Fatalf("no STATUS with 1 running: %v", err)
		}
		if st, ok := msg.Get("STATUS"); ok && st == "2 vms: 1 running, 1 stopped" {
			break
		}
	}
	d.signal(syscall.SIGTERM)
	if _, err := n.WaitFor("STOPPING=1", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	<-d.done
	if !pidAlive(info.PID) {
		t.Error("snpd's exit took the guest with it")
	}
}

// TestFullStateDirKeepsStore defines VMs through the API until the state directory (a
// 512 KiB tmpfs) is full: the refusal is one clear error, and after a restart every
// VM defined before is intact.
func TestFullStateDirKeepsStore(t *testing.T) {
	if err := syscall.Geteuid(); err != 0 {
		t.Skip("mounting a small tmpfs needs root")
	}
	e := newTestEnv(t, "")
	if err := mkdirMount(e.StateDir); err != nil {
		t.Skipf("cannot mount a tmpfs here (%v): full-disk case untestable", err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(e.Dir+"/state", syscall.MNT_DETACH) })
	d := startDaemon(t, e)
	pad := "# " + strings.Repeat("x", 60000) + "\n"
	var defined []string
	var full error
	for i := 0; i < 40; i++ {
		name := fmt.Sprintf("full%02d", i)
		_, err := d.Client.Define(ctxT(t, 10*time.Second), api.DefineRequest{TOML: pad + vmTOML(name, "")})
		if err != nil {
			full = err
			break
		}
		defined = append(defined, name)
	}
	if full == nil {
		t.Fatal("a 512 KiB state directory never filled")
	}
	if !errors.Is(full, api.ErrUnavailable) || !strings.Contains(full.Error(), "state directory is full") || strings.Contains(full.Error(), "\n") {
		t.Fatalf("error on a full disk: %v", full)
	}
	if len(defined) == 0 {
		t.Fatal("nothing fit before the disk was full")
	}
	d.kill9()
	c := startDaemon(t, e).Client
	vms, err := c.List(ctxT(t, 10*time.Second))
	if err != nil || len(vms) != len(defined) {
		t.Fatalf("after restart: %d vms (%v), defined %d before the disk was full", len(vms), err, len(defined))
	}
	for i, v := range vms {
		if v.Name != defined[i] {
			t.Errorf("vm %d is %q, want %q", i, v.Name, defined[i])
		}
	}
}

func mkdirMount(dir string) error {
	if err := syscall.Mkdir(dir, 0o700); err != nil {
		return err
	}
	return syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=512k,mode=0700")
}

// TestTuneGC: snpd collects at gcPercent unless the operator set GOGC.
func TestTuneGC(t *testing.T) {
	orig := debug.SetGCPercent(100)
	defer debug.SetGCPercent(orig)
	t.Setenv("GOGC", "") // restored at cleanup
	os.Unsetenv("GOGC")
	tuneGC()
	if got := debug.SetGCPercent(100); got != gcPercent {
		t.Errorf("GOGC unset: gc percent %d, want %d", got, gcPercent)
	}
	t.Setenv("GOGC", "100")
	tuneGC()
	if got := debug.SetGCPercent(100); got != 100 {
		t.Errorf("GOGC=100 set: gc percent %d, want it left alone", got)
	}
}
