package daemon

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/snpd/snpd/config"
	"github.com/snpd/snpd/daemon/api"
	"github.com/snpd/snpd/daemon/launch"
	"github.com/snpd/snpd/daemon/store"
)

// sleepManager returns a Manager on a fresh store whose starts run /bin/sleep in place
// of QEMU (the Manager only needs a pid to watch); the start of a VM named "fails" is
// refused. Both are closed at cleanup.
func sleepManager(t *testing.T) (*Manager, *store.Store) {
	t.Helper()
	s, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	dir := t.TempDir()
	start := func(ctx context.Context, vm *config.VM, h startHooks) (vmProcess, error) {
		if vm.Name == "fails" {
			return nil, errors.New("refused by the test")
		}
		inst, _, err := launch.StartProcess("/bin/sleep", []string{"60"}, nil, filepath.Join(dir, vm.Name+".stderr"))
		if err != nil {
			return nil, err
		}
		if err := h.BeforeCont(&api.LaunchRecord{PID: inst.PID, StartTicks: inst.StartTicks, Argv: []string{"/bin/sleep", "60"}}); err != nil {
			inst.Kill()
			return nil, err
		}
		return instanceProc{inst}, nil
	}
	m := NewManager(ManagerOptions{Store: s, Start: start, Validate: validateDefinition, RuntimeDir: dir})
	t.Cleanup(m.Close)
	return m, s
}

// listMatchingGet lists the VMs and reports every row that differs from the summary Get
// gives the same VM; step names the moment in the errors.
func listMatchingGet(t *testing.T, m *Manager, step string) []api.VMSummary {
	t.Helper()
	list, err := m.List()
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range list {
		info, err := m.Get(v.Name)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(v, info.VMSummary) {
			t.Errorf("%s: list row %+v\n     get %+v", step, v, info.VMSummary)
		}
	}
	return list
}

// TestListMatchesGet checks that the list path (one read transaction, partial decoding)
// gives every VM exactly the summary Get gives it, for a VM never started, one whose
// start failed, one stopped after runs, and one running.
func TestListMatchesGet(t *testing.T) {
	m, _ := sleepManager(t)
	for _, d := range []struct{ name, extra string }{
		{"never", "restart = \"never\"\n"}, {"fails", ""}, {"stopped", "restart = \"on-crash\"\n"}, {"running", "[snp]\nguest_features = 1\n"},
	} {
		if _, err := m.Define(api.DefineRequest{File: d.name + ".toml", TOML: vmTOML(d.name, d.extra)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	if _, err := m.Start(ctx, "fails"); err == nil {
		t.Fatal("start of fails succeeded")
	}
	for range 2 {
		if _, err := m.Start(ctx, "stopped"); err != nil {
			t.Fatal(err)
		}
		if _, err := m.Kill(ctx, "stopped"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := m.Start(ctx, "running"); err != nil {
		t.Fatal(err)
	}
	defer m.Kill(ctx, "running")

	list := listMatchingGet(t, m, "mixed")
	var names []string
	for _, v := range list {
		names = append(names, v.Name)
	}
	if want := []string{"fails", "never", "running", "stopped"}; !reflect.DeepEqual(names, want) {
		t.Fatalf("listed %q, want %q", names, want)
	}
	// The rows are not all alike, so the comparison above covers every branch.
	want := map[string]struct {
		state  api.State
		starts int
		pid    bool
		vcpus  int
	}{
		"fails": {api.StateFailed, 1, false, 1}, "never": {api.StateStopped, 0, false, 1},
		"running": {api.StateRunning, 1, true, 1}, "stopped": {api.StateStopped, 2, false, 1},
	}
	for _, v := range list {
		w := want[v.Name]
		if v.State != w.state || v.Starts != w.starts || (v.PID != 0) != w.pid || v.VCPUs != w.vcpus || v.MemoryMiB != 64 {
			t.Errorf("%s: %+v, want %+v", v.Name, v, w)
		}
	}
	if list[3].Restart != "on-crash" {
		t.Errorf("stopped: restart %q", list[3].Restart)
	}
}

// TestListMemoNeverStale lists after every kind of change (define, redefine with other
// values, start, kill, undefine): each list row still equals Get's summary, so the
// decoded rows Store.ListRows remembers are never served after the stored bytes changed, and
// an undefined VM is forgotten.
func TestListMemoNeverStale(t *testing.T) {
	m, _ := sleepManager(t)
	ctx := context.Background()
	check := func(step string, want int) {
		t.Helper()
		if list := listMatchingGet(t, m, step); len(list) != want {
			t.Fatalf("%s: %d vms listed, want %d", step, len(list), want)
		}
	}
	define := func(name string) {
		t.Helper()
		if _, err := m.Define(api.DefineRequest{File: name + ".toml", TOML: vmTOML(name, "")}, nil); err != nil {
			t.Fatal(err)
		}
	}
	define("a")
	define("b")
	check("defined", 2)
	redef := fmt.Sprintf("name = \"a\"\nvcpus = 3\nmemory_mib = 128\nfirmware = %q\nrestart = \"on-crash\"\n", testFirmware)
	if _, err := m.Define(api.DefineRequest{File: "a.toml", TOML: redef, Replace: true}, nil); err != nil {
		t.Fatal(err)
	}
	check("redefined", 2)
	if l, _ := m.List(); l[0].VCPUs != 3 || l[0].MemoryMiB != 128 || l[0].Restart != "on-crash" {
		t.Errorf("redefined a listed as %+v", l[0])
	}
	if _, err := m.Start(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	check("started", 2)
	if _, err := m.Kill(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	check("killed", 2)
	if l, _ := m.List(); l[1].State != api.StateStopped || l[1].Starts != 1 {
		t.Errorf("killed b listed as %+v", l[1])
	}
	if err := m.Undefine("a"); err != nil {
		t.Fatal(err)
	}
	check("undefined", 1)
	// That the store's memo forgets the undefined VM is store.TestListRowsForgetsUndefined.
}
