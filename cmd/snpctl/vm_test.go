package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/snpd/snpd/daemon/api"
)

// TestVMCommandsAgainstExampleConfig is the README's story from a clean clone: snpd
// runs config/examples/snpd.toml with --state-dir/--runtime-dir, then snpctl defines,
// starts, shows, logs, stops, kills and undefines config/examples/vm.toml's VM with the
// real QEMU, in tables and --json, and fails with one line when snpd is gone.
func TestVMCommandsAgainstExampleConfig(t *testing.T) {
	// No KVM needed: on platform "none" snpd runs the guest under TCG without it.
	for _, p := range []string{"/usr/bin/qemu-system-x86_64", "/usr/share/ovmf/OVMF.fd"} {
		if _, err := os.Stat(p); err != nil {
			t.Skipf("%s is missing (run scripts/install-deps.sh): %v", p, err)
		}
	}
	dir, err := os.MkdirTemp("", "snpctl-vm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	bin := filepath.Join(dir, "bin")
	for _, c := range []string{"snpd", "snpctl"} {
		goBuild(t, filepath.Join(bin, c), "../"+c)
	}
	state, run := filepath.Join(dir, "state"), filepath.Join(dir, "run")
	var dout bytes.Buffer
	d := exec.Command(filepath.Join(bin, "snpd"), "--config", "../../config/examples/snpd.toml", "--state-dir", state, "--runtime-dir", run)
	d.Stdout, d.Stderr = &dout, &dout
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = d.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = d.Process.Signal(syscall.SIGTERM)
		<-exited
		if t.Failed() {
			t.Logf("snpd output:\n%s", dout.String())
		}
	})
	socket := filepath.Join(run, "snpd.sock")
	snpctl := func(args ...string) (int, string, string) {
		t.Helper()
		cmd := exec.Command(filepath.Join(bin, "snpctl"), args...)
		cmd.Env = append(os.Environ(), "SNPD_SOCKET="+socket) // the env var, not --socket
		var o, e bytes.Buffer
		cmd.Stdout, cmd.Stderr = &o, &e
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return code, o.String(), e.String()
	}
	ok := func(args ...string) string {
		t.Helper()
		code, out, errOut := snpctl(args...)
		if code != 0 {
			t.Fatalf("snpctl %s: exit %d: %s", strings.Join(args, " "), code, errOut)
		}
		return out
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if code, _, _ := snpctl("status"); code == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("snpd did not come up:\n%s", dout.String())
		}
		time.Sleep(50 * time.Millisecond)
	}

	if out := ok("vm", "define", "../../config/examples/vm.toml"); !strings.Contains(out, "defined example") {
		t.Errorf("define: %q", out)
	}
	if out := ok("vm", "start", "example"); !strings.Contains(out, "example: running (pid ") {
		t.Errorf("start: %q", out)
	}
	out := ok("vm", "list")
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 2 || !strings.HasPrefix(lines[0], "NAME") || !strings.Contains(lines[1], "running") {
		t.Errorf("list table: %q", out)
	}
	var info api.VMInfo
	if err := json.Unmarshal([]byte(ok("--json", "vm", "show", "example")), &info); err != nil {
		t.Fatal(err)
	}
	var rec api.LaunchRecord
	if info.Last == nil || json.Unmarshal(info.Last.Record, &rec) != nil || len(rec.ExpectedDigest) != 96 || rec.PID != info.PID {
		t.Fatalf("show --json: %+v", info)
	}
	show := ok("vm", "show", "example")
	for _, want := range []string{"Expected digest:", rec.ExpectedDigest, "Firmware sha256:", "Argv:", "running"} {
		if !strings.Contains(show, want) {
			t.Errorf("show lacks %q:\n%s", want, show)
		}
	}
	var st api.Status
	if err := json.Unmarshal([]byte(ok("status", "--json")), &st); err != nil || st.VMs[api.StateRunning] != 1 || st.Platform != "none" {
		t.Errorf("status --json: %v %+v", err, st)
	}
	ok("vm", "log", "example") // may be empty this early; must not fail
	if code, _, e := snpctl("vm", "start", "example"); code == 0 || !strings.Contains(e, "already running") || strings.Count(e, "\n") != 1 {
		t.Errorf("second start: exit %d %q", code, e)
	}
	if out := ok("vm", "stop", "--timeout", "1s", "example"); !strings.Contains(out, "example: stopped") {
		t.Errorf("stop: %q", out)
	}
	if code, _, e := snpctl("vm", "kill", "example"); code == 0 || !strings.Contains(e, "not running") {
		t.Errorf("kill of a stopped vm: exit %d %q", code, e)
	}
	ok("vm", "undefine", "example")
	if code, _, e := snpctl("vm", "show", "example"); code == 0 || !strings.Contains(e, "not defined") {
		t.Errorf("show after undefine: exit %d %q", code, e)
	}
	if code, _, e := snpctl("vm", "define", filepath.Join(dir, "missing.toml")); code == 0 || !strings.HasPrefix(e, "Error: reading definition") {
		t.Errorf("define of a missing file: exit %d %q", code, e)
	}

	_ = d.Process.Signal(syscall.SIGTERM)
	<-exited
	code, _, e := snpctl("vm", "list")
	if code == 0 || e != "Error: snpd is not running (no answer on "+socket+"): systemctl status snpd\n" {
		t.Errorf("snpd gone: exit %d %q", code, e)
	}
}
