package systemdtest

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// CgroupLimits are the resource limits of one cgroup as the kernel has them, read from
// cgroupfs: what systemd wrote for a unit's CPUWeight=, MemoryMax= and TasksMax=.
type CgroupLimits struct {
	// Unified is true when the limits came from a cgroup v2 hierarchy (cpu.weight,
	// memory.max, pids.max), false for v1 controllers (cpu.shares,
	// memory.limit_in_bytes, pids.max).
	Unified bool
	// CPUWeight is cpu.weight (v2; 1..10000, default 100), 0 on v1.
	CPUWeight uint64
	// CPUShares is cpu.shares (v1; 2..262144, default 1024), 0 on v2. systemd writes
	// CPUWeightToShares(CPUWeight=) here.
	CPUShares uint64
	// MemoryMax is memory.max (v2) or memory.limit_in_bytes (v1) in bytes, -1 when
	// unlimited ("max" on v2; on v1 the page-rounded maximum the kernel reports).
	MemoryMax int64
	// TasksMax is pids.max, -1 when "max".
	TasksMax int64
}

// CPUWeightToShares is systemd's mapping of CPUWeight= to cpu.shares on cgroup v1
// (cgroup_cpu_weight_to_shares: weight*1024/100, clamped to 2..262144).
func CPUWeightToShares(weight uint64) uint64 {
	s := weight * 1024 / 100
	return min(max(s, 2), 262144)
}

// v1MemoryUnlimited is the smallest value the kernel reports in memory.limit_in_bytes
// for "no limit" (PAGE_COUNTER_MAX pages; 9223372036854771712 with 4 KiB pages).
const v1MemoryUnlimited = 1 << 62

// ReadCgroupLimits reads the limits of cgroup (a path such as
// "/machine.slice/machine-web.scope", as systemd's ControlGroup property or
// /proc/PID/cgroup give it) under fsroot, the cgroupfs mount: "/sys/fs/cgroup" for this
// process's view, or SystemdContainer.HostPath("/sys/fs/cgroup") for a container's seen
// from the host. On a pure cgroup v2 mount it reads the v2 files; otherwise (legacy or
// hybrid) the v1 cpu, memory and pids hierarchies, where systemd puts the limits when the
// v2 hierarchy has no controllers.
func ReadCgroupLimits(fsroot, cgroup string) (CgroupLimits, error) {
	var l CgroupLimits
	var errs []error
	read := func(path string) string {
		b, err := os.ReadFile(path)
		if err != nil {
			errs = append(errs, err)
			return ""
		}
		return strings.TrimSpace(string(b))
	}
	num := func(path string) int64 {
		s := read(path)
		if s == "" {
			return 0
		}
		if s == "max" {
			return -1
		}
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %q is not a number", path, s))
			return 0
		}
		if n >= v1MemoryUnlimited {
			return -1
		}
		return int64(n)
	}
	if _, err := os.Stat(filepath.Join(fsroot, "cgroup.controllers")); err == nil {
		l.Unified = true
		dir := filepath.Join(fsroot, cgroup)
		l.CPUWeight = uint64(num(filepath.Join(dir, "cpu.weight")))
		l.MemoryMax = num(filepath.Join(dir, "memory.max"))
		l.TasksMax = num(filepath.Join(dir, "pids.max"))
	} else {
		l.CPUShares = uint64(num(filepath.Join(fsroot, "cpu", cgroup, "cpu.shares")))
		l.MemoryMax = num(filepath.Join(fsroot, "memory", cgroup, "memory.limit_in_bytes"))
		l.TasksMax = num(filepath.Join(fsroot, "pids", cgroup, "pids.max"))
	}
	return l, errors.Join(errs...)
}

// ProcessCgroups returns the cgroup of process pid in each hierarchy, from
// /proc/PID/cgroup (procRoot "/proc", or a container's seen from the host): keys are the
// v1 controller lists ("cpu", "memory", "name=systemd", ...) and "" for v2.
func ProcessCgroups(procRoot string, pid int) (map[string]string, error) {
	b, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(pid), "cgroup"))
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			return nil, fmt.Errorf("/proc/%d/cgroup: malformed line %q", pid, line)
		}
		out[parts[1]] = parts[2]
	}
	return out, nil
}
