package systemd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// unitPrivileges returns setpriv(1) arguments that give a process what snpd.service
// gives snpd and its QEMU children: the capability bounding set and no_new_privs.
func unitPrivileges(t *testing.T, dropCap string) []string {
	t.Helper()
	u := unitValues(t, "snpd.service")
	if v := u["Service.NoNewPrivileges"]; len(v) != 1 || v[0] != "yes" {
		t.Fatalf("NoNewPrivileges = %q", v)
	}
	bset := "-all"
	for _, c := range strings.Fields(strings.Join(u["Service.CapabilityBoundingSet"], " ")) {
		if c == dropCap {
			continue
		}
		bset += ",+" + strings.ToLower(strings.TrimPrefix(c, "CAP_"))
	}
	return []string{"--no-new-privs", "--bounding-set=" + bset, "--inh-caps=-all", "--"}
}

func setprivOrSkip(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("not root: dropping capabilities to the unit's set with setpriv needs root")
	}
	p, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("setpriv not installed (Debian package util-linux)")
	}
	return p
}

// TestUnitCapabilitySetIsWhatProcessesGet checks the translation used below: a process
// started with the unit's privileges has exactly CAP_NET_ADMIN and CAP_CHOWN bounded.
func TestUnitCapabilitySetIsWhatProcessesGet(t *testing.T) {
	sp := setprivOrSkip(t)
	out, err := exec.Command(sp, append(unitPrivileges(t, ""), "cat", "/proc/self/status")...).CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	const want = 1<<12 | 1<<0 // CAP_NET_ADMIN (12), CAP_CHOWN (0)
	if !strings.Contains(string(out), fmt.Sprintf("CapBnd:\t%016x\n", want)) || !strings.Contains(string(out), "NoNewPrivs:\t1\n") {
		t.Errorf("status under the unit's privileges:\n%s", out)
	}
}

// TestQEMURunsWithTheUnitsPrivileges runs the real QEMU with only what snpd.service
// allows (bounding set, no_new_privs, no DAC override), with KVM when present, QEMU's
// own seccomp sandbox (which must install without CAP_SYS_ADMIN) and a tap device, and
// shows CAP_NET_ADMIN is what makes the tap possible: without it QEMU fails.
func TestQEMURunsWithTheUnitsPrivileges(t *testing.T) {
	sp := setprivOrSkip(t)
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 not installed (scripts/install-deps.sh installs it)")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skip("no /dev/net/tun: cannot test tap creation")
	}
	accel := "tcg"
	if _, err := os.Stat("/dev/kvm"); err == nil {
		accel = "kvm"
	}
	run := func(dropCap string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		args := append(unitPrivileges(t, dropCap), qemu,
			"-machine", "q35,accel="+accel, "-nodefaults", "-no-user-config", "-display", "none", "-S", "-m", "64",
			"-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
			"-netdev", fmt.Sprintf("tap,id=n0,ifname=snpdt%d,script=no,downscript=no", os.Getpid()%100000),
			"-qmp", "stdio")
		cmd := exec.CommandContext(ctx, sp, args...)
		cmd.Stdin = strings.NewReader(`{"execute":"qmp_capabilities"}` + "\n" + `{"execute":"query-kvm"}` + "\n" + `{"execute":"quit"}` + "\n")
		out, err := cmd.CombinedOutput()
		t.Logf("%s %s: %v\n%s", sp, strings.Join(args, " "), err, out)
		return string(out), err
	}
	out, err := run("")
	if err != nil || !strings.Contains(out, `"host-qmp-quit"`) {
		t.Fatalf("QEMU under the unit's privileges did not run to a QMP quit: %v", err)
	}
	if accel == "kvm" && !strings.Contains(out, `"enabled": true`) {
		t.Errorf("KVM not enabled under the unit's privileges")
	}
	out, _ = run("CAP_NET_ADMIN")
	if !strings.Contains(out, "Operation not permitted") {
		t.Errorf("QEMU created a tap without CAP_NET_ADMIN; the capability may be unnecessary")
	}
}

// TestReattachNeedsNoMoreThanTheUnitGives checks what a restarted snpd does to a QEMU
// it did not start (reattach): with only the unit's privileges, a sibling process can
// read the QEMU's /proc/PID/exe and stat (no CAP_SYS_PTRACE needed) and kill it when
// found half-started (no CAP_KILL needed).
func TestReattachNeedsNoMoreThanTheUnitGives(t *testing.T) {
	sp := setprivOrSkip(t)
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 not installed (scripts/install-deps.sh installs it)")
	}
	qemuReal, err := filepath.EvalSymlinks(qemu)
	if err != nil {
		t.Fatal(err)
	}
	privs := unitPrivileges(t, "")
	args := append(append([]string(nil), privs...), qemu, "-machine", "q35,accel=tcg", "-nodefaults",
		"-no-user-config", "-display", "none", "-S", "-m", "64",
		"-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny", "-qmp", "stdio")
	cmd := exec.Command(sp, args...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	greeting := make([]byte, 64)
	if _, err := io.ReadAtLeast(stdout, greeting, 8); err != nil || !strings.Contains(string(greeting), "QMP") {
		t.Fatalf("no QMP greeting from QEMU: %q %v", greeting, err)
	}
	pid := strconv.Itoa(cmd.Process.Pid) // setpriv execs QEMU: same pid

	sibling := func(argv ...string) (string, error) {
		out, err := exec.Command(sp, append(append([]string(nil), privs...), argv...)...).CombinedOutput()
		t.Logf("%s: %v: %s", strings.Join(argv, " "), err, out)
		return strings.TrimSpace(string(out)), err
	}
	if exe, err := sibling("readlink", "/proc/"+pid+"/exe"); err != nil || exe != qemuReal {
		t.Errorf("reading QEMU's executable under the unit's privileges: %q, %v; want %s", exe, err, qemuReal)
	}
	if stat, err := sibling("cat", "/proc/"+pid+"/stat"); err != nil || !strings.HasPrefix(stat, pid+" (qemu-system-x86") {
		t.Errorf("reading QEMU's stat (start time): %q, %v", stat, err)
	}
	if _, err := sibling("kill", "-KILL", pid); err != nil {
		t.Errorf("killing a half-started QEMU under the unit's privileges: %v", err)
	}
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Errorf("QEMU ended with %v, want killed by SIGKILL", err)
	}
}
