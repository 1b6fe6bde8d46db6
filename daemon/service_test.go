package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"runtime/trace"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/snpd/snpd/config"
	"github.com/snpd/snpd/daemon/api"
)

// Test group ids given operate and read rights (numeric, so no /etc/group entries are
// needed) and the unprivileged uid clients run as.
const (
	testOperateGID = 64101
	testReadGID    = 64102
	testUID        = 64100
)

const (
	testQEMU     = "/usr/bin/qemu-system-x86_64"
	testFirmware = "/usr/share/ovmf/OVMF.fd"
)

// needQEMU skips when the real QEMU or its firmware is absent (only on machines unlike
// this one; scripts/install-deps.sh installs them). KVM is not needed: on platform
// "none" snpd runs guests under TCG when KVM is absent.
func needQEMU(t testing.TB) {
	t.Helper()
	for _, p := range []string{testQEMU, testFirmware} {
		if _, err := os.Stat(p); err != nil {
			t.Skipf("%s is missing (run scripts/install-deps.sh): %v", p, err)
		}
	}
}

// daemonMain runs snpd in a re-executed test binary (SNPD_TEST_DAEMON=config path).
// SNPD_TEST_HALT_BEFORE_CONT=name makes it SIGKILL itself once the pre-cont record of
// that VM is durable, leaving a QEMU paused before cont; SNPD_TEST_HALT_AFTER_SPAWN=name
// once that VM's QEMU started, before its pid is recorded. SNPD_TEST_CPUPROFILE=path
// writes a CPU profile of the daemon and SNPD_TEST_TRACE=path a runtime trace (`go tool
// trace -pprof=sched` shows where API requests wait for a P during concurrent starts).
// SNPD_TEST_API_TIMEOUT=duration sets every apiTimeouts bound to it.
func daemonMain(cfgPath string) {
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, nil)))
	cfg, err := config.LoadDaemon(cfgPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, "snpd:", err)
		os.Exit(1)
	}
	cfg.SetDefaults()
	haltAt := func(env string) func(string) {
		vm := os.Getenv(env)
		if vm == "" {
			return nil
		}
		return func(name string) {
			if name == vm {
				_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
				select {}
			}
		}
	}
	testHookBeforeCont = haltAt("SNPD_TEST_HALT_BEFORE_CONT")
	testHookAfterSpawn = haltAt("SNPD_TEST_HALT_AFTER_SPAWN")
	if v := os.Getenv("SNPD_TEST_API_TIMEOUT"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			fmt.Fprintln(os.Stderr, "snpd: SNPD_TEST_API_TIMEOUT:", err)
			os.Exit(1)
		}
		apiTimeouts.Header, apiTimeouts.Body, apiTimeouts.Idle = d, d, d
	}
	if p := os.Getenv("SNPD_TEST_CPUPROFILE"); p != "" {
		if f, err := os.Create(p); err == nil {
			_ = pprof.StartCPUProfile(f)
			defer pprof.StopCPUProfile()
		}
	}
	if p := os.Getenv("SNPD_TEST_TRACE"); p != "" {
		if f, err := os.Create(p); err == nil {
			_ = trace.Start(f)
			defer trace.Stop()
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := Run(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "snpd:", err)
		pprof.StopCPUProfile()
		os.Exit(1)
	}
	pprof.StopCPUProfile()
	trace.Stop()
	os.Exit(0)
}

// testEnv is one snpd instance's directories and config.
type testEnv struct {
	Dir, StateDir, RuntimeDir, Socket, Config string
}

// newTestEnv creates directories (world-traversable, so clients running as another
// uid reach the socket) and a config for platform "none".
func newTestEnv(t testing.TB, extra string) *testEnv {
	t.Helper()
	dir, err := os.MkdirTemp("", "snpd-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	e := &testEnv{Dir: dir, StateDir: filepath.Join(dir, "state"), RuntimeDir: filepath.Join(dir, "run")}
	e.Socket = filepath.Join(e.RuntimeDir, "snpd.sock")
	e.Config = filepath.Join(dir, "snpd.toml")
	if !strings.Contains(extra, "policy_file") {
		// Tests that need no host policy say so, as a deployment must.
		extra = "run_without_policy = true\n" + extra
	}
	if !strings.Contains("\n"+extra, "\nqemu = ") {
		extra = fmt.Sprintf("qemu = %q\n", testQEMU) + extra
	}
	cfg := fmt.Sprintf("platform = \"none\"\nstate_dir = \"state\"\nruntime_dir = \"run\"\noperate_group = \"%d\"\nread_group = \"%d\"\nstop_timeout = \"2s\"\n%s",
		testOperateGID, testReadGID, extra)
	if err := os.WriteFile(e.Config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return e
}

// testDaemon is snpd running in a child process (the re-executed test binary).
type testDaemon struct {
	t      testing.TB
	cmd    *exec.Cmd
	out    *syncBuffer
	done   chan struct{}
	Client *api.Client
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startDaemon starts snpd for e and waits until its API answers.
func startDaemon(t testing.TB, e *testEnv, env ...string) *testDaemon {
	t.Helper()
	d := &testDaemon{t: t, out: &syncBuffer{}, done: make(chan struct{}), Client: api.NewClient(e.Socket)}
	d.cmd = exec.Command(os.Args[0], "-test.run=^$")
	d.cmd.Env = append(append(os.Environ(), "SNPD_TEST_DAEMON="+e.Config), env...)
	d.cmd.Stdout, d.cmd.Stderr = d.out, d.out
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = d.cmd.Wait(); close(d.done) }()
	t.Cleanup(func() {
		d.signal(syscall.SIGTERM)
		select {
		case <-d.done:
		case <-time.After(15 * time.Second):
			d.signal(syscall.SIGKILL)
			<-d.done
		}
		if t.Failed() {
			t.Logf("snpd output:\n%s", d.out.String())
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := d.Client.Status(ctx)
		cancel()
		if err == nil {
			return d
		}
		select {
		case <-d.done:
			t.Fatalf("snpd exited at start: %s", d.out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("snpd did not answer: %v\n%s", err, d.out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (d *testDaemon) signal(s syscall.Signal) {
	select {
	case <-d.done:
	default:
		_ = d.cmd.Process.Signal(s)
	}
}

// kill9 SIGKILLs snpd and waits for it to be gone.
func (d *testDaemon) kill9() {
	d.signal(syscall.SIGKILL)
	<-d.done
}

// vmTOML is a small platform-"none" guest: Debian's OVMF, one vCPU, 64 MiB.
func vmTOML(name, extra string) string {
	return fmt.Sprintf("name = %q\nvcpus = 1\nmemory_mib = 64\nfirmware = %q\n%s", name, testFirmware, extra)
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func mustDefine(t testing.TB, c *api.Client, name, extra string) {
	t.Helper()
	if _, err := c.Define(ctxT(t, 10*time.Second), api.DefineRequest{File: name + ".toml", TOML: vmTOML(name, extra)}); err != nil {
		t.Fatalf("defining %s: %v", name, err)
	}
}

// pidAlive reports whether pid exists and is not a zombie.
func pidAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i > 0 && len(b) > i+2 && b[i+2] != 'Z'
}

func waitFor(t testing.TB, what string, d time.Duration, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok, err := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s (last error %v)", d, what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func vmState(c *api.Client, name string) (*api.VMInfo, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return c.Get(ctx, name)
}

func isKind(err error, kind error) bool { return errors.Is(err, kind) }
