package systemd

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
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
