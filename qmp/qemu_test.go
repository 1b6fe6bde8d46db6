package qmp_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/digitalocean/go-qemu/qmp/raw"
	"github.com/snpd/snpd/qmp"
)

// qemuBinary is the QEMU the project installs (scripts/install-deps.sh).
const qemuBinary = "qemu-system-x86_64"

// startQEMU starts `qemu-system-x86_64 -S ... -machine none` (or extra instead of
// "-machine none") with its QMP monitor on a
// listening socket created by this process and passed as fd 3, exactly as snpd does,
// and returns the socket path. QEMU is killed when the test ends.
func startQEMU(t testing.TB, extra ...string) (path string, cmd *exec.Cmd) {
	t.Helper()
	bin, err := exec.LookPath(qemuBinary)
	if err != nil {
		t.Skipf("%s not installed (scripts/install-deps.sh installs it): %v", qemuBinary, err)
	}
	dir, err := os.MkdirTemp("", "qmp-qemu")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path = filepath.Join(dir, "qmp.sock")
	lf, err := qmp.ListenUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	chardev, err := qmp.ChardevSocketFD("qmp", 3)
	if err != nil {
		t.Fatal(err)
	}
	argv := []string{bin, "-S", "-nodefaults", "-no-user-config",
		"-display", "none", "-chardev", chardev, "-mon", "chardev=qmp,mode=control"}
	if len(extra) == 0 {
		extra = []string{"-machine", "none"}
	}
	argv = append(argv, extra...)
	t.Logf("argv: %q", argv)
	cmd = exec.Command(argv[0], argv[1:]...)
	cmd.ExtraFiles = []*os.File{lf}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		lf.Close()
		t.Fatalf("starting qemu: %v", err)
	}
	lf.Close()
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("qemu stderr: %s", stderr.String())
		}
	})
	return path, cmd
}

func dialQEMU(t testing.TB, path string) *qmp.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := qmp.Dial(ctx, path, nil)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestQEMUQueries(t *testing.T) {
	path, _ := startQEMU(t)
	c := dialQEMU(t, path)
	ctx := testCtx(t)

	v, err := c.QueryVersion(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("QEMU %s (%s)", v, v.Package)
	if !v.AtLeast(9, 1) {
		t.Errorf("QEMU %s is older than 9.1 (no sev-snp-guest)", v)
	}
	if g := c.Greeting().Version; g != v {
		t.Errorf("greeting version %+v != query-version %+v", g, v)
	}
	st, err := c.QueryStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Running || st.Status != qmp.RunStatePrelaunch {
		t.Errorf("query-status = %+v, want prelaunch, not running", st)
	}

	raw, err := c.ExecuteRaw(ctx, "query-qmp-schema", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("query-qmp-schema reply: %d bytes", len(raw))
	if len(raw) < 128<<10 {
		t.Errorf("query-qmp-schema reply is %d bytes, expected > 128 KiB (a line longer than bufio.Scanner's 64 KiB)", len(raw))
	}

	props, err := c.QOMListProperties(ctx, "sev-snp-guest")
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]string{}
	var lines []string
	for _, p := range props {
		have[p.Name] = p.Type
		lines = append(lines, p.Name+" ("+p.Type+")")
	}
	sort.Strings(lines)
	t.Logf("sev-snp-guest properties: %s", strings.Join(lines, ", "))
	for _, name := range []string{"policy", "id-block", "id-auth", "host-data", "kernel-hashes", "guest-visible-workarounds", "author-key-enabled", "cbitpos", "reduced-phys-bits"} {
		if _, ok := have[name]; !ok {
			t.Errorf("sev-snp-guest has no property %q", name)
		}
	}
	if have["policy"] != "uint64" {
		t.Errorf("sev-snp-guest policy type = %q, want uint64", have["policy"])
	}

	// -machine none has no SEV: QEMU 10.0 answers enabled=false with the "sev" arm.
	sev, err := c.QuerySEV(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if sev.Enabled || sev.SevType != qmp.SevTypeSEV || sev.Policy == nil || sev.SNPPolicy != nil || sev.State != "uninit" {
		t.Errorf("query-sev on -machine none = %+v", sev)
	}
	// Real error replies keep class and description.
	var qe *qmp.Error
	err = c.QOMGet(ctx, "/no/such/object", "type", new(any))
	if !errors.As(err, &qe) || qe.Class != qmp.ClassDeviceNotFound || !strings.Contains(qe.Desc, "/no/such/object") {
		t.Errorf("qom-get on a missing path: %v, want DeviceNotFound", err)
	}
	_, err = c.QuerySEVCapabilities(ctx)
	if _, statErr := os.Stat("/dev/sev"); statErr != nil {
		if !errors.As(err, &qe) || qe.Class != qmp.ClassGenericError {
			t.Errorf("query-sev-capabilities without /dev/sev: %v, want GenericError", err)
		} else {
			t.Logf("query-sev-capabilities: %s: %s", qe.Class, qe.Desc)
		}
	}

	list, err := c.QOMList(ctx, "/machine")
	if err != nil || len(list) == 0 {
		t.Errorf("qom-list /machine = %d entries, %v", len(list), err)
	}
	var typ string
	if err := c.QOMGet(ctx, "/machine", "type", &typ); err != nil || typ != "none-machine" {
		t.Errorf("qom-get /machine type = %q, %v", typ, err)
	}
	mem, err := c.QueryMemorySizeSummary(ctx)
	if err != nil {
		t.Errorf("query-memory-size-summary: %v", err)
	} else {
		t.Logf("memory: %+v", mem)
	}
	cpus, err := c.QueryCPUsFast(ctx)
	if err != nil {
		t.Errorf("query-cpus-fast: %v", err)
	} else {
		t.Logf("cpus: %d", len(cpus))
	}
}

func TestQEMUQuit(t *testing.T) {
	path, cmd := startQEMU(t)
	c := dialQEMU(t, path)
	sub := c.Subscribe(0)
	if err := c.Quit(testCtx(t)); err != nil {
		t.Fatalf("quit: %v", err)
	}
	select {
	case <-c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("connection still open 10 s after quit")
	}
	if !errors.Is(c.Err(), qmp.ErrDisconnected) {
		t.Errorf("Err after quit = %v, want ErrDisconnected", c.Err())
	}
	var names []string
	for ev := range sub.Events() {
		names = append(names, ev.Name)
		if sd, ok := ev.Typed.(qmp.ShutdownEvent); ok && sd.Reason != "host-qmp-quit" {
			t.Errorf("SHUTDOWN reason = %q", sd.Reason)
		}
	}
	if len(names) == 0 || names[len(names)-1] != qmp.EventShutdown {
		t.Errorf("events after quit = %v, want SHUTDOWN last", names)
	}
	_ = cmd
}

// cont on a paused QEMU: RESUME arrives before cont's reply, and with a subscriber that
// never reads, cont still returns (the go-qemu SocketMonitor deadlock).
func TestQEMUContStopEvents(t *testing.T) {
	path, _ := startQEMU(t)
	c := dialQEMU(t, path)
	ctx := testCtx(t)
	c.Subscribe(1) // never read
	sub := c.Subscribe(0)
	if err := c.Cont(ctx); err != nil {
		t.Fatalf("cont: %v", err)
	}
	st, err := c.QueryStatus(ctx)
	if err != nil || !st.Running || st.Status != qmp.RunStateRunning {
		t.Errorf("after cont: %+v, %v", st, err)
	}
	if err := c.Stop(ctx); err != nil {
		t.Fatalf("stop: %v", err)
	}
	st, err = c.QueryStatus(ctx)
	if err != nil || st.Running || st.Status != qmp.RunStatePaused {
		t.Errorf("after stop: %+v, %v", st, err)
	}
	for _, want := range []any{qmp.ResumeEvent{}, qmp.StopEvent{}} {
		select {
		case ev := <-sub.Events():
			if ev.Typed != want || ev.Time.IsZero() {
				t.Errorf("event %s: Typed %#v, want %#v (time %v)", ev.Name, ev.Typed, want, ev.Time)
			}
		case <-ctx.Done():
			t.Fatalf("no %T event", want)
		}
	}
}

// While one client holds QEMU's monitor a second one times out with ErrNoGreeting; after
// the first leaves (snpd restarting), dialing the same path again reattaches.
func TestQEMUSecondClientAndReconnect(t *testing.T) {
	path, _ := startQEMU(t)
	first := dialQEMU(t, path)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := qmp.Dial(ctx, path, nil)
	if !errors.Is(err, qmp.ErrNoGreeting) || !errors.Is(err, qmp.ErrMonitorBusy) {
		t.Fatalf("second client: %v, want ErrNoGreeting and ErrMonitorBusy", err)
	}
	t.Logf("second client: %v", err)
	if err := first.Cont(testCtx(t)); err != nil {
		t.Fatalf("first client after the second gave up: %v", err)
	}
	if err := first.Stop(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	first.Close()
	for i := 0; i < 3; i++ { // reattach repeatedly; state persists in QEMU
		c := dialQEMU(t, path)
		st, err := c.QueryStatus(testCtx(t))
		if err != nil || st.Status != qmp.RunStatePaused {
			t.Errorf("reconnect %d: %+v, %v", i, st, err)
		}
		c.Close()
	}
}

// Monitor adapts Client to go-qemu's qmp.Monitor: go-qemu's raw package runs on it.
func TestQEMUGoQemuMonitor(t *testing.T) {
	path, _ := startQEMU(t)
	m := qmp.NewMonitor(path, 5*time.Second)
	if _, err := m.Run([]byte(`{"execute":"query-status"}`)); err == nil {
		t.Error("Run before Connect succeeded")
	}
	if err := m.Connect(); err != nil {
		t.Fatal(err)
	}
	defer m.Disconnect()
	ctx := testCtx(t)
	events, err := m.Events(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r := raw.NewMonitor(m)
	st, err := r.QueryStatus()
	if err != nil || st.Status != raw.RunStatePrelaunch {
		t.Errorf("raw QueryStatus = %+v, %v", st, err)
	}
	if err := r.Cont(); err != nil { // RESUME is delivered to events, not blocking Run
		t.Fatal(err)
	}
	select {
	case ev := <-events:
		if ev.Event != qmp.EventResume || ev.Timestamp.Seconds == 0 {
			t.Errorf("event = %+v", ev)
		}
	case <-ctx.Done():
		t.Fatal("no RESUME event")
	}
	if _, err := m.Run([]byte(`{"execute":"qom-get","arguments":{"path":"/nope","property":"x"}}`)); err == nil {
		t.Error("qom-get /nope succeeded")
	}
	if _, err := m.Run([]byte(`not json`)); err == nil {
		t.Error("Run accepted malformed JSON")
	}
}

// A paused q35 machine (TCG: nothing runs before cont, so no KVM is needed) answers the
// launch-verification queries with real data, including qom-get on a sev-snp-guest
// object given in QEMU's JSON -object syntax (not attached to the machine, which would
// need SEV hardware).
func TestQEMUMachineQueries(t *testing.T) {
	const hostData = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA="
	obj := `{"qom-type":"sev-snp-guest","id":"sev0","policy":196609,"host-data":"` + hostData +
		`","kernel-hashes":true,"cbitpos":51,"reduced-phys-bits":1}`
	path, _ := startQEMU(t, "-machine", "q35", "-accel", "tcg", "-m", "256", "-smp", "2",
		"-device", "virtio-rng-pci,id=rng0", "-object", obj)
	c := dialQEMU(t, path)
	ctx := testCtx(t)

	var policy uint64
	if err := c.QOMGet(ctx, "/objects/sev0", "policy", &policy); err != nil || policy != 196609 {
		t.Errorf("qom-get policy = %#x, %v", policy, err)
	}
	var hd string
	if err := c.QOMGet(ctx, "/objects/sev0", "host-data", &hd); err != nil || hd != hostData {
		t.Errorf("qom-get host-data = %q, %v", hd, err)
	}
	var kh any
	if err := c.QOMGet(ctx, "/objects/sev0", "kernel-hashes", &kh); err != nil || kh != true {
		t.Errorf("qom-get kernel-hashes = %v, %v", kh, err)
	}
	props, err := c.QOMList(ctx, "/objects/sev0")
	if err != nil || len(props) < 5 {
		t.Errorf("qom-list /objects/sev0 = %v, %v", props, err)
	}

	mem, err := c.QueryMemorySizeSummary(ctx)
	if err != nil || mem.BaseMemory != 256<<20 {
		t.Errorf("query-memory-size-summary = %+v, %v", mem, err)
	}
	cpus, err := c.QueryCPUsFast(ctx)
	if err != nil || len(cpus) != 2 {
		t.Fatalf("query-cpus-fast = %+v, %v", cpus, err)
	}
	for i, cpu := range cpus {
		if cpu.CPUIndex != i || cpu.Target != "x86_64" || cpu.QOMPath == "" || cpu.ThreadID == 0 ||
			cpu.Props == nil || cpu.Props.CoreID == nil || *cpu.Props.CoreID != i || cpu.Props.SocketID == nil {
			t.Errorf("cpu %d = %+v", i, cpu)
		}
	}
	buses, err := c.QueryPCI(ctx)
	if err != nil || len(buses) == 0 {
		t.Fatalf("query-pci = %v, %v", buses, err)
	}
	var rng *qmp.PCIDeviceInfo
	var ids []string
	for i, d := range buses[0].Devices {
		ids = append(ids, fmt.Sprintf("%02x.%x %04x:%04x %q", d.Slot, d.Function, d.ID.Vendor, d.ID.Device, d.QdevID))
		if d.QdevID == "rng0" {
			rng = &buses[0].Devices[i]
		}
	}
	t.Logf("PCI bus 0: %s", strings.Join(ids, ", "))
	if rng == nil {
		t.Fatal("virtio-rng-pci rng0 not in query-pci")
	}
	if rng.ID.Vendor != 0x1af4 || rng.ID.Device != 0x1005 || len(rng.Regions) == 0 || rng.ID.Subsystem == nil {
		t.Errorf("rng0 = %+v", *rng)
	}
	if buses[0].Devices[0].ClassInfo.Desc != "Host bridge" {
		t.Errorf("device 00.0 class = %+v, want the host bridge", buses[0].Devices[0].ClassInfo)
	}
}

// NewClientFile over one end of a socketpair whose other end QEMU got as
// "-chardev socket,id=qmp,fd=3" (a connected socket: no path at all).
func TestQEMUSocketpairFD(t *testing.T) {
	bin, err := exec.LookPath(qemuBinary)
	if err != nil {
		t.Skipf("%s not installed (scripts/install-deps.sh installs it): %v", qemuBinary, err)
	}
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	ours := os.NewFile(uintptr(fds[0]), "qmp")
	theirs := os.NewFile(uintptr(fds[1]), "qmp-qemu")
	defer ours.Close()
	argv := []string{bin, "-machine", "none", "-S", "-nodefaults", "-no-user-config", "-display", "none",
		"-chardev", "socket,id=qmp,fd=3", "-mon", "chardev=qmp,mode=control"}
	t.Logf("argv: %q", argv)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.ExtraFiles = []*os.File{theirs}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	theirs.Close()
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	c, err := qmp.NewClientFile(testCtx(t), ours, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if st, err := c.QueryStatus(testCtx(t)); err != nil || st.Status != qmp.RunStatePrelaunch {
		t.Errorf("query-status = %+v, %v", st, err)
	}
	if err := c.Quit(testCtx(t)); err != nil {
		t.Errorf("quit: %v", err)
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("qemu exit after quit: %v", err)
	}
}
