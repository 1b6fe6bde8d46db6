package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/snpd/snpd/daemon/api"
)

// hookCLI runs snpctl in-process with stdin and returns stdout, stderr and the exit
// status run() would give.
func hookCLI(t *testing.T, stdin string, args ...string) (string, string, int) {
	t.Helper()
	root := newRoot()
	var out, errb bytes.Buffer
	root.SetArgs(args)
	root.SetIn(strings.NewReader(stdin))
	root.SetOut(&out)
	root.SetErr(&errb)
	err := root.Execute()
	code := 0
	if err != nil {
		var ee exitError
		if errors.As(err, &ee) {
			code = ee.code
		} else {
			errb.WriteString("Error: " + err.Error() + "\n")
			code = 1
		}
	}
	return out.String(), errb.String(), code
}

// hookServer is a stand-in for snpd's libvirt endpoints on a unix socket: it answers
// POST with answer (status and body) and records every request.
type hookServer struct {
	sock string
	mu   sync.Mutex
	reqs []string // "METHOD PATH name"
	body []api.LibvirtDomainRequest
}

func newHookServer(t *testing.T, status int, answer any) *hookServer {
	t.Helper()
	hs := &hookServer{sock: filepath.Join(t.TempDir(), "snpd.sock")}
	ln, err := net.Listen("unix", hs.sock)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+api.LibvirtDomainsPath, func(w http.ResponseWriter, r *http.Request) {
		var req api.LibvirtDomainRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		hs.mu.Lock()
		hs.reqs = append(hs.reqs, "POST "+r.URL.Path+" "+req.Name)
		hs.body = append(hs.body, req)
		hs.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(answer)
	})
	mux.HandleFunc("DELETE "+api.LibvirtDomainsPath+"/{name}", func(w http.ResponseWriter, r *http.Request) {
		hs.mu.Lock()
		hs.reqs = append(hs.reqs, "DELETE "+r.URL.Path+" "+r.PathValue("name"))
		hs.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	})
	srv := &http.Server{Handler: mux}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return hs
}

func (hs *hookServer) requests() []string {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	return append([]string(nil), hs.reqs...)
}

const hookDomainXML = `<domain type='qemu'><name>web1</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='q35'>hvm</type><loader type='rom'>/usr/share/ovmf/OVMF.fd</loader></os>
<devices><emulator>/usr/bin/qemu-system-x86_64</emulator><serial type='pty'/></devices></domain>`

func TestHookPrepareConformingDomain(t *testing.T) {
	hs := newHookServer(t, http.StatusOK, api.LibvirtDomainResponse{Name: "web1"})
	out, errs, code := hookCLI(t, hookDomainXML, "--socket", hs.sock, "libvirt-hook", "web1", "prepare", "begin", "-")
	if code != 0 || out != "" || errs != "" {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errs)
	}
	if got := hs.requests(); len(got) != 1 || got[0] != "POST /v1/libvirt/domains web1" || hs.body[0].XML != hookDomainXML {
		t.Fatalf("requests %q, body %+v", got, hs.body)
	}
}

func TestHookPrepareViolationsOnStderr(t *testing.T) {
	hs := newHookServer(t, http.StatusUnprocessableEntity, api.PolicyViolations{Kind: api.KindPolicy, Message: "2 violations",
		Violations: []api.Violation{
			{Rule: "snp.forbid_debug", Value: "0xb0000", Message: "policy 0xb0000 has debug set (bit 19)"},
			{Rule: "firmware.loader", Value: "pflash", Message: "loader type pflash: SEV-SNP firmware must be loaded with -bios"},
		}})
	_, errs, code := hookCLI(t, hookDomainXML, "--socket", hs.sock, "libvirt-hook", "web1", "prepare", "begin", "-")
	want := "snpd: refusing domain web1: 2 host-policy violation(s):\n" +
		"snpd: rule snp.forbid_debug: policy 0xb0000 has debug set (bit 19)\n" +
		"snpd: rule firmware.loader: loader type pflash: SEV-SNP firmware must be loaded with -bios\n"
	if code != 1 || errs != want {
		t.Fatalf("exit %d, stderr\n%s\nwant\n%s", code, errs, want)
	}
}

func TestHookOtherAnswersRefuse(t *testing.T) {
	hs := newHookServer(t, http.StatusForbidden, api.Error{Kind: api.KindForbidden, Message: "uid 1000 may not register domains"})
	_, errs, code := hookCLI(t, hookDomainXML, "--socket", hs.sock, "libvirt-hook", "web1", "prepare", "begin", "-")
	if code != 1 || errs != "snpd: refusing domain web1: snpd answered 403 Forbidden: uid 1000 may not register domains\n" {
		t.Fatalf("exit %d, stderr %q", code, errs)
	}
}

func TestHookUnreachableFailsClosed(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "absent.sock")
	_, errs, code := hookCLI(t, hookDomainXML, "--socket", sock, "libvirt-hook", "web1", "prepare", "begin", "-")
	if code != 1 || strings.Count(errs, "\n") != 1 || !strings.Contains(errs, "snpd is unreachable at "+sock) ||
		!strings.Contains(errs, "fails closed") {
		t.Fatalf("exit %d, stderr %q", code, errs)
	}
	_, errs, code = hookCLI(t, hookDomainXML, "--socket", sock, "libvirt-hook", "--fail-open", "web1", "prepare", "begin", "-")
	if code != 0 || !strings.Contains(errs, "warning") || !strings.Contains(errs, "fail-open") {
		t.Fatalf("--fail-open: exit %d, stderr %q", code, errs)
	}
	// The host policy's [libvirt] hook_fail_open reaches an installed hook (libvirt clears
	// the environment); the example policy keeps it false.
	example, _ := polExamples(t)
	_, _, code = hookCLI(t, hookDomainXML, "--socket", sock, "libvirt-hook", "--policy", example, "web1", "prepare", "begin", "-")
	if code != 1 {
		t.Fatalf("example policy: exit %d", code)
	}
	data, err := os.ReadFile(example)
	if err != nil {
		t.Fatal(err)
	}
	open := filepath.Join(t.TempDir(), "policy.toml")
	if err := os.WriteFile(open, []byte(strings.Replace(string(data), "hook_fail_open = false", "hook_fail_open = true", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	_, errs, code = hookCLI(t, hookDomainXML, "--socket", sock, "libvirt-hook", "--policy", open, "web1", "prepare", "begin", "-")
	if code != 0 || !strings.Contains(errs, "fail-open") {
		t.Fatalf("hook_fail_open = true: exit %d, stderr %q", code, errs)
	}
	t.Setenv("SNPD_HOOK_FAIL_OPEN", "1")
	if _, _, code = hookCLI(t, hookDomainXML, "--socket", sock, "libvirt-hook", "web1", "prepare", "begin", "-"); code != 0 {
		t.Fatalf("SNPD_HOOK_FAIL_OPEN=1: exit %d", code)
	}
}

func TestHookHungServerFailsClosed(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "hung.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() { // accept and never answer
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	old := hookTimeout
	hookTimeout = 300 * time.Millisecond
	defer func() { hookTimeout = old }()
	_, errs, code := hookCLI(t, hookDomainXML, "--socket", sock, "libvirt-hook", "web1", "prepare", "begin", "-")
	if code != 1 || !strings.Contains(errs, "unreachable") {
		t.Fatalf("exit %d, stderr %q", code, errs)
	}
}

func TestHookReleaseAndOtherOperations(t *testing.T) {
	hs := newHookServer(t, http.StatusOK, api.LibvirtDomainResponse{})
	if _, errs, code := hookCLI(t, hookDomainXML, "--socket", hs.sock, "libvirt-hook", "web 1/x", "release", "end", "-"); code != 0 {
		t.Fatalf("release: exit %d, %s", code, errs)
	}
	for _, op := range [][2]string{{"start", "begin"}, {"started", "begin"}, {"stopped", "end"}, {"migrate", "begin"}, {"restore", "begin"}, {"reconnect", "begin"}} {
		if _, errs, code := hookCLI(t, hookDomainXML, "--socket", hs.sock, "libvirt-hook", "web1", op[0], op[1], "-"); code != 0 || errs != "" {
			t.Fatalf("%v: exit %d, %s", op, code, errs)
		}
	}
	if got := hs.requests(); len(got) != 1 || got[0] != "DELETE /v1/libvirt/domains/web 1/x web 1/x" {
		t.Fatalf("requests %q", got)
	}
}

func TestHookRefusesUnmappableXMLWithoutAsking(t *testing.T) {
	hs := newHookServer(t, http.StatusOK, api.LibvirtDomainResponse{})
	_, errs, code := hookCLI(t, "<domain><memory unit='parsec'>1</memory></domain>", "--socket", hs.sock, "libvirt-hook", "x", "prepare", "begin", "-")
	if code != 1 || !strings.Contains(errs, `unknown unit "parsec"`) || strings.Count(errs, "\n") != 1 {
		t.Fatalf("exit %d, stderr %q", code, errs)
	}
	if len(hs.requests()) != 0 {
		t.Fatal("unmappable domain was sent to snpd")
	}
}

// TestHookArgv0 runs the built binary under the name libvirt gives it
// (/etc/libvirt/hooks/qemu.d/snpd), including a domain name that looks like a flag.
func TestHookArgv0(t *testing.T) {
	bin := snpctlBuild(t)
	hs := newHookServer(t, http.StatusOK, api.LibvirtDomainResponse{})
	link := filepath.Join(t.TempDir(), "snpd")
	if err := os.Symlink(bin, link); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(link, "--fail-open", "prepare", "begin", "-")
	cmd.Env = append(os.Environ(), "SNPD_SOCKET="+hs.sock)
	cmd.Stdin = strings.NewReader(strings.Replace(hookDomainXML, "web1", "--fail-open", 1))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if got := hs.requests(); len(got) != 1 || got[0] != "POST /v1/libvirt/domains --fail-open" {
		t.Fatalf("requests %q", got)
	}
}
