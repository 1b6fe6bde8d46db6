package systemd

import (
	"context"
	"os/exec"
	"strings"
	"testing"

	"github.com/coreos/go-systemd/v22/unit"

	"github.com/snpd/snpd/systemd/systemdtest"
)

func TestMachineName(t *testing.T) {
	for vm, want := range map[string]string{
		"web":     "snpd-web",
		"web.eu1": "snpd-web.eu1",
		"a-b":     "snpd-a-b",
	} {
		if got := MachineName(vm); got != want {
			t.Errorf("MachineName(%q) = %q, want %q", vm, got, want)
		}
	}
	// Names machined would refuse are hashed, distinctly.
	seen := map[string]string{}
	for _, vm := range []string{"web_1", "web-", "a..b", "x.", "a.-b", strings.Repeat("v", 63)} {
		got := MachineName(vm)
		if !validHostname(got) || !strings.HasPrefix(got, "snpd-") || len(got) != len("snpd-")+16 {
			t.Errorf("MachineName(%q) = %q: not a hashed host name", vm, got)
		}
		if other, ok := seen[got]; ok {
			t.Errorf("%q and %q map to the same machine %s", vm, other, got)
		}
		seen[got] = vm
	}
}

// TestMachinesPlace runs in a real systemd (PID 1, with systemd-machined) in a
// container: Place registers the process as a machine whose scope, in machine.slice,
// has the limits (read back from cgroupfs), and machinectl list shows it; without
// machined, StartTransientUnit gives it a scope of its own with the limits.
func TestMachinesPlace(t *testing.T) {
	if !systemdtest.Inside() {
		systemdtest.Container(t).RunTest(t)
		return
	}
	ctx := context.Background()
	m, err := DetectMachines(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if !m.Registered() {
		t.Fatal("systemd-machined runs in the container, but Machines does not use it")
	}
	check := func(pid int, wantUnit string, weight, mem, tasks uint64) {
		t.Helper()
		cg, err := systemdtest.ProcessCgroups("/proc", pid)
		if err != nil {
			t.Fatal(err)
		}
		path := cg["name=systemd"]
		if path == "" {
			path = cg[""]
		}
		if !strings.HasPrefix(path, "/machine.slice/") || !strings.HasSuffix(path, "/"+wantUnit) {
			t.Fatalf("process %d is in %q, want /machine.slice/.../%s", pid, path, wantUnit)
		}
		l, err := systemdtest.ReadCgroupLimits("/sys/fs/cgroup", path)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: %+v", path, l)
		if l.Unified {
			if l.CPUWeight != weight {
				t.Errorf("cpu.weight %d, want %d", l.CPUWeight, weight)
			}
		} else if want := systemdtest.CPUWeightToShares(weight); l.CPUShares != want {
			t.Errorf("cpu.shares %d, want %d (CPUWeight %d)", l.CPUShares, want, weight)
		}
		if mem != 0 && l.MemoryMax != int64(mem) {
			t.Errorf("memory limit %d, want %d", l.MemoryMax, mem)
		}
		if tasks != 0 && l.TasksMax != int64(tasks) {
			t.Errorf("pids.max %d, want %d", l.TasksMax, tasks)
		}
	}
	sleeper := func() int {
		cmd := exec.Command("sleep", "600")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		return cmd.Process.Pid
	}

	pid := sleeper()
	u, err := m.Place(ctx, "web_1", pid, 200, 64<<20, 64)
	if err != nil {
		t.Fatal(err)
	}
	want := "machine-" + unit.UnitNameEscape(MachineName("web_1")) + ".scope"
	if u != want {
		t.Errorf("unit %q, want %q", u, want)
	}
	check(pid, want, 200, 64<<20, 64)
	out, err := exec.Command("machinectl", "list", "--no-legend", "--no-pager").CombinedOutput()
	if err != nil || !strings.Contains(string(out), MachineName("web_1")) || !strings.Contains(string(out), "vm") {
		t.Errorf("machinectl list: %v\n%s", err, out)
	}

	// Without machined: a plain transient scope.
	plain, err := newManagerOnly(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	pid2 := sleeper()
	u2, err := plain.Place(ctx, "db", pid2, 50, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if u2 != ScopeName("db") {
		t.Errorf("unit %q, want %q", u2, ScopeName("db"))
	}
	check(pid2, u2, 50, 0, 0)
}
