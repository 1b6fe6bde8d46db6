package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
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
	"github.com/snpd/snpd/daemon"
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
// The snpd side is a minimal HTTP server on the API socket serving the hook's two
// endpoints with daemon.CheckLibvirtDomain, the same check the real server runs.
func TestLibvirtHookWithRealLibvirtd(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run libvirtd with its own configuration (CI runs as root)")
	}
	for _, p := range []string{"/usr/sbin/libvirtd", "/usr/bin/virsh", config.DefaultQEMU, "/usr/share/ovmf/OVMF.fd"} {
		if _, err := os.Stat(p); err != nil {
			t.Skipf("%s is not installed (scripts/install-deps.sh installs libvirt-daemon-system, qemu and ovmf)", p)
		}
	}
	policyPath, _ := polExamples(t)
	policy, err := config.LoadPolicy(policyPath)
	if err != nil {
		t.Fatal(err)
	}
	bin := hookBuild(t)
	root, err := os.MkdirTemp("", "snpd-lv") // short: unix socket paths live under it
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	dir := func(rel string) string { return filepath.Join(root, rel) }
	for _, d := range []string{"etc/hooks/qemu.d", "etc/qemu", "run", "lib", "cache", "log", "sock", "snpd"} {
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

	srv := newLibvirtAPIServer(t, dir("snpd/snpd.sock"), policy)

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

	// A conforming plain domain (no launchSecurity: platform "none") starts.
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
	for !srv.saw("DELETE snpd-ok") && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if want := []string{"POST snpd-bad 422", "POST snpd-ok 200", "DELETE snpd-ok"}; !lvContainsInOrder(srv.log(), want) {
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

// libvirtAPIServer serves snpd's libvirt endpoints on a unix socket with the real check.
type libvirtAPIServer struct {
	srv  *http.Server
	mu   sync.Mutex
	seen []string
}

func newLibvirtAPIServer(t *testing.T, sock string, p *config.Policy) *libvirtAPIServer {
	t.Helper()
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	s := &libvirtAPIServer{}
	mux := http.NewServeMux()
	reply := func(w http.ResponseWriter, status int, v any) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(v)
	}
	mux.HandleFunc("POST "+api.LibvirtDomainsPath, func(w http.ResponseWriter, r *http.Request) {
		var req api.LibvirtDomainRequest
		if err := json.NewDecoder(io.LimitReader(r.Body, api.MaxBodySize)).Decode(&req); err != nil {
			reply(w, http.StatusBadRequest, api.Error{Kind: api.KindInvalid, Message: err.Error()})
			return
		}
		_, vs, err := daemon.CheckLibvirtDomain(r.Context(), p, []byte(req.XML), config.PlatformNone, config.DefaultQEMU)
		status := http.StatusOK
		switch {
		case err != nil:
			status = http.StatusBadRequest
			reply(w, status, api.Error{Kind: api.KindInvalid, Message: err.Error()})
		case len(vs) > 0:
			status = http.StatusUnprocessableEntity
			reply(w, status, api.PolicyViolations{Kind: api.KindPolicy, Message: fmt.Sprintf("%d policy violations", len(vs)),
				Violations: daemon.APIViolations(vs)})
		default:
			reply(w, status, api.LibvirtDomainResponse{Name: req.Name})
		}
		s.record(fmt.Sprintf("POST %s %d", req.Name, status))
	})
	mux.HandleFunc("DELETE "+api.LibvirtDomainsPath+"/{name}", func(w http.ResponseWriter, r *http.Request) {
		s.record("DELETE " + r.PathValue("name"))
		w.WriteHeader(http.StatusNoContent)
	})
	s.srv = &http.Server{Handler: mux}
	go func() { _ = s.srv.Serve(ln) }()
	t.Cleanup(s.close)
	return s
}

func (s *libvirtAPIServer) record(e string) { s.mu.Lock(); s.seen = append(s.seen, e); s.mu.Unlock() }
func (s *libvirtAPIServer) log() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.seen...)
}
func (s *libvirtAPIServer) saw(e string) bool {
	for _, x := range s.log() {
		if x == e {
			return true
		}
	}
	return false
}
func (s *libvirtAPIServer) close() { _ = s.srv.Close() }

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
// bind-mounted over its value. The namespace is made on a locked OS thread that then
// exits, so this test process keeps the host's view.
func startPrivateLibvirtd(t *testing.T, root string, binds map[string]string) *libvirtdProc {
	t.Helper()
	logf, err := os.Create(filepath.Join(root, "libvirtd.out"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/usr/sbin/libvirtd")
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
