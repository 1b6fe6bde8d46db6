package systemd

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/snpd/snpd/systemd/systemdtest"
	"golang.org/x/sys/unix"
)

// helperEnv selects a helper role when the test binary is re-executed; execArgvEnv
// (a JSON array) makes the "exec" role exec that program instead of itself.
const (
	helperEnv   = "SNPD_SYSTEMD_TEST_HELPER"
	execArgvEnv = "SNPD_SYSTEMD_TEST_ARGV"
)

// TestMain lets the test binary play systemd's part in socket activation. systemd
// forks, sets LISTEN_PID to the child's pid and execs the service; the pid is only
// known after the fork. Go cannot run code between fork and exec, so the parent starts
// a "trampoline" (role exec) that sets LISTEN_PID to its own pid and replaces itself
// with execve(2), which keeps the pid: the "child" role then sees exactly what a
// service started by systemd sees, with no fix-up in the code under test.
func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "exec":
		// As systemd does after fork: LISTEN_PID (and WATCHDOG_PID when a watchdog is
		// set) name the process that is about to exec the service.
		os.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid()))
		if os.Getenv("WATCHDOG_USEC") != "" {
			os.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
		}
		os.Setenv(helperEnv, "child")
		exe, err := os.Executable()
		argv := os.Args
		if a := os.Getenv(execArgvEnv); a != "" && err == nil {
			// Exec another program (the real snpd) instead of this test binary.
			os.Unsetenv(execArgvEnv)
			os.Unsetenv(helperEnv)
			err = json.Unmarshal([]byte(a), &argv)
			exe = argv[0]
		}
		if err == nil {
			err = syscall.Exec(exe, argv, os.Environ())
		}
		fmt.Fprintln(os.Stderr, "trampoline exec:", err)
		os.Exit(2)
	case "child":
		activatedChild()
		os.Exit(0)
	}
	code := m.Run()
	systemdtest.Shutdown() // the systemd container, if a test booted it
	os.Exit(code)
}

// childReport is what the activated child tells the test, as one JSON line on stdout.
type childReport struct {
	Pid         int               // the child's pid
	Names       map[string]string // listener name -> address, from Listeners()
	Err         string            // Listeners() error
	Cached      bool              // a second Listeners() call returned the same listeners
	API         bool              // APIListener("api") found one
	APIErr      string            // APIListener("api") error
	EnvLeft     []string          // LISTEN_* variables still set afterwards
	FD3Open     bool              // the inherited descriptor 3 is still open
	FD3CloseExe bool              // ...and close-on-exec (so QEMU children cannot inherit it)
}

func activatedChild() {
	var r childReport
	r.Pid = os.Getpid()
	ls, err := Listeners()
	if err != nil {
		r.Err = err.Error()
	}
	r.Names = map[string]string{}
	for name, l := range ls {
		for _, x := range l {
			r.Names[name] = x.Addr().Network() + " " + x.Addr().String()
		}
	}
	ls2, _ := Listeners()
	r.Cached = fmt.Sprint(ls) == fmt.Sprint(ls2)
	api, ok, err := APIListener("api")
	r.API = ok
	if err != nil {
		r.APIErr = err.Error()
	}
	for _, k := range []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} {
		if _, set := os.LookupEnv(k); set {
			r.EnvLeft = append(r.EnvLeft, k)
		}
	}
	if fl, err := unix.FcntlInt(3, unix.F_GETFD, 0); err == nil {
		r.FD3Open, r.FD3CloseExe = true, fl&unix.FD_CLOEXEC != 0
	}
	b, _ := json.Marshal(r)
	os.Stdout.Write(append(b, '\n'))
	if ok {
		// Serve one connection on the activated socket to prove it is the real one.
		api.(*net.UnixListener).SetDeadline(time.Now().Add(10 * time.Second))
		c, err := api.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, "accept:", err)
			os.Exit(3)
		}
		fmt.Fprintf(c, "pong from %d\n", os.Getpid())
		c.Close()
	}
}

// activate runs the test binary as a socket-activated service with f as descriptor 3
// and the given LISTEN_FDS/LISTEN_FDNAMES, returning its report, the running command
// and its stdout reader.
func activate(t *testing.T, f *os.File, fds, names string) (childReport, *exec.Cmd) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	env := []string{helperEnv + "=exec", "LISTEN_FDS=" + fds}
	if names != "" {
		env = append(env, "LISTEN_FDNAMES="+names)
	}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "LISTEN_") && !strings.HasPrefix(kv, helperEnv+"=") {
			env = append(env, kv)
		}
	}
	cmd.Env = env
	cmd.ExtraFiles = []*os.File{f}
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadBytes('\n')
	if err != nil {
		t.Fatalf("reading the child's report: %v", err)
	}
	var r childReport
	if err := json.Unmarshal(line, &r); err != nil {
		t.Fatalf("child report %q: %v", line, err)
	}
	t.Logf("child (pid %d, started as %d): %+v", r.Pid, cmd.Process.Pid, r)
	if r.Pid != cmd.Process.Pid {
		t.Fatalf("child pid %d, want the started pid %d (exec keeps the pid)", r.Pid, cmd.Process.Pid)
	}
	return r, cmd
}

func unixListenerFile(t *testing.T) (string, *os.File) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "snpd.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	f, err := l.File()
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	t.Cleanup(func() { f.Close() })
	return path, f
}

func TestSocketActivation(t *testing.T) {
	path, f := unixListenerFile(t)
	r, cmd := activate(t, f, "1", "api")
	f.Close() // the child owns the socket now, as the service does under systemd

	if r.Err != "" || r.APIErr != "" || !r.API {
		t.Fatalf("Listeners error %q, APIListener error %q, found %v", r.Err, r.APIErr, r.API)
	}
	if got := r.Names["api"]; got != "unix "+path {
		t.Errorf("listener api = %q, want unix %s", got, path)
	}
	if !r.Cached {
		t.Error("a second Listeners() call returned something else")
	}
	if len(r.EnvLeft) != 0 {
		t.Errorf("LISTEN_* left in the environment: %v", r.EnvLeft)
	}
	if r.FD3Open && !r.FD3CloseExe {
		t.Error("inherited descriptor 3 is not close-on-exec: QEMU children would inherit the API socket")
	}
	c, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("pong from %d\n", r.Pid); line != want {
		t.Errorf("activated socket answered %q, want %q", line, want)
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("child: %v", err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Errorf("socket file gone after the service exited (it belongs to snpd.socket): %v", err)
	}
}

func TestSocketActivationFailsClosed(t *testing.T) {
	_, sock := unixListenerFile(t)
	tcp, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	tcpf, err := tcp.File()
	if err != nil {
		t.Fatal(err)
	}
	tcp.Close()
	defer tcpf.Close()
	notSocket, err := os.Open(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	defer notSocket.Close()

	for _, c := range []struct {
		name       string
		f          *os.File
		fds, names string
		listenErr  string // substring of the Listeners error; "" = none
		apiErr     string // substring of the APIListener error
		// unknownFDs: LISTEN_FDS is unreadable, so which descriptors systemd passed is
		// unknown and none is touched; the daemon exits on the error, closing them.
		unknownFDs bool
	}{
		{"more names than descriptors", sock, "1", "api:extra", "2 names for 1 descriptors", "2 names for 1", false},
		{"bad name", sock, "1", "a pi", "printable", "printable", false},
		{"descriptor is not a socket", notSocket, "1", "api", "not a listening stream socket", "not a listening", false},
		{"malformed LISTEN_FDS", sock, "1x", "api", "LISTEN_FDS", "LISTEN_FDS", true},
		{"tcp socket named api", tcpf, "1", "api", "", "want a unix stream socket", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			r, _ := activate(t, c.f, c.fds, c.names)
			if !strings.Contains(r.Err, c.listenErr) || (c.listenErr == "" && r.Err != "") {
				t.Errorf("Listeners error %q, want one containing %q", r.Err, c.listenErr)
			}
			if r.API || !strings.Contains(r.APIErr, c.apiErr) {
				t.Errorf("APIListener = %v, %q; want no listener and an error containing %q", r.API, r.APIErr, c.apiErr)
			}
			if c.listenErr != "" && len(r.Names) != 0 {
				t.Errorf("listeners returned despite the error: %v", r.Names)
			}
			if !c.unknownFDs && r.FD3Open && !r.FD3CloseExe {
				t.Error("descriptor 3 left open and inheritable after a failed activation")
			}
		})
	}
}

func TestListenersNotOurs(t *testing.T) {
	// Variables inherited from an activated parent name the parent's pid: ignore them
	// (never touch descriptor 3, which is then not ours) and do not pass them on.
	t.Setenv("LISTEN_PID", "1")
	t.Setenv("LISTEN_FDS", "1")
	t.Setenv("LISTEN_FDNAMES", "api")
	ls, err := listenersFromEnv()
	if err != nil || len(ls) != 0 {
		t.Fatalf("listenersFromEnv = %v, %v; want none", ls, err)
	}
	for _, k := range []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} {
		if v, set := os.LookupEnv(k); set {
			t.Errorf("%s=%s still set", k, v)
		}
	}
}

func TestParseListenEnv(t *testing.T) {
	for _, c := range []struct {
		pid, fds, names string
		n               int
		want            []string
		ok              bool
	}{
		{"", "", "", 0, nil, true},
		{"", "1", "api", 0, nil, true},
		{"7", "1", "api", 0, nil, true},
		{"42", "1", "api", 1, []string{"api"}, true},
		{"42", "2", "api:admin", 2, []string{"api", "admin"}, true},
		{"42", "2", "", 2, []string{"LISTEN_FD_3", "LISTEN_FD_4"}, true},
		{"42", "0", "", 0, []string{}, true},
		{"42", "", "", 0, nil, false},
		{"42", "-1", "", 0, nil, false},
		{"42", "65", "", 0, nil, false},
		{"42", "1", "api:x", 0, nil, false},
		{"42", "2", "api:", 0, nil, false},
		{"x", "1", "api", 0, nil, false},
		{"0", "1", "api", 0, nil, false},
	} {
		n, names, err := parseListenEnv(c.pid, c.fds, c.names, 42)
		if (err == nil) != c.ok || n != c.n || fmt.Sprint(names) != fmt.Sprint(c.want) {
			t.Errorf("parseListenEnv(%q, %q, %q) = %d, %q, %v; want %d, %q, ok=%v", c.pid, c.fds, c.names, n, names, err, c.n, c.want, c.ok)
		}
	}
}

func FuzzParseListenEnv(f *testing.F) {
	f.Add("42", "1", "api")
	f.Add("42", "2", "a:b")
	f.Add("42", "3", "")
	f.Add("7", "1", "")
	f.Fuzz(func(t *testing.T, pid, fds, names string) {
		n, got, err := parseListenEnv(pid, fds, names, 42)
		if err != nil {
			if n != 0 || got != nil {
				t.Fatalf("error with results %d %q", n, got)
			}
			return
		}
		if n < 0 || n > maxListenFDs || len(got) != n {
			t.Fatalf("n=%d names=%q", n, got)
		}
		for _, s := range got {
			if checkFDName(s) != nil {
				t.Fatalf("invalid name %q accepted", s)
			}
		}
	})
}
