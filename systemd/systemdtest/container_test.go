package systemdtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
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

	sddbus "github.com/coreos/go-systemd/v22/dbus"
	"github.com/coreos/go-systemd/v22/machine1"
	"github.com/coreos/go-systemd/v22/unit"
	"github.com/godbus/dbus/v5"
)

// TestMain halts the systemd container after the tests that booted it.
func TestMain(m *testing.M) {
	code := m.Run()
	Shutdown()
	os.Exit(code)
}

// The limits the tests put on a guest's cgroup.
const (
	testCPUWeight = 50
	testMemoryMax = 64 << 20
	testTasksMax  = 17
)

func TestContainerRunsSystemdAsPID1(t *testing.T) {
	c := Container(t)
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", c.Leader))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(comm)); got != "systemd" {
		t.Errorf("the container's PID 1 (host pid %d) is %q, want systemd", c.Leader, got)
	}
	if pid, err := PIDInside(c.Leader); err != nil || pid != 1 {
		t.Errorf("PIDInside(leader %d) = %d, %v; want 1", c.Leader, pid, err)
	}
	if got := strings.TrimSpace(c.Output(t, "cat", "/proc/1/comm")); got != "systemd" {
		t.Errorf("inside, /proc/1/comm = %q, want systemd", got)
	}
	if got := strings.TrimSpace(c.Output(t, "systemctl", "is-system-running")); got != "running" {
		t.Errorf("systemctl is-system-running = %q, want running", got)
	}
	t.Logf("%s", strings.SplitN(c.Output(t, "systemctl", "--version"), "\n", 2)[0])
	// The command runs in a transient scope of the container's systemd.
	if got := c.Output(t, "sh", "-c", "grep name=systemd /proc/self/cgroup"); !strings.Contains(got, "/system.slice/run-") {
		t.Errorf("command inside runs in cgroup %q, want a run-*.scope in system.slice", got)
	}
	t.Logf("cgroup filesystems inside: %s", c.Output(t, "sh", "-c", "stat -f -c '%n %T' /sys/fs/cgroup /sys/fs/cgroup/* | tr '\\n' ' '"))
}

// TestBusFromHost: a D-Bus client on the host reaches the container's systemd and
// machined through the socket under /proc/LEADER/root.
func TestBusFromHost(t *testing.T) {
	c := Container(t)
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", c.BusAddress())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := sddbus.NewSystemConnectionContext(ctx)
	if err != nil {
		t.Fatalf("connecting to %s: %v", c.BusAddress(), err)
	}
	defer conn.Close()
	v, err := conn.GetManagerProperty("Version")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("systemd Version over D-Bus from the host: %s", v)
	st, err := conn.SystemStateContext(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := st.Value.Value(); got != "running" {
		t.Errorf("SystemState = %v, want running", got)
	}
	m, err := machine1.New()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if _, err := m.ListMachines(); err != nil {
		t.Errorf("machine1 ListMachines: %v", err)
	}
}

// startSleeper starts a process that lives until killed, for a scope or machine to hold.
func startSleeper(t *testing.T) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("sleep", "600")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return cmd
}

func systemdConn(t *testing.T) *sddbus.Conn {
	t.Helper()
	// Not a context with a deadline: go-systemd hands it to godbus, which closes the
	// connection when the context ends.
	conn, err := sddbus.NewSystemConnectionContext(context.Background())
	if err != nil {
		t.Fatalf("connecting to the system bus: %v", err)
	}
	t.Cleanup(conn.Close)
	return conn
}

// limitProps are the scope properties snpd sets from a VM's cpu_weight, memory_max and
// tasks_max.
func limitProps() []sddbus.Property {
	return []sddbus.Property{
		{Name: "CPUWeight", Value: dbus.MakeVariant(uint64(testCPUWeight))},
		{Name: "MemoryMax", Value: dbus.MakeVariant(uint64(testMemoryMax))},
		{Name: "TasksMax", Value: dbus.MakeVariant(uint64(testTasksMax))},
	}
}

// checkLimits reads the cgroupfs files of cgroup and compares them with limitProps.
func checkLimits(t *testing.T, cgroup string, cpuWeight uint64) {
	t.Helper()
	l, err := ReadCgroupLimits("/sys/fs/cgroup", cgroup)
	if err != nil {
		t.Fatalf("reading the limits of %s: %v", cgroup, err)
	}
	t.Logf("cgroupfs of %s: %+v", cgroup, l)
	if l.Unified {
		if l.CPUWeight != cpuWeight {
			t.Errorf("cpu.weight = %d, want %d", l.CPUWeight, cpuWeight)
		}
	} else if want := CPUWeightToShares(cpuWeight); l.CPUShares != want {
		t.Errorf("cpu.shares = %d, want %d (CPUWeight=%d)", l.CPUShares, want, cpuWeight)
	}
	if l.MemoryMax != testMemoryMax {
		t.Errorf("memory limit = %d, want %d", l.MemoryMax, testMemoryMax)
	}
	if l.TasksMax != testTasksMax {
		t.Errorf("pids.max = %d, want %d", l.TasksMax, testTasksMax)
	}
}

// checkIn fails unless process pid is in cgroup in the hierarchies systemd put limits in.
func checkIn(t *testing.T, pid int, cgroup string) {
	t.Helper()
	cg, err := ProcessCgroups("/proc", pid)
	if err != nil {
		t.Fatal(err)
	}
	hier := []string{"name=systemd", "cpu", "memory", "pids"}
	if _, ok := cg["cpu"]; !ok {
		hier = []string{""}
	}
	for _, h := range hier {
		if cg[h] != cgroup {
			t.Errorf("process %d is in %q in hierarchy %q, want %q", pid, cg[h], h, cgroup)
		}
	}
}

// waitGone waits until unit is no longer loaded (a transient scope is garbage-collected
// once its processes are gone).
func waitGone(t *testing.T, conn *sddbus.Conn, unitName string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		st, err := conn.ListUnitsByNamesContext(context.Background(), []string{unitName})
		if err != nil {
			t.Fatal(err)
		}
		if len(st) == 0 || st[0].LoadState == "not-found" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still %s/%s/%s 20 s after its processes exited", unitName, st[0].LoadState, st[0].ActiveState, st[0].SubState)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func unitCgroup(t *testing.T, conn *sddbus.Conn, unitName string) string {
	t.Helper()
	p, err := conn.GetUnitTypePropertyContext(context.Background(), unitName, "Scope", "ControlGroup")
	if err != nil {
		t.Fatal(err)
	}
	s, _ := p.Value.Value().(string)
	if s == "" {
		t.Fatalf("%s has no ControlGroup", unitName)
	}
	return s
}

// TestTransientScopeLimits: org.freedesktop.systemd1.Manager.StartTransientUnit makes a
// scope in machine.slice for a process that already runs, moves it there, and the
// container's systemd writes CPUWeight=, MemoryMax= and TasksMax= to its cgroup;
// SetUnitProperties changes a limit at run time; the scope goes when the process exits.
func TestTransientScopeLimits(t *testing.T) {
	if !Inside() {
		Container(t).RunTest(t)
		return
	}
	conn := systemdConn(t)
	proc := startSleeper(t)
	name := fmt.Sprintf("snpdtest-scope-%d.scope", proc.Process.Pid)
	props := append([]sddbus.Property{
		sddbus.PropDescription("snpd test guest"),
		sddbus.PropSlice("machine.slice"),
		sddbus.PropPids(uint32(proc.Process.Pid)),
		{Name: "Delegate", Value: dbus.MakeVariant(true)},
		{Name: "CollectMode", Value: dbus.MakeVariant("inactive-or-failed")},
	}, limitProps()...)
	done := make(chan string, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := conn.StartTransientUnitContext(ctx, name, "fail", props, done); err != nil {
		t.Fatalf("StartTransientUnit %s: %v", name, err)
	}
	select {
	case r := <-done:
		if r != "done" {
			t.Fatalf("start job of %s: %s", name, r)
		}
	case <-ctx.Done():
		t.Fatal("start job did not finish")
	}
	cg := unitCgroup(t, conn, name)
	if want := "/machine.slice/" + name; cg != want {
		t.Errorf("ControlGroup = %q, want %q", cg, want)
	}
	checkIn(t, proc.Process.Pid, cg)
	checkLimits(t, cg, testCPUWeight)
	u, err := conn.GetUnitByPID(ctx, uint32(proc.Process.Pid))
	if err != nil || !strings.HasSuffix(string(u), sddbus.PathBusEscape(name)) {
		t.Errorf("GetUnitByPID(%d) = %s, %v; want the scope", proc.Process.Pid, u, err)
	}

	// Limits change at run time.
	if err := conn.SetUnitPropertiesContext(ctx, name, true, sddbus.Property{Name: "CPUWeight", Value: dbus.MakeVariant(uint64(200))}); err != nil {
		t.Fatalf("SetUnitProperties CPUWeight=200: %v", err)
	}
	checkLimits(t, cg, 200)

	// The process ends: the scope is stopped and garbage-collected, its cgroup removed.
	proc.Process.Kill()
	proc.Wait()
	waitGone(t, conn, name)
	if _, err := os.Stat("/sys/fs/cgroup/systemd" + cg); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cgroup %s still there after its scope went: %v", cg, err)
	}
}

func readTrim(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	return strings.TrimSpace(string(b))
}

// vmRSS is the VmRSS line of /proc/PID/status.
func vmRSS(pid int) string {
	for _, l := range strings.Split(readTrim(fmt.Sprintf("/proc/%d/status", pid)), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			return strings.Join(strings.Fields(l), " ")
		}
	}
	return "VmRSS unknown"
}

// lockedBuffer collects a child's output while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// machineID is a random 128-bit id for machined (an all-zero or empty id means none).
func machineID(t *testing.T) []byte {
	id := make([]byte, 16)
	if _, err := rand.Read(id); err != nil {
		t.Fatal(err)
	}
	return id
}

func machinectlList(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("machinectl", "list", "--no-legend", "--no-pager").CombinedOutput()
	if err != nil {
		t.Fatalf("machinectl list: %v: %s", err, out)
	}
	return string(out)
}

// TestCreateMachine: org.freedesktop.machine1.Manager.CreateMachine registers a running
// process as a VM and makes machined start scope machine-NAME.scope in machine.slice for
// it with the given limits; machinectl list shows it; a restarted snpd finds it by name,
// by pid and by service; it goes away when the process exits.
func TestCreateMachine(t *testing.T) {
	if !Inside() {
		Container(t).RunTest(t)
		return
	}
	createMachine(t, true)
}

// createMachine is the body of TestCreateMachine, also run under snpd.service's sandbox.
// afterSnpd orders the scope After=snpd.service. That deadlocks while snpd.service is
// still activating (a oneshot running, or Type=notify before READY=1): machined answers
// CreateMachine only when the scope's start job is done, and that job waits for
// snpd.service to finish starting, which waits for CreateMachine (seen: the unit's
// start timed out after 5 minutes).
func createMachine(t *testing.T, afterSnpd bool) {
	conn := systemdConn(t)
	m, err := machine1.New()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	proc := startSleeper(t)
	pid := proc.Process.Pid
	name := fmt.Sprintf("snpd-web-%d", pid)
	props := append([]sddbus.Property{sddbus.PropDescription("snpd guest " + name)}, limitProps()...)
	if afterSnpd {
		props = append(props, sddbus.PropAfter("snpd.service"))
	}
	// Created over a connection closed at once, as by an snpd that then restarts: the
	// machine does not depend on its creator's connection.
	creator, err := machine1.New()
	if err != nil {
		t.Fatal(err)
	}
	err = creator.CreateMachine(name, machineID(t), "snpd", "vm", pid, "", props)
	creator.Close()
	if err != nil {
		t.Fatalf("CreateMachine: %v", err)
	}
	scope := "machine-" + unit.UnitNameEscape(name) + ".scope"
	if want := `machine-snpd\x2dweb\x2d`; !strings.HasPrefix(scope, want) {
		t.Errorf("unit name %q, want prefix %q", scope, want)
	}
	if out := machinectlList(t); !strings.Contains(out, name) || !strings.Contains(out, "snpd") {
		t.Errorf("machinectl list does not show %s:\n%s", name, out)
	} else {
		t.Logf("machinectl list:\n%s", out)
	}

	// What a restarted snpd can find: the machine by its pid, its properties, the list.
	byPID, err := m.GetMachineByPID(uint(pid))
	if err != nil {
		t.Fatalf("GetMachineByPID(%d): %v", pid, err)
	}
	byName, err := m.GetMachine(name)
	if err != nil || byName != byPID {
		t.Errorf("GetMachine(%s) = %s, %v; GetMachineByPID = %s", name, byName, err, byPID)
	}
	desc, err := m.DescribeMachine(name)
	if err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]any{"Name": name, "Class": "vm", "Service": "snpd", "Unit": scope, "Leader": uint32(pid), "State": "running"} {
		if desc[k] != want {
			t.Errorf("machine property %s = %#v, want %#v", k, desc[k], want)
		}
	}
	list, err := m.ListMachines()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, ms := range list {
		found = found || (ms.Name == name && ms.Service == "snpd" && ms.Class == "vm" && ms.JobPath == byPID)
	}
	if !found {
		t.Errorf("ListMachines %+v has no %s", list, name)
	}

	// The scope machined made: machine.slice, its defaults, the limits passed through.
	cg := unitCgroup(t, conn, scope)
	if want := "/machine.slice/" + scope; cg != want {
		t.Errorf("ControlGroup = %q, want %q", cg, want)
	}
	checkIn(t, pid, cg)
	checkLimits(t, cg, testCPUWeight)
	sp, err := conn.GetUnitTypePropertiesContext(context.Background(), scope, "Scope")
	if err != nil {
		t.Fatal(err)
	}
	up, err := conn.GetUnitPropertiesContext(context.Background(), scope)
	if err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]any{"Slice": "machine.slice", "Delegate": true, "CPUWeight": uint64(testCPUWeight), "MemoryMax": uint64(testMemoryMax), "TasksMax": uint64(testTasksMax), "KillMode": "control-group"} {
		if sp[k] != want {
			t.Errorf("scope property %s = %#v, want %#v", k, sp[k], want)
		}
	}
	if up["CollectMode"] != "inactive-or-failed" || up["Description"] != "snpd guest "+name {
		t.Errorf("scope CollectMode = %v, Description = %v", up["CollectMode"], up["Description"])
	}
	if after, _ := up["After"].([]string); afterSnpd && !slices.Contains(after, "snpd.service") {
		t.Errorf("scope After = %v, want snpd.service in it", up["After"])
	}

	// A second machine for the same leader is refused.
	if err := m.CreateMachine(name+"-again", machineID(t), "snpd", "vm", pid, "", nil); err == nil {
		t.Error("CreateMachine for a pid that already leads a machine succeeded")
	} else {
		t.Logf("CreateMachine again for pid %d: %v", pid, err)
	}

	// The process exits: the scope stops and is collected, machined forgets the machine.
	proc.Process.Kill()
	proc.Wait()
	waitGone(t, conn, scope)
	waitNoMachine(t, m, name)
	if out := machinectlList(t); strings.Contains(out, name) {
		t.Errorf("machinectl list still shows %s:\n%s", name, out)
	}
}

func waitNoMachine(t *testing.T, m *machine1.Conn, name string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := m.GetMachine(name); err != nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("machine %s still registered 20 s after its leader exited", name)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestTerminateMachine: TerminateMachine stops the machine's scope, which kills every
// process in it (SIGTERM, the scope's KillMode=control-group).
func TestTerminateMachine(t *testing.T) {
	if !Inside() {
		Container(t).RunTest(t)
		return
	}
	conn := systemdConn(t)
	m, err := machine1.New()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	proc := exec.Command("sleep", "600")
	if err := proc.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- proc.Wait() }()
	name := fmt.Sprintf("snpd-term-%d", proc.Process.Pid)
	if err := m.CreateMachine(name, machineID(t), "snpd", "vm", proc.Process.Pid, "", nil); err != nil {
		proc.Process.Kill()
		t.Fatalf("CreateMachine: %v", err)
	}
	if err := m.TerminateMachine(name); err != nil {
		proc.Process.Kill()
		t.Fatalf("TerminateMachine: %v", err)
	}
	select {
	case err := <-waited:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGTERM {
			t.Errorf("leader ended with %v, want killed by SIGTERM", err)
		}
	case <-time.After(20 * time.Second):
		proc.Process.Kill()
		t.Fatal("leader still running 20 s after TerminateMachine")
	}
	waitGone(t, conn, "machine-"+unit.UnitNameEscape(name)+".scope")
	waitNoMachine(t, m, name)
}

// TestRegisterMachine: RegisterMachine registers a process with machined without making
// a scope: the machine's unit is whatever unit the leader is already in (here a scope
// snpd made with StartTransientUnit).
func TestRegisterMachine(t *testing.T) {
	if !Inside() {
		Container(t).RunTest(t)
		return
	}
	conn := systemdConn(t)
	m, err := machine1.New()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	proc := startSleeper(t)
	pid := proc.Process.Pid
	scope := fmt.Sprintf("snpd-guest-%d.scope", pid)
	done := make(chan string, 1)
	props := append([]sddbus.Property{sddbus.PropSlice("machine.slice"), sddbus.PropPids(uint32(pid))}, limitProps()...)
	if _, err := conn.StartTransientUnitContext(context.Background(), scope, "fail", props, done); err != nil {
		t.Fatal(err)
	}
	if r := <-done; r != "done" {
		t.Fatalf("start job: %s", r)
	}
	name := fmt.Sprintf("snpd-reg-%d", pid)
	if err := m.RegisterMachine(name, machineID(t), "snpd", "vm", pid, ""); err != nil {
		t.Fatalf("RegisterMachine: %v", err)
	}
	desc, err := m.DescribeMachine(name)
	if err != nil {
		t.Fatal(err)
	}
	if desc["Unit"] != scope {
		t.Errorf("registered machine's Unit = %v, want %s", desc["Unit"], scope)
	}
	if out := machinectlList(t); !strings.Contains(out, name) {
		t.Errorf("machinectl list does not show %s:\n%s", name, out)
	}
	checkLimits(t, unitCgroup(t, conn, scope), testCPUWeight)
	proc.Process.Kill()
	proc.Wait()
	waitGone(t, conn, scope)
	waitNoMachine(t, m, name)
}

// TestAttachProcessToScope: a second process (a helper QEMU forks, say) joins an existing
// scope with AttachProcessesToUnit.
func TestAttachProcessToScope(t *testing.T) {
	if !Inside() {
		Container(t).RunTest(t)
		return
	}
	conn := systemdConn(t)
	m, err := machine1.New()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	leader := startSleeper(t)
	name := fmt.Sprintf("snpd-attach-%d", leader.Process.Pid)
	if err := m.CreateMachine(name, machineID(t), "snpd", "vm", leader.Process.Pid, "", limitProps()); err != nil {
		t.Fatal(err)
	}
	scope := "machine-" + unit.UnitNameEscape(name) + ".scope"
	other := startSleeper(t)
	if err := conn.AttachProcessesToUnit(context.Background(), scope, "", []uint32{uint32(other.Process.Pid)}); err != nil {
		t.Fatalf("AttachProcessesToUnit(%s, %d): %v", scope, other.Process.Pid, err)
	}
	checkIn(t, other.Process.Pid, unitCgroup(t, conn, scope))
	// The leader exits while another process is left in the scope: the scope stays
	// active, and so does the machine (machined drops a machine when its unit goes, not
	// when its leader does).
	leader.Process.Kill()
	leader.Wait()
	time.Sleep(time.Second)
	if _, err := m.GetMachine(name); err != nil {
		t.Errorf("machine gone once its leader exited, with a process left in its scope: %v", err)
	}
	if st, err := conn.ListUnitsByNamesContext(context.Background(), []string{scope}); err != nil || len(st) != 1 || st[0].ActiveState != "active" {
		t.Errorf("scope with a process left after its leader exited: %+v, %v; want active", st, err)
	}
	other.Process.Kill()
	other.Wait()
	waitGone(t, conn, scope)
	waitNoMachine(t, m, name)
}

// TestQEMUInMachineScope: QEMU (TCG: there is no /dev/kvm) runs inside the container, is
// registered as a VM with its limits, and all its threads are in the scope.
func TestQEMUInMachineScope(t *testing.T) {
	if !Inside() {
		Container(t).RunTest(t)
		return
	}
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Fatalf("qemu-system-x86_64 missing in the container rootfs: %v", err)
	}
	conn := systemdConn(t)
	m, err := machine1.New()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	// Paused before the first instruction, as snpd starts guests: the scope is made
	// before `cont`.
	cmd := exec.Command(qemu, "-accel", "tcg", "-machine", "q35", "-m", "128", "-smp", "2",
		"-nodefaults", "-display", "none", "-S", "-qmp", "stdio")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		cmd.Process.Kill()
		cmd.Wait()
	})
	time.Sleep(500 * time.Millisecond)
	name := fmt.Sprintf("snpd-qemu-%d", cmd.Process.Pid)
	if err := m.CreateMachine(name, machineID(t), "snpd", "vm", cmd.Process.Pid, "", limitProps()); err != nil {
		t.Fatalf("CreateMachine for QEMU: %v\nqemu: %s", err, out.String())
	}
	scope := "machine-" + unit.UnitNameEscape(name) + ".scope"
	cg := unitCgroup(t, conn, scope)
	// On cgroup v1 (and v2) memory charged before the move stays with the cgroup QEMU
	// started in (snpd's): compare QEMU's resident memory with the scope's charge.
	t.Logf("QEMU paused, just moved: %s, scope charged %s bytes", vmRSS(cmd.Process.Pid), readTrim("/sys/fs/cgroup/memory"+cg+"/memory.usage_in_bytes"))
	// Resume it; QMP wants capabilities negotiated first.
	fmt.Fprintln(stdin, `{"execute":"qmp_capabilities"}`)
	fmt.Fprintln(stdin, `{"execute":"cont"}`)
	time.Sleep(2 * time.Second)
	if syscall.Kill(cmd.Process.Pid, 0) != nil {
		t.Fatalf("QEMU exited inside the container:\n%s", out.String())
	}
	if !strings.Contains(out.String(), `"event": "RESUME"`) {
		t.Errorf("no RESUME event from QEMU after cont:\n%s", out.String())
	}
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		tid, _ := strconv.Atoi(task.Name())
		checkIn(t, tid, cg)
	}
	checkLimits(t, cg, testCPUWeight)
	t.Logf("QEMU running 2 s: %d threads in %s; %s, scope charged %s bytes", len(tasks), scope, vmRSS(cmd.Process.Pid), readTrim("/sys/fs/cgroup/memory"+cg+"/memory.usage_in_bytes"))
	if outM := machinectlList(t); !strings.Contains(outM, name) {
		t.Errorf("machinectl list does not show %s:\n%s", name, outM)
	}
	if err := m.TerminateMachine(name); err != nil {
		t.Fatal(err)
	}
	waitGone(t, conn, scope)
}

// TestMachineNames pins which names systemd-machined (252) accepts for a machine: host
// names (letters, digits, '-' and '.', labels neither empty nor starting or ending with
// '-', at most 64 characters). snpd's VM names may have '_' and more: they need mapping.
func TestMachineNames(t *testing.T) {
	if !Inside() {
		Container(t).RunTest(t)
		return
	}
	m, err := machine1.New()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	for name, ok := range map[string]bool{
		"web": true, "Web1": true, "1web": true, "web.example": true, "snpd-web": true,
		strings.Repeat("a", 64): true, strings.Repeat("a", 65): false,
		"web_1": false, "x-": false, "-x": false, "a..b": false, "a.": false, ".a": false,
		"a-.b": false, "a.-b": false, "": false,
	} {
		proc := startSleeper(t)
		err := m.CreateMachine(name, nil, "snpd", "vm", proc.Process.Pid, "", nil)
		if (err == nil) != ok {
			t.Errorf("CreateMachine(%q): %v; want accepted=%v", name, err, ok)
		}
		if err == nil {
			if err := m.TerminateMachine(name); err != nil {
				t.Error(err)
			}
		}
	}
}

// unitEnv is set by the drop-in that runs a test as snpd.service.
const unitEnv = "SNPD_SYSTEMDTEST_UNIT"

// TestSnpdUnitMayCreateMachines runs TestCreateMachine's checks as snpd.service itself:
// the repository's unit file, with its sandbox (CapabilityBoundingSet=CAP_NET_ADMIN
// CAP_CHOWN, SecureBits=noroot-locked, ProtectSystem=strict, ProtectControlGroups,
// RestrictAddressFamilies=AF_UNIX..., SystemCallFilter, ...), and a drop-in that only
// swaps ExecStart for this test binary and makes it a oneshot. CreateMachine and
// StartTransientUnit need no capability beyond those: machined and systemd accept the
// calls from uid 0. The scope moves the process out of snpd.service's cgroup.
func TestSnpdUnitMayCreateMachines(t *testing.T) {
	switch {
	case !Inside():
		Container(t).RunTest(t)
		return
	case os.Getenv(unitEnv) == "":
		runAsSnpdUnit(t)
		return
	}
	cg, err := ProcessCgroups("/proc", os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if unitCg := cg["name=systemd"] + cg[""]; !strings.Contains(unitCg, "/system.slice/snpd.service") {
		t.Fatalf("not running in snpd.service: cgroups %v", cg)
	}
	createMachine(t, false)
}

// runAsSnpdUnit installs the repository's snpd.service in the container with a drop-in
// running this test (TestSnpdUnitMayCreateMachines) as its ExecStart, starts it and
// fails t unless it passed.
func runAsSnpdUnit(t *testing.T) {
	unitFile, err := os.ReadFile("../snpd.service")
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// Not under /tmp or /var/tmp: PrivateTmp=yes hides those from the unit.
	bin := "/usr/local/libexec/snpd-systemdtest/" + filepath.Base(exe)
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := copyFile(exe, bin); err != nil {
		t.Fatal(err)
	}
	// No WorkingDirectory=: the repository may be under /root, which ProtectHome hides.
	dropIn := strings.Join([]string{
		"[Unit]",
		"Wants=",
		"After=",
		"[Service]",
		"Type=oneshot",
		"ExecStart=",
		"ExecStart=" + bin + " -test.run=^" + t.Name() + "$$ -test.v -test.count=1",
		"Environment=" + insideEnv + "=1 " + unitEnv + "=1",
		"WatchdogSec=0",
		"Restart=no",
		"TimeoutStartSec=5min",
		"",
	}, "\n")
	for path, content := range map[string][]byte{
		"/etc/systemd/system/snpd.service":             unitFile,
		"/etc/systemd/system/snpd.service.d/test.conf": []byte(dropIn),
	} {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, content, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		os.Remove("/etc/systemd/system/snpd.service.d/test.conf")
		os.Remove("/etc/systemd/system/snpd.service")
		exec.Command("systemctl", "daemon-reload").Run()
	})
	run := func(args ...string) string {
		out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		if err != nil && args[1] != "start" {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	run("systemctl", "daemon-reload")
	startOut := run("systemctl", "start", "snpd.service")
	journal := run("journalctl", "-u", "snpd.service", "-o", "cat", "--no-pager")
	for _, line := range strings.Split(journal, "\n") {
		t.Log("snpd.service: " + line)
	}
	show := run("systemctl", "show", "snpd.service", "-p", "Result", "-p", "ExecMainStatus", "-p", "CapabilityBoundingSet")
	t.Logf("%s", show)
	if !strings.Contains(show, "Result=success") || !strings.Contains(journal, "--- PASS: "+t.Name()) {
		t.Fatalf("%s failed as snpd.service: %s\n%s", t.Name(), startOut, show)
	}
}
