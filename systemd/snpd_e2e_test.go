package systemd

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/snpd/snpd/systemd/systemdtest"
)

// TestSnpdUnderSystemdProtocol runs the real snpd binary the way snpd.service and
// snpd.socket do: socket-activated (descriptor 3 named "api", LISTEN_PID/WATCHDOG_PID
// set to its pid before exec), with NOTIFY_SOCKET and a watchdog. It proves READY=1
// comes from the main pid only once the API answers on the activated socket (not on a
// socket snpd made itself), that watchdog pings keep coming, and that SIGTERM sends
// STOPPING=1, exits 0 and leaves the socket file to its owner, snpd.socket.
func TestSnpdUnderSystemdProtocol(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs snpd; skipped with -short")
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	example := filepath.Join(root, "config", "examples", "snpd.toml")
	if _, err := os.Stat(example); err != nil {
		t.Fatalf("example config: %v", err)
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "snpd")
	build := exec.Command("go", "build", "-o", bin, "./cmd/snpd")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building snpd: %v\n%s", err, out)
	}

	runDir := filepath.Join(dir, "run")
	if err := os.Mkdir(runDir, 0o755); err != nil {
		t.Fatal(err)
	}
	// The activated socket deliberately differs from the configured one
	// (<runtime-dir>/snpd.sock), so answering here proves activation was used.
	actPath := filepath.Join(runDir, "act.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: actPath, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	lf, err := l.File()
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	defer lf.Close()

	notify := systemdtest.NewNotifySocket(t)
	argv, _ := json.Marshal([]string{bin, "--config", example, "--state-dir", filepath.Join(dir, "state"), "--runtime-dir", runDir})
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	env := []string{helperEnv + "=exec", execArgvEnv + "=" + string(argv),
		"LISTEN_FDS=1", "LISTEN_FDNAMES=" + APIName,
		"NOTIFY_SOCKET=" + notify.Path, "WATCHDOG_USEC=400000"}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "LISTEN_") && !strings.HasPrefix(kv, "NOTIFY_SOCKET=") &&
			!strings.HasPrefix(kv, "WATCHDOG_") && !strings.HasPrefix(kv, "JOURNAL_STREAM=") &&
			!strings.HasPrefix(kv, "SNPD_") {
			env = append(env, kv)
		}
	}
	cmd.Env = env
	cmd.ExtraFiles = []*os.File{lf}
	var stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		cmd.Process.Kill()
		<-exited
		t.Logf("snpd output:\n%s", stderr.String())
	}()
	lf.Close() // snpd holds the socket now

	ready, err := notify.WaitFor("READY=1", 60*time.Second)
	if err != nil {
		t.Fatalf("no READY=1: %v", err)
	}
	if ready.Cred == nil || int(ready.Cred.Pid) != pid {
		t.Errorf("READY=1 from %+v, want main pid %d (NotifyAccess=main)", ready.Cred, pid)
	}
	if st, ok := ready.Get("STATUS"); !ok || st == "" {
		t.Errorf("READY=1 without a STATUS= line: %q", ready.State)
	}
	// READY=1 must mean the API answers on the activated socket.
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", actPath)
		}}}
	resp, err := hc.Get("http://snpd/v1/status")
	if err != nil {
		t.Fatalf("GET /v1/status on the activated socket right after READY=1: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET /v1/status: %s %s", resp.Status, body)
	}
	// The status names the socket snpd actually serves (the activated one), not the
	// configured path it never bound: operators use it to find the API.
	var st struct {
		Socket string `json:"socket"`
	}
	if err := json.Unmarshal(body, &st); err != nil {
		t.Errorf("decoding /v1/status: %v: %s", err, body)
	} else if st.Socket != actPath {
		t.Errorf("/v1/status socket = %q, want the activated socket %q", st.Socket, actPath)
	}
	if _, err := os.Stat(filepath.Join(runDir, "snpd.sock")); err == nil {
		t.Error("snpd created its own socket although it was socket-activated")
	}

	for i := 0; i < 3; i++ {
		n, err := notify.WaitFor("WATCHDOG=1", 10*time.Second)
		if err != nil {
			t.Fatalf("watchdog ping %d: %v", i+1, err)
		}
		if n.Cred == nil || int(n.Cred.Pid) != pid {
			t.Fatalf("watchdog ping from %+v, want %d", n.Cred, pid)
		}
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if _, err := notify.WaitFor("STOPPING=1", 15*time.Second); err != nil {
		t.Errorf("after SIGTERM: %v", err)
	}
	select {
	case err := <-exited:
		exited <- err // for the deferred cleanup
		if err != nil {
			t.Errorf("snpd exited with %v after SIGTERM, want status 0", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("snpd still running 30 s after SIGTERM")
	}
	if fi, err := os.Stat(actPath); err != nil || fi.Mode().Type() != os.ModeSocket {
		t.Errorf("activated socket file after snpd exited: %v; it belongs to snpd.socket and must stay", err)
	}
}
