package launch

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeCgroup makes a directory that looks like a cgroup v2 directory with the given
// controllers and processes (cgroupfs writes become file contents).
func fakeCgroup(t *testing.T, controllers, procs string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "system.slice", "snpd.service")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for f, v := range map[string]string{"cgroup.controllers": controllers, "cgroup.procs": procs, "cgroup.subtree_control": ""} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestCgroupPlacer: on a delegated cgroup v2 directory snpd moves itself into the leaf
// snpd/, enables cpu, memory and pids for its children, and each guest gets vm-<name>/
// with its limits written before its pid is moved in (unset ones: the defaults).
func TestCgroupPlacer(t *testing.T) {
	dir := fakeCgroup(t, "cpuset cpu io memory pids\n", "4242\n")
	c, err := setupCgroupPlacer(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(dir, "snpd", "cgroup.procs")); got != "4242" {
		t.Errorf("snpd's leaf has procs %q, want snpd's pid moved there", got)
	}
	if got := readFile(t, filepath.Join(dir, "cgroup.subtree_control")); got != "+cpu +memory +pids" {
		t.Errorf("subtree_control %q", got)
	}
	where, err := c.Place(context.Background(), "web", 777, Limits{CPUWeight: 300, MemoryMax: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	vm := filepath.Join(dir, "vm-web")
	if where != vm {
		t.Errorf("placed in %q, want %q", where, vm)
	}
	for f, want := range map[string]string{"cpu.weight": "300", "memory.max": "1073741824", "pids.max": "max", "cgroup.procs": "777"} {
		if got := readFile(t, filepath.Join(vm, f)); got != want {
			t.Errorf("%s = %q, want %q", f, got, want)
		}
	}
}

// TestCgroupPlacerNeedsDelegation: without the controllers (as on a hybrid host whose
// cpu, memory and pids are bound to cgroup v1), nothing is created or moved, and the
// error names what is missing.
func TestCgroupPlacerNeedsDelegation(t *testing.T) {
	dir := fakeCgroup(t, "hugetlb\n", "4242\n")
	_, err := setupCgroupPlacer(dir)
	if err == nil || !strings.Contains(err.Error(), "lacks the cpu controller") {
		t.Fatalf("got %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "snpd")); !os.IsNotExist(err) {
		t.Errorf("a leaf was created although the setup failed: %v", err)
	}
}

// TestNewCgroupPlacerHere runs the real detection on this host: it either sets up the
// subtree or says why not, in one line; it never fails half-way silently.
func TestNewCgroupPlacerHere(t *testing.T) {
	c, err := NewCgroupPlacer(t.TempDir()) // an empty mount: never delegated
	if err == nil || c != nil || strings.Contains(err.Error(), "\n") {
		t.Fatalf("NewCgroupPlacer on an empty directory: %v, %v", c, err)
	}
}

func TestOwnCgroupV2(t *testing.T) {
	for in, want := range map[string]string{
		"12:pids:/\n0::/system.slice/snpd.service\n": "/system.slice/snpd.service",
		"0::/\n":                "/",
		"4:memory:/x\n":         "",
		"0::relative\n0::/ok\n": "/ok",
	} {
		got, ok := ownCgroupV2([]byte(in))
		if got != want || ok != (want != "") {
			t.Errorf("ownCgroupV2(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
}

func FuzzOwnCgroupV2(f *testing.F) {
	f.Add([]byte("0::/system.slice/snpd.service\n"))
	f.Add([]byte("1:name=systemd:/\n0::/\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, ok := ownCgroupV2(b)
		if ok != strings.HasPrefix(p, "/") || strings.Contains(p, "\n") {
			t.Fatalf("ownCgroupV2(%q) = %q, %v", b, p, ok)
		}
	})
}
