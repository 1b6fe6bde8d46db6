package daemon

import (
	"bytes"
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
	"syscall"
	"testing"
	"time"
)

// This file gives BenchmarkStart20WhileListing the CPU cgroup layout snpd is deployed
// in: snpd.service is a cgroup with the cpu controller holding snpd and every QEMU it
// starts, and `snpctl` runs in the operator's session, outside it. It is a few file
// writes under /sys/fs/cgroup (mkdir, cgroup.procs, rmdir), written here rather than
// taken from a library (containerd/cgroups, opencontainers/cgroups) because the bench
// needs only those three operations and a module dependency for a benchmark helper would
// outweigh them.

// benchCgroup is a CPU cgroup created for one benchmark run, standing in for
// snpd.service. Its CPU weight is the kernel's default (cgroup v1 cpu.shares 1024, v2
// cpu.weight 100), which is systemd's default CPUWeight for a service.
type benchCgroup struct {
	version int    // 1 or 2: the hierarchy holding the cpu controller
	mount   string // that hierarchy's mount point, e.g. /sys/fs/cgroup/cpu
	origin  string // the bench's own cgroup in it, as /proc/PID/cgroup names it
	parent  string // the cgroup this one was made in: origin, or "/" (see newBenchCgroup)
	path    string // this cgroup, as /proc/PID/cgroup names it (parent + "/snpd-bench-PID-NAME")
	// enabledCPU: cgroup v2 only, "+cpu" was written to parent's subtree_control by us,
	// so remove writes "-cpu" back.
	enabledCPU bool
}

// cpuHierarchy finds the cgroup hierarchy that holds the cpu controller for this
// process: cgroup v2 when its root lists cpu in cgroup.controllers, else a cgroup v1
// hierarchy mounted with the cpu controller. It returns the version, mount point and
// the bench's cgroup path in that hierarchy.
func cpuHierarchy() (version int, mount, origin string, err error) {
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return 0, "", "", fmt.Errorf("reading mountinfo: %w", err)
	}
	pc, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return 0, "", "", fmt.Errorf("reading /proc/self/cgroup: %w", err)
	}
	mounts := parseCgroupMounts(mi)
	if v2path, ok := procCgroupPath(pc, 2); ok {
		for _, m := range mounts {
			if m.version == 2 && m.root == "/" && hasController(filepath.Join(m.point, "cgroup.controllers"), "cpu") {
				return 2, m.point, v2path, nil
			}
		}
	}
	if v1path, ok := procCgroupPath(pc, 1); ok {
		for _, m := range mounts {
			if m.version == 1 && m.cpu && m.root == "/" {
				return 1, m.point, v1path, nil
			}
		}
	}
	return 0, "", "", errors.New("no cgroup hierarchy with the cpu controller is available to this process (no cgroup v2 with cpu in its root's cgroup.controllers, no cgroup v1 cpu mount)")
}

// hasController reports whether the controller list file f (cgroup.controllers or
// cgroup.subtree_control) names ctl; an unreadable file names none.
func hasController(f, ctl string) bool {
	b, err := os.ReadFile(f)
	return err == nil && slices.Contains(strings.Fields(string(b)), ctl)
}

// newBenchCgroup creates an empty CPU cgroup named for this process and name (unique
// within the process), whose parent has the cpu controller in its subtree.
//
// On cgroup v1 it is a child of the bench's own cgroup. On cgroup v2 it is a child of
// the bench's own cgroup when the cpu controller is or can be enabled in that cgroup's
// subtree_control; the kernel refuses that (EBUSY) for a cgroup that holds processes,
// unless it is the root, and the bench runs in its cgroup with its parents (go test, a
// shell). It is then a child of the root instead: a top-level cgroup next to system.slice
// and user.slice, the level at which snpd.service's slice competes with an operator's
// session on a systemd host. No existing cgroup is changed except by that "+cpu" in a
// parent's subtree_control where it was missing, which remove undoes.
func newBenchCgroup(name string) (*benchCgroup, error) {
	v, mount, origin, err := cpuHierarchy()
	if err != nil {
		return nil, err
	}
	c := &benchCgroup{version: v, mount: mount, origin: origin, parent: origin}
	if v == 2 {
		var errs []string
		c.parent = ""
		for _, parent := range slices.Compact([]string{origin, "/"}) {
			enabled, err := c.enableCPU(parent)
			if err != nil {
				errs = append(errs, err.Error())
				continue
			}
			c.parent, c.enabledCPU = parent, enabled
			break
		}
		if c.parent == "" {
			return nil, errors.New(strings.Join(errs, "; "))
		}
	}
	c.path = strings.TrimSuffix(c.parent, "/") + fmt.Sprintf("/snpd-bench-%d-%s", os.Getpid(), name)
	if err := os.Mkdir(c.dir(c.path), 0o755); err != nil {
		c.restoreController()
		return nil, fmt.Errorf("creating cgroup %s: %w", c.dir(c.path), err)
	}
	return c, nil
}

// enableCPU makes sure the cpu controller is in cgroup v2 parent's subtree_control;
// enabled says it was written by this call.
func (c *benchCgroup) enableCPU(parent string) (enabled bool, err error) {
	dir := c.dir(parent)
	if !hasController(filepath.Join(dir, "cgroup.controllers"), "cpu") {
		return false, fmt.Errorf("enabling the cpu controller in %s: its parent does not pass it down (cgroup.controllers has no cpu)", dir)
	}
	sc := filepath.Join(dir, "cgroup.subtree_control")
	if hasController(sc, "cpu") {
		return false, nil
	}
	if err := os.WriteFile(sc, []byte("+cpu"), 0); err != nil {
		if errors.Is(err, syscall.EBUSY) {
			return false, fmt.Errorf("enabling the cpu controller in %s: %w (cgroup v2 allows it only in the root or a cgroup without processes)", sc, err)
		}
		return false, fmt.Errorf("enabling the cpu controller in %s: %w", sc, err)
	}
	return true, nil
}

// dir is the directory of cgroup path p in c's hierarchy.
func (c *benchCgroup) dir(p string) string { return filepath.Join(c.mount, p) }

// add moves process pid with all its threads into c (cgroup.procs moves the whole
// thread group on v1 and v2); processes and threads it creates afterwards start in c.
func (c *benchCgroup) add(pid int) error {
	f := filepath.Join(c.dir(c.path), "cgroup.procs")
	if err := os.WriteFile(f, []byte(strconv.Itoa(pid)), 0); err != nil {
		return fmt.Errorf("moving pid %d into %s: %w", pid, f, err)
	}
	return nil
}

// cpuCgroupOf is pid's cgroup in the cgroup v1 cpu hierarchy (version 1) or the
// unified hierarchy (version 2), read from /proc/PID/cgroup.
func cpuCgroupOf(version, pid int) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return "", fmt.Errorf("reading cgroup of pid %d: %w", pid, err)
	}
	p, ok := procCgroupPath(b, version)
	if !ok {
		return "", fmt.Errorf("reading cgroup of pid %d: no cgroup v%d cpu line in %q", pid, version, b)
	}
	return p, nil
}

// remove deletes c once it is empty, waiting up to wait for exiting processes to leave
// it; processes still in it then are moved back to the bench's own cgroup first, so
// nothing is left behind either way (the error says which were there).
func (c *benchCgroup) remove(wait time.Duration) error {
	dir := c.dir(c.path)
	var err error
	for deadline := time.Now().Add(wait); ; time.Sleep(50 * time.Millisecond) {
		if err = os.Remove(dir); err == nil || errors.Is(err, os.ErrNotExist) {
			c.restoreController()
			return nil
		}
		if time.Now().After(deadline) {
			break
		}
	}
	procs, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	left := strings.Fields(string(procs))
	for _, p := range left {
		_ = os.WriteFile(filepath.Join(c.dir(c.origin), "cgroup.procs"), []byte(p), 0)
	}
	if err2 := os.Remove(dir); err2 != nil {
		return fmt.Errorf("removing cgroup %s (pids %v still in it): %w", dir, left, errors.Join(err, err2))
	}
	c.restoreController()
	if len(left) > 0 {
		return fmt.Errorf("removing cgroup %s: pids %v were still in it after %s; moved back to %s", dir, left, wait, c.origin)
	}
	return nil
}

// restoreController undoes newBenchCgroup's "+cpu" in the parent cgroup (v2 only). It
// fails harmlessly (EBUSY) while another child still uses the controller.
func (c *benchCgroup) restoreController() {
	if c.enabledCPU {
		_ = os.WriteFile(filepath.Join(c.dir(c.parent), "cgroup.subtree_control"), []byte("-cpu"), 0)
		c.enabledCPU = false
	}
}

// cgroupCheck records in which CPU cgroup snpd, its QEMUs and the snpctl clients of one
// scenario run, prints it, and fails the benchmark when the layout is not the claimed
// one (flat: everything in the bench's cgroup; deployed: snpd and every QEMU in the
// bench cgroup, no snpctl in it), so no figure is printed for a layout that was not run.
type cgroupCheck struct {
	b       *testing.B
	cg      *benchCgroup // nil: flat layout
	version int          // hierarchy read; 0: none has the cpu controller, nothing checked
	why     string       // version 0: why
	driver  string       // the bench driver's cgroup
	snpd    string       // snpd's cgroup after the move (deployed) or as started (flat)

	mu                   sync.Mutex
	qemus, clients       map[string]int // processes per cgroup path
	qemuErrs, clientErrs int            // /proc/PID/cgroup unreadable (process gone)
}

// newCgroupCheck reads the cgroups of the bench driver and of snpd (pid).
func newCgroupCheck(b *testing.B, cg *benchCgroup, snpdPID int) *cgroupCheck {
	c := &cgroupCheck{b: b, cg: cg, qemus: map[string]int{}, clients: map[string]int{}}
	if cg != nil {
		c.version = cg.version
	} else if v, _, _, err := cpuHierarchy(); err == nil {
		c.version = v
	} else {
		c.why = err.Error()
		return c
	}
	var err error
	if c.driver, err = cpuCgroupOf(c.version, os.Getpid()); err != nil {
		b.Fatal(err)
	}
	if c.snpd, err = cpuCgroupOf(c.version, snpdPID); err != nil {
		b.Fatal(err)
	}
	want := c.driver
	if cg != nil {
		want = cg.path
	}
	if c.snpd != want {
		b.Fatalf("snpd (pid %d) is in cgroup %s, want %s", snpdPID, c.snpd, want)
	}
	return c
}

// client records the cgroup of snpctl process pid (called right after it started).
func (c *cgroupCheck) client(pid int) { c.record(pid, c.clients, &c.clientErrs) }

// qemu records the cgroup of QEMU process pid.
func (c *cgroupCheck) qemu(pid int) { c.record(pid, c.qemus, &c.qemuErrs) }

func (c *cgroupCheck) record(pid int, m map[string]int, errs *int) {
	if c.version == 0 {
		return
	}
	p, err := cpuCgroupOf(c.version, pid)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		*errs++
		return
	}
	m[p]++
}

// report prints where everything ran and fails the benchmark on a wrong layout.
func (c *cgroupCheck) report() {
	if c.version == 0 {
		fmt.Printf("cgroups: not checked: %s\n", c.why)
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	count := func(m map[string]int, errs int) string {
		var parts []string
		for _, k := range slices.Sorted(maps.Keys(m)) {
			parts = append(parts, fmt.Sprintf("%d in %s", m[k], k))
		}
		if errs > 0 {
			parts = append(parts, fmt.Sprintf("%d gone before read", errs))
		}
		if len(parts) == 0 {
			return "none"
		}
		return strings.Join(parts, ", ")
	}
	fmt.Printf("cgroups (v%d cpu hierarchy): bench driver in %s; snpd in %s; QEMU: %s; snpctl: %s\n",
		c.version, c.driver, c.snpd, count(c.qemus, c.qemuErrs), count(c.clients, c.clientErrs))
	if c.qemuErrs > 0 {
		c.b.Fatalf("%d QEMU processes exited before their cgroup was read", c.qemuErrs)
	}
	for p, n := range c.qemus {
		if p != c.snpd {
			c.b.Fatalf("%d QEMU processes in cgroup %s, not snpd's %s", n, p, c.snpd)
		}
	}
	for p, n := range c.clients {
		if p != c.driver { // the driver is never in the bench cgroup: newBenchCgroup made it empty
			c.b.Fatalf("%d snpctl processes in cgroup %s, not the bench driver's %s", n, p, c.driver)
		}
	}
}

// cgroupMount is one cgroup file system from /proc/self/mountinfo.
type cgroupMount struct {
	version int    // 1 or 2
	point   string // mount point
	root    string // the cgroup mounted there ("/" unless in a container)
	cpu     bool   // v1: mounted with the cpu controller
}

// parseCgroupMounts returns the cgroup and cgroup2 mounts in a /proc/PID/mountinfo
// text; malformed lines are skipped.
func parseCgroupMounts(mountinfo []byte) []cgroupMount {
	var out []cgroupMount
	for _, line := range bytes.Split(mountinfo, []byte("\n")) {
		// id parent maj:min root point options [optional...] - fstype source superoptions
		f := strings.Fields(string(line))
		sep := slices.Index(f, "-")
		if sep < 6 || len(f) < sep+4 {
			continue
		}
		m := cgroupMount{root: f[3], point: f[4]}
		switch f[sep+1] {
		case "cgroup2":
			m.version = 2
		case "cgroup":
			m.version = 1
			m.cpu = slices.Contains(strings.Split(f[sep+3], ","), "cpu")
		default:
			continue
		}
		out = append(out, m)
	}
	return out
}

// procCgroupPath returns the cgroup path in a /proc/PID/cgroup text for the cgroup v1
// hierarchy holding the cpu controller (version 1, a line "N:cpu,cpuacct:/path") or the
// unified hierarchy (version 2, the line "0::/path"); ok is false when there is none.
func procCgroupPath(b []byte, version int) (path string, ok bool) {
	for _, line := range bytes.Split(b, []byte("\n")) {
		id, rest, ok1 := strings.Cut(string(line), ":")
		ctl, p, ok2 := strings.Cut(rest, ":")
		if !ok1 || !ok2 || !strings.HasPrefix(p, "/") {
			continue
		}
		switch {
		case version == 2 && id == "0" && ctl == "":
			return p, true
		case version == 1 && slices.Contains(strings.Split(ctl, ","), "cpu"):
			return p, true
		}
	}
	return "", false
}

// TestBenchCgroup creates a real bench cgroup, moves a child process into it, checks
// that /proc says so and that the test process stayed out, and removes it: once empty,
// and once with the process still inside (moved back, nothing left behind).
func TestBenchCgroup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("creating a CPU cgroup needs root (CI and this machine run tests as root)")
	}
	v, _, _, err := cpuHierarchy()
	if err != nil {
		t.Skipf("no CPU cgroup hierarchy here: %v", err)
	}
	self, err := cpuCgroupOf(v, os.Getpid())
	if err != nil {
		t.Fatalf("finding this process's CPU cgroup: %v", err)
	}
	for _, leave := range []bool{false, true} {
		c, err := newBenchCgroup("test")
		if errors.Is(err, syscall.EROFS) || errors.Is(err, os.ErrPermission) {
			t.Skipf("the CPU cgroup hierarchy is not writable here (a container without cgroup delegation): %v", err)
		}
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("sleep", "60")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		if err := c.add(cmd.Process.Pid); err != nil {
			t.Fatal(err)
		}
		if p, err := cpuCgroupOf(c.version, cmd.Process.Pid); err != nil || p != c.path {
			t.Errorf("child in %q (%v), want %s", p, err, c.path)
		}
		if p, _ := cpuCgroupOf(c.version, os.Getpid()); p != self {
			t.Errorf("test process moved to %q, want it to stay in %s", p, self)
		}
		if !leave {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
		err = c.remove(200 * time.Millisecond)
		if leave {
			if err == nil || !strings.Contains(err.Error(), "moved back") {
				t.Errorf("remove with a process inside: got %v, want an error saying it was moved back", err)
			}
			if p, _ := cpuCgroupOf(c.version, cmd.Process.Pid); p != self {
				t.Errorf("left-over child in %q after remove, want %s", p, self)
			}
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		} else if err != nil {
			t.Error(err)
		}
		if _, err := os.Stat(c.dir(c.path)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("cgroup %s still exists after remove (%v)", c.dir(c.path), err)
		}
	}
}

func TestProcCgroupPath(t *testing.T) {
	v1 := []byte("9:name=systemd:/\n2:cpuacct:/\n1:cpu,cpuacct:/snpd-bench-1-0\n0::/user.slice\n")
	if p, ok := procCgroupPath(v1, 1); !ok || p != "/snpd-bench-1-0" {
		t.Errorf("v1: got %q %v, want /snpd-bench-1-0", p, ok)
	}
	if p, ok := procCgroupPath(v1, 2); !ok || p != "/user.slice" {
		t.Errorf("v2 line of a hybrid host: got %q %v, want /user.slice", p, ok)
	}
	if p, ok := procCgroupPath([]byte("0::/system.slice/snpd.service\n"), 1); ok {
		t.Errorf("pure v2: found a v1 cpu line %q", p)
	}
	if _, ok := procCgroupPath([]byte("1:cpuacct:/x\n1:cpuset:/y\n"), 1); ok {
		t.Error("cpuacct or cpuset taken for cpu")
	}
}

func TestParseCgroupMounts(t *testing.T) {
	mi := []byte(`25 24 0:22 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
26 25 0:23 / /sys/fs/cgroup/cpu rw,relatime shared:5 - cgroup cgroup rw,cpu
27 25 0:24 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
28 25 0:25 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
bad line - cgroup
`)
	got := parseCgroupMounts(mi)
	want := []cgroupMount{
		{version: 1, point: "/sys/fs/cgroup/cpu", root: "/", cpu: true},
		{version: 1, point: "/sys/fs/cgroup/cpuacct", root: "/"},
		{version: 2, point: "/sys/fs/cgroup/unified", root: "/"},
	}
	if !slices.Equal(got, want) {
		t.Errorf("got %+v, want %+v", got, want)
	}
}

// FuzzCgroupParsers: the /proc parsers never panic and only return absolute paths.
func FuzzCgroupParsers(f *testing.F) {
	f.Add([]byte("1:cpu,cpuacct:/a\n0::/b\n"))
	f.Add([]byte("26 25 0:23 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, v := range []int{1, 2} {
			if p, ok := procCgroupPath(b, v); ok && !strings.HasPrefix(p, "/") {
				t.Fatalf("v%d path %q", v, p)
			}
		}
		for _, m := range parseCgroupMounts(b) {
			if m.version != 1 && m.version != 2 {
				t.Fatalf("version %d", m.version)
			}
		}
	})
}
