package daemon

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coreos/go-systemd/v22/unit"

	"github.com/snpd/snpd/daemon/api"
	"github.com/snpd/snpd/systemd"
	"github.com/snpd/snpd/systemd/systemdtest"
)

// This file gives BenchmarkStart20WhileListing its CPU cgroup layouts, made by a real
// systemd (PID 1 of the test container, systemd/systemdtest) rather than by the bench:
// snpd runs as a transient service of that systemd, and in the deployed layout places
// its guests itself, through systemd-machined, as it does on a production host. The
// bench only checks, from /proc/PID/cgroup and cgroupfs, that every process ran where
// the layout says, with the weights it says.

// benchService is snpd (the re-executed test binary) running as a transient service of
// the container's systemd.
type benchService struct {
	unit   string
	pid    int
	Client *api.Client
}

// snpdUnitCPUWeight is CPUWeight= of the shipped systemd/snpd.service, so the bench's
// stand-in for the unit cannot drift from it.
func snpdUnitCPUWeight() (uint64, error) {
	root, err := filepath.Abs("..")
	if err != nil {
		return 0, err
	}
	f, err := os.Open(filepath.Join(root, "systemd", "snpd.service"))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "CPUWeight="); ok {
			return strconv.ParseUint(v, 10, 64)
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, errors.New("systemd/snpd.service sets no CPUWeight=")
}

// startBenchService starts snpd for e as transient service snpd-bench-TAG-PID.service
// of the container's systemd (systemd-run) and waits until its API answers; it is
// stopped at the end of the benchmark, and its journal printed if the benchmark failed.
//
// Deployed (the layout of snpd.service): Type=notify, NotifyAccess=main and the unit
// file's CPUWeight= (200). snpd finds systemd and systemd-machined and puts each guest
// in a scope of its own in machine.slice.
//
// Flat (a host without systemd or a delegated cgroup): CPUWeight=100 (the default
// weight, set so that systemd gives the service a CPU cgroup on cgroup v1 too) and
// /run/systemd hidden by an empty tmpfs (TemporaryFileSystem=), so snpd sees no systemd
// (sd_booted), finds no delegated cgroup v2 subtree either, says so in its log and
// leaves every QEMU in its own cgroup: snpd's production code decides, as on such a host.
func startBenchService(b *testing.B, e *testEnv, v start20Variant) *benchService {
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	s := &benchService{unit: fmt.Sprintf("snpd-bench-%s-%d.service", v.tag, os.Getpid()), Client: api.NewClient(e.Socket)}
	args := []string{"--quiet", "--collect", "--unit=" + s.unit, "--setenv=SNPD_TEST_DAEMON=" + e.Config}
	if v.deployed {
		w, err := snpdUnitCPUWeight()
		if err != nil {
			b.Fatalf("reading CPUWeight= of snpd.service: %v", err)
		}
		args = append(args, "--service-type=notify", "--property=NotifyAccess=main", fmt.Sprintf("--property=CPUWeight=%d", w))
	} else {
		args = append(args, "--service-type=exec", "--property=CPUWeight=100", "--property=TemporaryFileSystem=/run/systemd")
	}
	args = append(args, "--", exe, "-test.run=^$")
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if out, err := exec.CommandContext(ctx, "systemctl", "stop", s.unit).CombinedOutput(); err != nil {
			b.Errorf("systemctl stop %s: %v: %s", s.unit, err, out)
		}
		// The guests' machines go with their QEMUs (killed by the round); the next round
		// must not find one still registered under the same name.
		for deadline := time.Now().Add(30 * time.Second); v.deployed; time.Sleep(100 * time.Millisecond) {
			out, err := exec.CommandContext(ctx, "machinectl", "list", "--no-legend", "--no-pager").Output()
			if err == nil && !strings.Contains(string(out), "snpd-bench") {
				break
			}
			if time.Now().After(deadline) {
				b.Errorf("machines left 30 s after the round (%v):\n%s", err, out)
				break
			}
		}
		if b.Failed() {
			out, _ := exec.CommandContext(ctx, "journalctl", "--no-pager", "-u", s.unit).CombinedOutput()
			b.Logf("journal of %s:\n%s", s.unit, out)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "systemd-run", args...).CombinedOutput(); err != nil {
		b.Fatalf("systemd-run %s: %v: %s", strings.Join(args, " "), err, out)
	}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := s.Client.Status(sctx)
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("snpd (%s) did not answer on %s: %v", s.unit, e.Socket, err)
		}
	}
	out, err := exec.CommandContext(ctx, "systemctl", "show", "--property=MainPID", "--value", s.unit).Output()
	if err != nil {
		b.Fatalf("systemctl show %s: %v", s.unit, err)
	}
	if s.pid, err = strconv.Atoi(strings.TrimSpace(string(out))); err != nil || s.pid <= 0 {
		b.Fatalf("main pid of %s: %q %v", s.unit, out, err)
	}
	return s
}

// cpuCgroup is pid's cgroup in the hierarchy holding the cpu controller: the cgroup v1
// line naming cpu ("cpu" or "cpu,cpuacct"), else the unified one.
func cpuCgroup(pid int) (string, error) {
	cg, err := systemdtest.ProcessCgroups("/proc", pid)
	if err != nil {
		return "", fmt.Errorf("reading the cgroups of pid %d: %w", pid, err)
	}
	for k, p := range cg {
		if slices.Contains(strings.Split(k, ","), "cpu") {
			return p, nil
		}
	}
	if p, ok := cg[""]; ok {
		return p, nil
	}
	return "", fmt.Errorf("pid %d is in no cgroup with the cpu controller", pid)
}

// cpuWeight says cgroup's CPU weight as the kernel has it: "cpu.shares N" (v1) or
// "cpu.weight N" (v2); want is the CPUWeight= it must come from (0: not checked).
func cpuWeight(cgroup string, want uint64) (string, error) {
	l, err := systemdtest.ReadCgroupLimits("/sys/fs/cgroup", cgroup)
	got, name, exp := l.CPUShares, "cpu.shares", systemdtest.CPUWeightToShares(want)
	if l.Unified {
		got, name, exp = l.CPUWeight, "cpu.weight", want
	}
	if got == 0 {
		return "", fmt.Errorf("reading the CPU weight of %s: %v", cgroup, err)
	}
	if want != 0 && got != exp {
		return "", fmt.Errorf("%s of %s is %d, want %d (CPUWeight=%d)", name, cgroup, got, exp, want)
	}
	return fmt.Sprintf("%s %d", name, got), nil
}

// layoutCheck records in which CPU cgroup snpd, its QEMUs and the snpctl clients of one
// round ran, and fails the benchmark when that is not the layout claimed, so that no
// figure is printed for a layout that was not run:
//
//   - snpd in its service's cgroup, /system.slice/UNIT, with the service's weight;
//   - flat: every QEMU in snpd's cgroup;
//   - deployed: each QEMU in a scope of its own, /machine.slice/machine-snpd\x2dVM.scope,
//     with the VM's cpu_weight;
//   - every snpctl in the bench driver's cgroup, in user.slice (outside both).
type layoutCheck struct {
	b         *testing.B
	deployed  bool
	vmWeight  uint64 // the VMs' cpu_weight
	driver    string // the bench driver's cgroup
	snpd      string
	snpdShare string // snpd's cgroup's weight, as read

	mu                   sync.Mutex
	qemus                map[string]int // QEMU processes per cgroup
	qemuShare            map[string]int
	clients              map[string]int // snpctl processes per cgroup
	qemuErrs, clientErrs int            // /proc/PID/cgroup unreadable (process gone)
	wrong                []string       // QEMUs not where the layout says
}

func newLayoutCheck(b *testing.B, v start20Variant, s *benchService, vmWeight uint64) *layoutCheck {
	c := &layoutCheck{b: b, deployed: v.deployed, vmWeight: vmWeight,
		qemus: map[string]int{}, qemuShare: map[string]int{}, clients: map[string]int{}}
	var err error
	if c.driver, err = cpuCgroup(os.Getpid()); err != nil {
		b.Fatal(err)
	}
	if !strings.HasPrefix(c.driver, "/user.slice/") {
		b.Fatalf("the bench driver runs in %s, want a scope in user.slice (an operator's session)", c.driver)
	}
	if c.snpd, err = cpuCgroup(s.pid); err != nil {
		b.Fatal(err)
	}
	if want := "/system.slice/" + s.unit; c.snpd != want {
		b.Fatalf("snpd (pid %d) is in cgroup %s, want %s", s.pid, c.snpd, want)
	}
	want := uint64(100)
	if v.deployed {
		if want, err = snpdUnitCPUWeight(); err != nil {
			b.Fatal(err)
		}
	}
	if c.snpdShare, err = cpuWeight(c.snpd, want); err != nil {
		b.Fatal(err)
	}
	return c
}

// liveCgroup is cpuCgroup of pid, read while pid was alive: an exited process not yet
// reaped (a zombie) is no longer in its cgroup (/proc/PID/cgroup says "/").
func liveCgroup(pid int) (string, error) {
	p, err := cpuCgroup(pid)
	if err == nil && !pidAlive(pid) {
		err = fmt.Errorf("pid %d exited before its cgroup was read", pid)
	}
	return p, err
}

// client records the cgroup of snpctl process pid (called right after it started).
func (c *layoutCheck) client(pid int) {
	p, err := liveCgroup(pid)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		c.clientErrs++
		return
	}
	c.clients[p]++
}

// qemu records the cgroup of VM vm's QEMU process pid (still running); report fails
// the benchmark if it is not where the layout says.
func (c *layoutCheck) qemu(vm string, pid int) {
	p, err := liveCgroup(pid)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		c.qemuErrs++
		return
	}
	c.qemus[p]++
	if !c.deployed {
		if p != c.snpd {
			c.wrong = append(c.wrong, fmt.Sprintf("the QEMU of %s (pid %d) is in %s, not in snpd's %s", vm, pid, p, c.snpd))
		}
		return
	}
	if want := "/machine.slice/machine-" + unit.UnitNameEscape(systemd.MachineName(vm)) + ".scope"; p != want {
		c.wrong = append(c.wrong, fmt.Sprintf("the QEMU of %s (pid %d) is in %s, want %s", vm, pid, p, want))
		return
	}
	share, err := cpuWeight(p, c.vmWeight)
	if err != nil {
		c.wrong = append(c.wrong, err.Error())
		return
	}
	c.qemuShare[share]++
}

// report checks what was recorded and returns a line saying where everything ran.
func (c *layoutCheck) report() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.qemuErrs > 0 {
		c.b.Fatalf("%d QEMU processes exited before their cgroup was read", c.qemuErrs)
	}
	if len(c.wrong) > 0 {
		c.b.Fatalf("not the %s layout: %s", map[bool]string{false: "flat", true: "deployed"}[c.deployed], strings.Join(c.wrong, "; "))
	}
	for p, n := range c.clients {
		if p != c.driver {
			c.b.Fatalf("%d snpctl processes in cgroup %s, not the bench driver's %s", n, p, c.driver)
		}
	}
	weight := func(cg string) string {
		w, err := cpuWeight(cg, 0)
		if err != nil {
			return err.Error()
		}
		return w
	}
	var qemu string
	if c.deployed {
		n := 0
		for _, k := range c.qemus {
			n += k
		}
		var shares []string
		for _, s := range slices.Sorted(maps.Keys(c.qemuShare)) {
			shares = append(shares, fmt.Sprintf("%d with %s", c.qemuShare[s], s))
		}
		qemu = fmt.Sprintf("%d QEMUs in %d scopes of their own in /machine.slice (%s; %s)", n, len(c.qemus), weight("/machine.slice"), strings.Join(shares, ", "))
	} else {
		qemu = fmt.Sprintf("%d QEMUs in snpd's cgroup", c.qemus[c.snpd])
	}
	clients := 0
	for _, n := range c.clients {
		clients += n
	}
	gone := ""
	if c.clientErrs > 0 {
		gone = fmt.Sprintf(" (and %d gone before their cgroup was read)", c.clientErrs)
	}
	return fmt.Sprintf("cgroups (cpu): snpd in %s (%s; /system.slice %s); %s; bench driver and %d snpctl%s in %s (%s; /user.slice %s)",
		c.snpd, c.snpdShare, weight("/system.slice"), qemu, clients, gone, c.driver, weight(c.driver), weight("/user.slice"))
}
