package systemdtest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// A real systemd for tests: the development and CI machines do not run systemd as PID 1,
// so tests that need systemd's D-Bus API (transient scopes, systemd-machined) boot one in
// a systemd-nspawn container with scripts/systemd-container.sh and run there. See
// docs/systemd-container.md for what works and why.

// insideEnv is set in the environment of a test binary run inside the container by
// RunTest; Inside reports it.
const insideEnv = "SNPD_SYSTEMDTEST_INSIDE"

// bootTimeout bounds booting the container (about 6 s on an idle 2-core machine).
const bootTimeout = 120 * time.Second

// Inside reports whether this test binary runs inside the systemd container, started
// there by (*SystemdContainer).RunTest: systemd is then PID 1 and the system bus is at
// its usual address.
func Inside() bool { return os.Getenv(insideEnv) == "1" }

// SystemdContainer is a running systemd-nspawn container whose PID 1 is systemd (Debian
// bookworm's, 252), with D-Bus and systemd-machined. The repository, GOROOT and the Go
// module cache are bound read-only at their host paths, Scratch read-write.
type SystemdContainer struct {
	// Name is the container's machine name and hostname.
	Name string
	// Leader is the host pid of the container's PID 1 (systemd).
	Leader int
	// Scratch is a directory shared with the container, at the same path on both sides.
	Scratch string

	script string
	cmd    *exec.Cmd
	exited chan struct{}
	log    *bytes.Buffer
	logMu  *sync.Mutex

	copyOnce sync.Once
	copyErr  error
}

var (
	containerMu  sync.Mutex
	container    *SystemdContainer
	containerErr error
	skipReason   string
)

// Container returns the systemd container shared by the tests of this test binary,
// booting it on first use (a few seconds). The test is skipped, naming what is missing,
// when the container cannot run here: not root, systemd-nspawn not installed, no cgroup
// namespaces, or no rootfs (scripts/install-deps.sh builds it with
// `scripts/systemd-container.sh setup`). A failure to boot fails the test. Call Shutdown
// from TestMain after m.Run; if the test binary dies first, the container is halted all
// the same (it gets SIGTERM when the test binary's thread that started it exits).
func Container(t testing.TB) *SystemdContainer {
	t.Helper()
	if Inside() {
		t.Fatal("systemdtest.Container called inside the container")
	}
	containerMu.Lock()
	defer containerMu.Unlock()
	if container == nil && containerErr == nil && skipReason == "" {
		container, skipReason, containerErr = boot()
	}
	if skipReason != "" {
		t.Skip(skipReason)
	}
	if containerErr != nil {
		t.Fatalf("booting the systemd container: %v", containerErr)
	}
	return container
}

// Shutdown halts the container booted by Container, if any, and removes what it left
// (cgroups, scratch). Call it from TestMain after m.Run.
func Shutdown() {
	containerMu.Lock()
	defer containerMu.Unlock()
	if container == nil {
		return
	}
	container.stop()
	container = nil
}

// repoRoot walks up from the working directory (a package directory under go test) to
// the directory holding go.mod.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

// rootfs is where scripts/systemd-container.sh setup puts the container's tree.
func rootfs() string {
	if p := os.Getenv("SNPD_SYSTEMD_ROOTFS"); p != "" {
		return p
	}
	return "/var/cache/snpd-test/systemd-rootfs"
}

// boot starts the container; it returns a skip reason when the container cannot run here.
func boot() (*SystemdContainer, string, error) {
	if os.Geteuid() != 0 {
		return nil, "booting a systemd container with systemd-nspawn needs root", nil
	}
	if _, err := exec.LookPath("systemd-nspawn"); err != nil {
		return nil, "systemd-nspawn not installed (Debian package systemd-container; run scripts/install-deps.sh)", nil
	}
	if _, err := os.Stat("/proc/self/ns/cgroup"); err != nil {
		return nil, "the kernel has no cgroup namespaces (/proc/self/ns/cgroup; Linux >= 4.6 has them): systemd-nspawn cannot give the container its own cgroup tree", nil
	}
	root, err := repoRoot()
	if err != nil {
		return nil, "", err
	}
	script := filepath.Join(root, "scripts", "systemd-container.sh")
	if err := exec.Command("bash", script, "check").Run(); err != nil {
		return nil, fmt.Sprintf("no current systemd container rootfs at %s (run scripts/install-deps.sh, or scripts/systemd-container.sh setup)", rootfs()), nil
	}
	c := &SystemdContainer{
		Name:   fmt.Sprintf("snpdtest-%d", os.Getpid()),
		script: script,
		exited: make(chan struct{}),
		log:    &bytes.Buffer{},
		logMu:  &sync.Mutex{},
	}
	// Containers of test binaries that died without Shutdown.
	if out, err := exec.Command("bash", c.script, "prune").CombinedOutput(); err != nil {
		return nil, "", fmt.Errorf("pruning dead containers: %v: %s", err, out)
	}
	started := make(chan error, 1)
	go c.run(started)
	if err := <-started; err != nil {
		return nil, "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "bash", c.script, "wait", c.Name, strconv.Itoa(int(bootTimeout/time.Second))).Output()
	if err != nil {
		c.stop()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			err = fmt.Errorf("%v: %s", err, ee.Stderr)
		}
		return nil, "", fmt.Errorf("waiting for systemd in %s: %w\nconsole:\n%s", c.Name, err, c.Console())
	}
	c.Leader, err = strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		c.stop()
		return nil, "", fmt.Errorf("reading the container's leader pid from %q: %v", out, err)
	}
	c.Scratch = filepath.Join("/var/tmp/snpd-nspawn", c.Name)
	return c, "", nil
}

// run starts systemd-nspawn (through the script's run subcommand, which execs it) and
// waits for it on a locked OS thread, so that the parent-death signal set on it fires
// only when this test binary exits, not when the Go runtime retires a thread.
func (c *SystemdContainer) run(started chan<- error) {
	runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
	c.cmd = exec.Command("bash", c.script, "run", c.Name)
	c.cmd.Stdin = nil
	w := &lockedWriter{mu: c.logMu, w: c.log}
	c.cmd.Stdout, c.cmd.Stderr = w, w
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGTERM}
	if err := c.cmd.Start(); err != nil {
		started <- fmt.Errorf("starting %s run: %w", c.script, err)
		close(c.exited)
		return
	}
	started <- nil
	_ = c.cmd.Wait()
	close(c.exited)
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// Console returns what the container printed on its console so far (systemd's boot
// and shutdown messages, nspawn's errors).
func (c *SystemdContainer) Console() string {
	c.logMu.Lock()
	defer c.logMu.Unlock()
	return c.log.String()
}

func (c *SystemdContainer) stop() {
	_ = exec.Command("bash", c.script, "stop", c.Name).Run()
	select {
	case <-c.exited:
	case <-time.After(30 * time.Second):
	}
}

// Command returns a command that runs name with args inside the container, in a
// transient scope of the container's systemd (system.slice), as root, in the current
// directory when it exists inside (the repository does) and in / otherwise. The
// environment is a plain one (PATH, HOME, LANG) plus env ("KEY=value").
func (c *SystemdContainer) Command(ctx context.Context, env []string, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "bash", append([]string{c.script, "exec", c.Name, name}, args...)...)
	cmd.Env = append([]string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME=/root",
		"LANG=C.UTF-8",
	}, env...)
	return cmd
}

// Output runs name with args inside the container and returns its standard output; the
// test fails if it does not exit 0.
func (c *SystemdContainer) Output(t testing.TB, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := c.Command(ctx, nil, name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("in %s: %s %s: %v\nstdout:\n%s\nstderr:\n%s", c.Name, name, strings.Join(args, " "), err, out, stderr.String())
	}
	return string(out)
}

// RunTest runs the calling test (t.Name(), subtests included) again inside the
// container, from a copy of this test binary, with Inside() true there, and fails t if
// it fails there. Its output is logged; a skip inside skips t. The usual shape:
//
//	func TestX(t *testing.T) {
//		if !systemdtest.Inside() {
//			systemdtest.Container(t).RunTest(t)
//			return
//		}
//		// systemd is PID 1 here; the system bus is the container's.
//	}
func (c *SystemdContainer) RunTest(t *testing.T) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(c.Scratch, filepath.Base(exe))
	c.copyOnce.Do(func() { c.copyErr = copyFile(exe, bin) })
	if c.copyErr != nil {
		t.Fatalf("copying the test binary into the container: %v", c.copyErr)
	}
	parts := strings.Split(t.Name(), "/")
	for i, p := range parts {
		parts[i] = "^" + regexp.QuoteMeta(p) + "$"
	}
	args := []string{"-test.run=" + strings.Join(parts, "/"), "-test.v=true", "-test.count=1"}
	if dl, ok := t.Deadline(); ok {
		args = append(args, "-test.timeout="+time.Until(dl).Round(time.Second).String())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := c.Command(ctx, []string{insideEnv + "=1", "TMPDIR=" + c.Scratch}, bin, args...)
	out, err := cmd.CombinedOutput()
	skipped := false
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(strings.TrimSpace(line), "--- SKIP: "+t.Name()+" ") {
			skipped = true
		}
		t.Log("container: " + line)
	}
	if err != nil {
		t.Fatalf("%s inside %s: %v", t.Name(), c.Name, err)
	}
	if !bytes.Contains(out, []byte("--- PASS: "+t.Name()+" ")) && !skipped {
		t.Fatalf("%s did not run inside %s (no PASS line)", t.Name(), c.Name)
	}
	if skipped {
		t.Skip("skipped inside the container")
	}
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// BusAddress is the container's system bus as seen from the host
// (DBUS_SYSTEM_BUS_ADDRESS syntax): its socket reached through /proc/LEADER/root. A
// client on the host may call systemd and machined there, but process ids in calls are
// the container's (see PIDInside).
func (c *SystemdContainer) BusAddress() string {
	return "unix:path=" + c.HostPath("/run/dbus/system_bus_socket")
}

// HostPath is the host path of path inside the container (through /proc/LEADER/root),
// for instance of a cgroup file under /sys/fs/cgroup.
func (c *SystemdContainer) HostPath(path string) string {
	return filepath.Join(fmt.Sprintf("/proc/%d/root", c.Leader), path)
}

// PIDInside returns the pid that host process hostPID has in the container's pid
// namespace (the last NSpid of /proc/PID/status).
func PIDInside(hostPID int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", hostPID))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "NSpid:"); ok {
			f := strings.Fields(rest)
			if len(f) < 2 {
				return 0, fmt.Errorf("process %d is not in a child pid namespace (NSpid:%s)", hostPID, rest)
			}
			return strconv.Atoi(f[len(f)-1])
		}
	}
	return 0, fmt.Errorf("no NSpid line in /proc/%d/status", hostPID)
}
