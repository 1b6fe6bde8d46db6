package launch

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// Limits are a guest's cgroup settings (vm.toml cpu_weight, memory_max_mib, tasks_max).
// Zero means not set: the cgroup's default.
type Limits struct {
	// CPUWeight is the cgroup CPU weight, 1..10000 (cpu.weight, CPUWeight=).
	CPUWeight uint64
	// MemoryMax is the memory limit in bytes (memory.max, MemoryMax=).
	MemoryMax uint64
	// TasksMax is the most threads (pids.max, TasksMax=).
	TasksMax uint64
}

// Placer puts a guest's QEMU in a cgroup of its own. Implementations: systemd's (a
// transient scope in machine.slice registered with systemd-machined, package systemd)
// and CgroupPlacer (a subtree of snpd's own delegated cgroup v2).
type Placer interface {
	// Place moves process pid, the QEMU of VM name (paused before its first
	// instruction), with all its threads into a cgroup of its own with lim applied,
	// and returns where it went (a unit name or cgroup path) for the launch record.
	Place(ctx context.Context, name string, pid int, lim Limits) (string, error)
}

// CgroupPlacer places guests in snpd's own cgroup v2 subtree, for hosts without
// systemd whose snpd runs in a delegated cgroup: snpd moves itself into the leaf
// <own>/snpd and each guest gets <own>/vm-<name>, with cpu.weight, memory.max and
// pids.max written before its QEMU is moved in.
type CgroupPlacer struct {
	// Dir is snpd's own cgroup directory (cgroupfs path).
	Dir string

	mu sync.Mutex
}

// cgroupControllers are the controllers a guest cgroup needs.
var cgroupControllers = []string{"cpu", "memory", "pids"}

// NewCgroupPlacer sets up snpd's delegated cgroup v2 subtree: it finds snpd's cgroup
// (/proc/self/cgroup's "0::" line) under the cgroup2 mount fsRoot ("": /sys/fs/cgroup
// if that is cgroup2, else /sys/fs/cgroup/unified), checks that the cpu, memory and
// pids controllers are available there and writable, moves snpd into <own>/snpd and
// enables the controllers for the guests' cgroups. It changes nothing when any check
// fails, and the error says why (snpd then runs guests in its own cgroup).
func NewCgroupPlacer(fsRoot string) (*CgroupPlacer, error) {
	if fsRoot == "" {
		fsRoot = "/sys/fs/cgroup"
		var st unix.Statfs_t
		if err := unix.Statfs(fsRoot, &st); err != nil || st.Type != unix.CGROUP2_SUPER_MAGIC {
			fsRoot = "/sys/fs/cgroup/unified"
		}
	}
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return nil, fmt.Errorf("reading /proc/self/cgroup: %w", err)
	}
	own, ok := ownCgroupV2(b)
	if !ok {
		return nil, errors.New("no cgroup v2 membership in /proc/self/cgroup")
	}
	return setupCgroupPlacer(filepath.Join(fsRoot, own))
}

// setupCgroupPlacer is NewCgroupPlacer for snpd's cgroup directory dir.
func setupCgroupPlacer(dir string) (*CgroupPlacer, error) {
	ctrl, err := os.ReadFile(filepath.Join(dir, "cgroup.controllers"))
	if err != nil {
		return nil, fmt.Errorf("reading the controllers of snpd's cgroup %s: %w", dir, err)
	}
	have := strings.Fields(string(ctrl))
	for _, c := range cgroupControllers {
		if !slices.Contains(have, c) {
			return nil, fmt.Errorf("snpd's cgroup %s lacks the %s controller (has %q): it is not delegated with cpu, memory and pids", dir, c, have)
		}
	}
	if err := unix.Access(dir, unix.W_OK); err != nil {
		return nil, fmt.Errorf("snpd's cgroup %s is not writable (not delegated): %w", dir, err)
	}
	// No internal processes: snpd leaves <own> for a leaf before the controllers are
	// enabled for <own>'s children.
	leaf := filepath.Join(dir, "snpd")
	if err := os.Mkdir(leaf, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("creating %s: %w", leaf, err)
	}
	if err := moveProcs(dir, leaf); err != nil {
		return nil, err
	}
	enable := "+" + strings.Join(cgroupControllers, " +")
	if err := os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte(enable), 0); err != nil {
		return nil, fmt.Errorf("enabling %s in %s: %w", enable, dir, err)
	}
	return &CgroupPlacer{Dir: dir}, nil
}

// ownCgroupV2 returns the path of the "0::" (cgroup v2) line of /proc/PID/cgroup.
func ownCgroupV2(b []byte) (string, bool) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if p, ok := strings.CutPrefix(sc.Text(), "0::"); ok && strings.HasPrefix(p, "/") {
			return p, true
		}
	}
	return "", false
}

// moveProcs moves every process of cgroup from into cgroup to.
func moveProcs(from, to string) error {
	b, err := os.ReadFile(filepath.Join(from, "cgroup.procs"))
	if err != nil {
		return fmt.Errorf("reading %s: %w", from, err)
	}
	for _, f := range strings.Fields(string(b)) {
		if err := os.WriteFile(filepath.Join(to, "cgroup.procs"), []byte(f), 0); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("moving process %s into %s: %w", f, to, err)
		}
	}
	return nil
}

// Place creates <Dir>/vm-<name> (or reuses an empty one), writes lim and moves pid in.
func (c *CgroupPlacer) Place(_ context.Context, name string, pid int, lim Limits) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	dir := filepath.Join(c.Dir, "vm-"+name)
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return "", fmt.Errorf("creating cgroup %s: %w", dir, err)
	}
	write := func(file, v string) error {
		if err := os.WriteFile(filepath.Join(dir, file), []byte(v), 0); err != nil {
			return fmt.Errorf("writing %s of %s: %w", file, dir, err)
		}
		return nil
	}
	values := map[string]string{"cpu.weight": "100", "memory.max": "max", "pids.max": "max"}
	if lim.CPUWeight != 0 {
		values["cpu.weight"] = strconv.FormatUint(lim.CPUWeight, 10)
	}
	if lim.MemoryMax != 0 {
		values["memory.max"] = strconv.FormatUint(lim.MemoryMax, 10)
	}
	if lim.TasksMax != 0 {
		values["pids.max"] = strconv.FormatUint(lim.TasksMax, 10)
	}
	for _, f := range []string{"cpu.weight", "memory.max", "pids.max"} {
		if err := write(f, values[f]); err != nil {
			return "", err
		}
	}
	if err := write("cgroup.procs", strconv.Itoa(pid)); err != nil {
		return "", err
	}
	return dir, nil
}
