package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/snpd/snpd/config"
	"github.com/snpd/snpd/daemon/api"
)

// TestLibvirtHookWithRealLibvirtd runs Debian's libvirtd with its own configuration in a
// private mount namespace (its /etc/libvirt, /run/libvirt, /var/lib/libvirt, ... and
// /run/snpd are directories of this test), installs the built snpctl as the qemu hook
// /etc/libvirt/hooks/qemu.d/snpd before libvirtd starts, and checks with virsh that a
// domain violating config/examples/policy.toml is refused at start with snpd's message,
// that a conforming plain domain starts (platform "none"), that its release drops the
// registration, and that the hook fails closed when snpd is down.
//
// The snpd side is the real snpd (config/examples/snpd.toml: platform "none", the example
// policy) behind a transparent recording proxy on the socket the hook dials, so the test
// sees each request and snpd's answer.
func TestLibvirtHookWithRealLibvirtd(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run libvirtd with its own configuration (CI runs as root)")
	}
	for _, p := range []string{"/usr/sbin/libvirtd", "/usr/bin/virsh", config.DefaultQEMU, "/usr/share/ovmf/OVMF.fd"} {
		if _, err := os.Stat(p); err != nil {
			t.Skipf("%s is not installed (scripts/install-deps.sh installs libvirt-daemon-system, qemu and ovmf)", p)
		}
	}
	bin := snpctlBuild(t)
	snpdBin := filepath.Join(t.TempDir(), "snpd")
	goBuild(t, snpdBin, "../snpd")
	root, err := os.MkdirTemp("", "snpd-lv") // short: unix socket paths live under it
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	dir := func(rel string) string { return filepath.Join(root, rel) }
	for _, d := range []string{"etc/hooks/qemu.d", "etc/qemu", "run", "lib", "cache", "log", "sock", "snpd", "snpd-run", "snpd-state"} {
		if err := os.MkdirAll(dir(d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	lvWrite(t, dir("etc/libvirtd.conf"), fmt.Sprintf(`unix_sock_dir = %q
unix_sock_group = "root"
unix_sock_rw_perms = "0700"
auth_unix_rw = "none"
auth_unix_ro = "none"
log_outputs = "3:file:%s"
`, dir("sock"), dir("libvirtd.log")))
	lvWrite(t, dir("etc/qemu.conf"), `user = "root"
group = "root"
security_driver = "none"
dynamic_ownership = 0
remember_owner = 0
cgroup_controllers = [ ]
stdio_handler = "file"
`)
	// The hook is installed (copied, as `make install-hook` does) before libvirtd starts:
	// libvirtd reads its hooks once at start.
	hook := dir("etc/hooks/qemu.d/snpd")
	lvCopy(t, bin, hook)

	startSnpd(t, snpdBin, dir("snpd-state"), dir("snpd-run"))
	srv := newRecordingProxy(t, dir("snpd/snpd.sock"), dir("snpd-run/snpd.sock"))

	lvd := startPrivateLibvirtd(t, root, map[string]string{
		dir("etc"):   "/etc/libvirt",
		dir("run"):   "/run/libvirt",
		dir("lib"):   "/var/lib/libvirt",
		dir("cache"): "/var/cache/libvirt",
		dir("log"):   "/var/log/libvirt",
		dir("snpd"):  "/run/snpd",
	})
	virsh := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		full := append([]string{"-c", "qemu+unix:///system?socket=" + dir("sock/libvirt-sock")}, args...)
		out, err := exec.CommandContext(ctx, "virsh", full...).CombinedOutput()
		t.Logf("virsh %s: %v\n%s", strings.Join(args, " "), err, out)
		return string(out), err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := virsh("version"); err == nil {
			break
		}
		if time.Now().After(deadline) || lvd.exited() {
			log, _ := os.ReadFile(dir("libvirtd.log"))
			t.Fatalf("libvirtd did not answer: %s", lvTail(log))
		}
		time.Sleep(300 * time.Millisecond)
	}
	// libvirtd's pid file is this test's, so parallel runs cannot collide on the host's.
	if b, err := os.ReadFile(dir("libvirtd.pid")); err != nil || strings.TrimSpace(string(b)) != strconv.Itoa(lvd.cmd.Process.Pid) {
		t.Errorf("libvirtd's pid file in the test root: %q, %v; want pid %d", b, err, lvd.cmd.Process.Pid)
	}
	t.Cleanup(func() {
		for _, d := range []string{"snpd-ok", "snpd-bad"} {
			_, _ = virsh("destroy", d)
		}
	})

	// A domain breaking the example policy: qemu64 vCPU model and 32 MiB of memory.
	bad := lvDomainXML("snpd-bad", "qemu64", 32)
	lvWrite(t, dir("bad.xml"), bad)
	if _, err := virsh("define", dir("bad.xml")); err != nil {
		t.Fatal(err)
	}
	out, err := virsh("start", "snpd-bad")
	if err == nil {
		t.Fatal("virsh start of a policy-violating domain succeeded")
	}
	for _, want := range []string{
		"snpd: refusing domain snpd-bad: 2 host-policy violation(s):",
		`rule vcpu.models: CPU model "qemu64" is not allowed`,
		"rule memory.size: 32 MiB of memory is outside 64..65536 MiB",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("virsh start output lacks %q", want)
		}
	}
	if st, _ := virsh("domstate", "snpd-bad"); !strings.Contains(st, "shut off") {
		t.Errorf("refused domain is %q", st)
	}

	// A conforming plain domain (no launchSecurity: platform "none") starts; snpd
	// registers it without an SNP launch digest (it has none).
	ok := lvDomainXML("snpd-ok", "EPYC", 256)
	lvWrite(t, dir("ok.xml"), ok)
	if _, err := virsh("define", dir("ok.xml")); err != nil {
		t.Fatal(err)
	}
	if _, err := virsh("start", "snpd-ok"); err != nil {
		t.Fatalf("conforming domain refused: %v", err)
	}
	if st, _ := virsh("domstate", "snpd-ok"); !strings.Contains(st, "running") {
		t.Errorf("conforming domain is %q, want running", st)
	}
	if _, err := virsh("destroy", "snpd-ok"); err != nil {
		t.Fatal(err)
	}
	// release end drops the registration (the hook runs after the domain is gone).
	deadline = time.Now().Add(10 * time.Second)
	for !srv.saw("DELETE snpd-ok 204") && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("snpd saw: %q", srv.log())
	if want := []string{"POST snpd-bad 422", "POST snpd-ok 200 not-confidential", "DELETE snpd-ok 204"}; !lvContainsInOrder(srv.log(), want) {
		t.Errorf("snpd saw %q, want %q in order", srv.log(), want)
	}

	// snpd down: the hook fails closed and says so.
	srv.close()
	out, err = virsh("start", "snpd-ok")
	if err == nil {
		t.Fatal("domain started while snpd was unreachable")
	}
	if !strings.Contains(out, "snpd: refusing domain snpd-ok: snpd is unreachable at /run/snpd/snpd.sock") {
		t.Errorf("virsh output lacks the fail-closed message")
	}
}

func lvDomainXML(name, cpu string, memMiB int) string {
	return fmt.Sprintf(`<domain type='qemu'>
  <name>%s</name>
  <memory unit='MiB'>%d</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <loader type='rom'>/usr/share/ovmf/OVMF.fd</loader>
  </os>
  <features><acpi/><apic/></features>
  <cpu mode='custom' match='exact' check='none'><model fallback='forbid'>%s</model></cpu>
  <devices>
    <emulator>%s</emulator>
    <serial type='pty'/>
    <console type='pty'/>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
`, name, memMiB, cpu, config.DefaultQEMU)
}

// recordingProxy forwards the hook's requests from the socket it dials to snpd's real
// socket and records "METHOD NAME STATUS" for each ("digest" appended when a 200
// registration carries a 96-digit expected launch digest, "not-confidential" when it
// carries none and says so).
type recordingProxy struct {
	srv  *http.Server
	mu   sync.Mutex
	seen []string
}

func newRecordingProxy(t *testing.T, sock, target string) *recordingProxy {
	t.Helper()
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	p := &recordingProxy{}
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) { r.SetURL(&url.URL{Scheme: "http", Host: "snpd"}) },
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", target)
		}},
		ModifyResponse: func(resp *http.Response) error {
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				return err
			}
			resp.Body = io.NopCloser(bytes.NewReader(body))
			name := path.Base(resp.Request.URL.Path)
			if resp.Request.Method == http.MethodPost {
				var req api.LibvirtDomainRequest
				if b, err := resp.Request.GetBody(); err == nil {
					_ = json.NewDecoder(b).Decode(&req)
				}
				name = req.Name
			}
			e := fmt.Sprintf("%s %s %d", resp.Request.Method, name, resp.StatusCode)
			var ok api.LibvirtDomainResponse
			if resp.StatusCode == http.StatusOK && json.Unmarshal(body, &ok) == nil {
				switch {
				case len(ok.ExpectedDigest) == 96:
					e += " digest"
				case ok.ExpectedDigest == "" && ok.Note == api.NotConfidential:
					e += " not-confidential"
				}
			}
			p.mu.Lock()
			p.seen = append(p.seen, e)
			p.mu.Unlock()
			return nil
		},
	}
	p.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, api.MaxBodySize))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
		rp.ServeHTTP(w, r)
	})}
	go func() { _ = p.srv.Serve(ln) }()
	t.Cleanup(p.close)
	return p
}

func (p *recordingProxy) log() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.seen...)
}

func (p *recordingProxy) saw(e string) bool {
	for _, x := range p.log() {
		if x == e {
			return true
		}
	}
	return false
}

func (p *recordingProxy) close() { _ = p.srv.Close() }

// startSnpd runs the real snpd with the example configuration (platform "none", the
// example policy) and waits until its API answers.
func startSnpd(t *testing.T, bin, state, run string) {
	t.Helper()
	policy, _ := polExamples(t)
	cfg := filepath.Join(filepath.Dir(policy), "snpd.toml")
	logf, err := os.Create(filepath.Join(run, "..", "snpd.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--config", cfg, "--state-dir", state, "--runtime-dir", run)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(unix.SIGTERM)
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	c := api.NewClient(filepath.Join(run, "snpd.sock"))
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := c.Status(ctx)
		cancel()
		if err == nil {
			return
		}
		select {
		case <-done:
			log, _ := os.ReadFile(logf.Name())
			t.Fatalf("snpd exited: %s", lvTail(log))
		default:
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(logf.Name())
			t.Fatalf("snpd did not answer: %v\n%s", err, lvTail(log))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

type libvirtdProc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

func (p *libvirtdProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// startPrivateLibvirtd starts libvirtd in a new mount namespace where each key of binds is
// bind-mounted over its value, with its pid file in root (not the host's /run). The namespace is made on a locked OS thread that then
// exits, so this test process keeps the host's view.
func startPrivateLibvirtd(t *testing.T, root string, binds map[string]string) *libvirtdProc {
	t.Helper()
	logf, err := os.Create(filepath.Join(root, "libvirtd.out"))
	if err != nil {
		t.Fatal(err)
	}
	// Its own pid file: the default /run/libvirtd.pid is the host's (only /run/libvirt is
	// bound over), so two overlapping runs of this test would fight over it.
	cmd := exec.Command("/usr/sbin/libvirtd", "--pid-file", filepath.Join(root, "libvirtd.pid"))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	for _, dst := range binds {
		if err := os.MkdirAll(dst, 0o755); err != nil {
			t.Fatalf("creating mount point: %v", err)
		}
	}
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread ends with the goroutine, taking its namespace along.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
			errc <- fmt.Errorf("unshare(CLONE_NEWNS): %w", err)
			return
		}
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			errc <- fmt.Errorf("making mounts private: %w", err)
			return
		}
		for src, dst := range binds {
			if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
				errc <- fmt.Errorf("bind-mounting %s on %s: %w", src, dst, err)
				return
			}
		}
		errc <- cmd.Start()
	}()
	if err := <-errc; err != nil {
		if errors.Is(err, unix.EPERM) {
			t.Skipf("no CAP_SYS_ADMIN for a private mount namespace here: %v", err)
		}
		t.Fatal(err)
	}
	p := &libvirtdProc{cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); logf.Close(); close(p.done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(unix.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-p.done
		}
		// QEMU outlives libvirtd by design: kill any guest it left (by its pid file).
		pids, _ := filepath.Glob(filepath.Join(root, "run", "qemu", "*.pid"))
		for _, f := range pids {
			b, err := os.ReadFile(f)
			if err != nil {
				continue
			}
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 {
				_ = unix.Kill(pid, unix.SIGKILL)
			}
		}
	})
	return p
}

func lvWrite(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func lvCopy(t *testing.T, src, dst string) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, data, 0o755); err != nil {
		t.Fatal(err)
	}
}

func lvTail(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 20 {
		lines = lines[len(lines)-20:]
	}
	return strings.Join(lines, "\n")
}

func lvContainsInOrder(got, want []string) bool {
	i := 0
	for _, g := range got {
		if i < len(want) && g == want[i] {
			i++
		}
	}
	return i == len(want)
}
