package systemdtest

import (
	"os"
	"path/filepath"
	"testing"
)

func writeFiles(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for p, v := range files {
		p = filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestReadCgroupLimits(t *testing.T) {
	const cg = `/machine.slice/machine-web.scope`
	v1 := t.TempDir()
	writeFiles(t, v1, map[string]string{
		"cpu" + cg + "/cpu.shares":                 "512",
		"memory" + cg + "/memory.limit_in_bytes":   "67108864",
		"pids" + cg + "/pids.max":                  "max",
		"memory/other.scope/memory.limit_in_bytes": "9223372036854771712",
	})
	l, err := ReadCgroupLimits(v1, cg)
	if err != nil {
		t.Fatal(err)
	}
	if want := (CgroupLimits{CPUShares: 512, MemoryMax: 64 << 20, TasksMax: -1}); l != want {
		t.Errorf("v1: %+v, want %+v", l, want)
	}
	if _, err := ReadCgroupLimits(v1, "/other.scope"); err == nil {
		t.Error("v1 without cpu.shares and pids.max: no error")
	}

	v2 := t.TempDir()
	writeFiles(t, v2, map[string]string{
		"cgroup.controllers":   "cpu memory pids",
		cg[1:] + "/cpu.weight": "50",
		cg[1:] + "/memory.max": "max",
		cg[1:] + "/pids.max":   "17",
	})
	l, err = ReadCgroupLimits(v2, cg)
	if err != nil {
		t.Fatal(err)
	}
	if want := (CgroupLimits{Unified: true, CPUWeight: 50, MemoryMax: -1, TasksMax: 17}); l != want {
		t.Errorf("v2: %+v, want %+v", l, want)
	}
	writeFiles(t, v2, map[string]string{cg[1:] + "/pids.max": "lots"})
	if _, err := ReadCgroupLimits(v2, cg); err == nil {
		t.Error("pids.max \"lots\": no error")
	}
}

func TestCPUWeightToShares(t *testing.T) {
	for w, want := range map[uint64]uint64{1: 10, 50: 512, 100: 1024, 200: 2048, 10000: 102400, 0: 2, 1 << 20: 262144} {
		if got := CPUWeightToShares(w); got != want {
			t.Errorf("CPUWeightToShares(%d) = %d, want %d", w, got, want)
		}
	}
}

func TestProcessCgroups(t *testing.T) {
	cg, err := ProcessCgroups("/proc", os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if len(cg) == 0 {
		t.Fatal("no hierarchies in /proc/self/cgroup")
	}
	root := t.TempDir()
	writeFiles(t, root, map[string]string{"7/cgroup": "1:cpu:/a\n0::/b"})
	cg, err = ProcessCgroups(root, 7)
	if err != nil || cg["cpu"] != "/a" || cg[""] != "/b" {
		t.Errorf("ProcessCgroups = %v, %v", cg, err)
	}
	writeFiles(t, root, map[string]string{"8/cgroup": "garbage"})
	if _, err := ProcessCgroups(root, 8); err == nil {
		t.Error("malformed /proc/PID/cgroup: no error")
	}
}
