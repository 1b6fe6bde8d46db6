package daemon

import (
	"encoding/json"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coreos/go-systemd/v22/unit"

	"github.com/snpd/snpd/daemon/api"
	"github.com/snpd/snpd/systemd"
	"github.com/snpd/snpd/systemd/systemdtest"
)

// TestGuestScopesUnderSystemd runs snpd under a real systemd (PID 1, with
// systemd-machined, in a container): a guest's QEMU runs in a scope of its own in
// machine.slice, registered as machine snpd-<vm>, with the VM's cpu_weight,
// memory_max_mib and tasks_max read back from its cgroup; the guest survives a SIGKILL
// of snpd (it is not in snpd's cgroup) and is reattached; its machine goes when it ends.
func TestGuestScopesUnderSystemd(t *testing.T) {
	if !systemdtest.Inside() {
		systemdtest.Container(t).RunTest(t)
		return
	}
	needQEMU(t)
	e := newTestEnv(t, "")
	d := startDaemon(t, e)
	mustDefine(t, d.Client, "scoped", "cpu_weight = 300\nmemory_max_mib = 512\ntasks_max = 64\n")
	info, err := d.Client.Start(ctxT(t, 2*time.Minute), "scoped")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(info.PID, syscall.SIGKILL) })
	var rec api.LaunchRecord
	if err := json.Unmarshal(info.Last.Record, &rec); err != nil {
		t.Fatal(err)
	}
	scope := "machine-" + unit.UnitNameEscape(systemd.MachineName("scoped")) + ".scope"
	if rec.Cgroup != scope {
		t.Errorf("record says the guest runs in %q, want %q", rec.Cgroup, scope)
	}
	cg, err := systemdtest.ProcessCgroups("/proc", info.PID)
	if err != nil {
		t.Fatal(err)
	}
	path := cg["name=systemd"]
	if path == "" {
		path = cg[""]
	}
	if path != "/machine.slice/"+scope {
		t.Fatalf("qemu %d is in %q, want /machine.slice/%s", info.PID, path, scope)
	}
	l, err := systemdtest.ReadCgroupLimits("/sys/fs/cgroup", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: %+v", path, l)
	if (l.Unified && l.CPUWeight != 300) || (!l.Unified && l.CPUShares != systemdtest.CPUWeightToShares(300)) ||
		l.MemoryMax != 512<<20 || l.TasksMax != 64 {
		t.Errorf("limits of %s: %+v; want cpu weight 300, memory 512 MiB, 64 tasks", path, l)
	}
	machines := func() string {
		out, err := exec.Command("machinectl", "list", "--no-legend", "--no-pager").CombinedOutput()
		if err != nil {
			t.Fatalf("machinectl list: %v %s", err, out)
		}
		return string(out)
	}
	if out := machines(); !strings.Contains(out, "snpd-scoped") {
		t.Errorf("machinectl list does not show snpd-scoped:\n%s", out)
	}

	d.kill9()
	if !pidAlive(info.PID) {
		t.Fatal("the guest died with snpd")
	}
	d2 := startDaemon(t, e)
	waitReattached(t, d2.Client)
	if si, err := vmState(d2.Client, "scoped"); err != nil || si.State != api.StateRunning || si.PID != info.PID {
		t.Fatalf("after the restart: %v %+v", err, si)
	}
	if _, err := d2.Client.Kill(ctxT(t, 30*time.Second), "scoped"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the machine to go", 10*time.Second, func() (bool, error) {
		return !strings.Contains(machines(), "snpd-scoped"), nil
	})
}
