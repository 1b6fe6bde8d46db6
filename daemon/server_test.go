package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/snpd/snpd/daemon/api"
	"github.com/snpd/snpd/daemon/store"
)

func slogDiscard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestAuthorizerRoles(t *testing.T) {
	a := Authorizer{OperateGID: 10, ReadGID: 20}
	for _, c := range []struct {
		uid, gid int
		groups   []int
		want     Role
	}{
		{0, 0, nil, RoleOperate},
		{1000, 10, nil, RoleOperate},
		{1000, 1000, []int{5, 10}, RoleOperate},
		{1000, 20, nil, RoleRead},
		{1000, 1000, []int{20}, RoleRead},
		{1000, 1000, []int{20, 10}, RoleOperate},
		{1000, 1000, []int{30}, RoleNone},
		{1000, 1000, nil, RoleNone},
	} {
		if got := a.Role(c.uid, c.gid, c.groups); got != c.want {
			t.Errorf("Role(%d,%d,%v) = %v, want %v", c.uid, c.gid, c.groups, got, c.want)
		}
	}
	if got := (Authorizer{OperateGID: -1, ReadGID: -1}).Role(1000, 1000, nil); got != RoleNone {
		t.Errorf("no groups configured: %v", got)
	}
}

// rawRequest sends body as is over the unix socket and returns status and body.
func rawRequest(t *testing.T, socket, method, path string, body []byte) (int, string) {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", socket)
	}}}
	req, err := http.NewRequest(method, "http://snpd"+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestAPIBadInputNeverLosesData(t *testing.T) {
	e := newTestEnv(t, "")
	d := startDaemon(t, e)
	c := d.Client
	ctx := ctxT(t, time.Minute)
	good := vmTOML("good", "")
	if _, err := c.Define(ctx, api.DefineRequest{File: "good.toml", TOML: good}); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name, toml, want string
	}{
		{"syntax", "name = \"x\"\nvcpus = = 2\n", "bad.toml:2"},
		{"unknown key", "name = \"x\"\nfirmware = \"/usr/share/ovmf/OVMF.fd\"\nvcpuz = 2\n", `bad.toml:3: unknown key "vcpuz"`},
		{"slash in name", vmTOML("a/b", ""), "not allowed"},
		{"shell in name", vmTOML("a;rm -rf", ""), "not allowed"},
		{"subst in name", vmTOML("$(id)", ""), "not allowed"},
		{"dotdot name", vmTOML("..", ""), "must not start"},
		{"invalid value", vmTOML("neg", "vcpus = 100000\n"), "vcpus"},
		{"redefine", good, "already defined"},
	} {
		_, err := c.Define(ctx, api.DefineRequest{File: "bad.toml", TOML: tc.toml})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error containing %q", tc.name, err, tc.want)
			continue
		}
		if strings.Contains(err.Error(), "\n") && tc.name != "invalid value" {
			t.Errorf("%s: error is not one line: %q", tc.name, err)
		}
		if tc.name != "redefine" && !isKind(err, api.ErrInvalid) {
			t.Errorf("%s: kind of %v is not invalid", tc.name, err)
		}
	}

	body := func(v any) []byte { b, _ := json.Marshal(v); return b }
	for _, tc := range []struct {
		name, method, path string
		body               []byte
		status             int
	}{
		{"unknown field", "POST", "/v1/vms", []byte(`{"toml":"name = \"u\"","bogus":1}`), 400},
		{"trailing data", "POST", "/v1/vms", []byte(`{"toml":"name = \"u\""} {}`), 400},
		{"not json", "POST", "/v1/vms", []byte(`name = "u"`), 400},
		{"empty body", "POST", "/v1/vms", nil, 400},
		{"oversized", "POST", "/v1/vms", body(api.DefineRequest{TOML: strings.Repeat("#", 3<<20)}), 413},
		{"oversized toml", "POST", "/v1/vms", body(api.DefineRequest{TOML: "#" + strings.Repeat("x", 1<<20+10)}), 400},
		{"encoded slash", "GET", "/v1/vms/a%2Fb", nil, 400},
		{"encoded dotdot", "DELETE", "/v1/vms/..", nil, 404},
		{"shell chars", "POST", "/v1/vms/a%3Bb/start", nil, 400},
		{"start body unknown field", "POST", "/v1/vms/good/start", []byte(`{"force":true}`), 400},
		{"stop timeout", "POST", "/v1/vms/good/stop", []byte(`{"timeout_seconds":-1}`), 400},
		{"no route", "GET", "/v2/vms", nil, 404},
		{"undefined vm", "GET", "/v1/vms/nope", nil, 404},
	} {
		status, resp := rawRequest(t, e.Socket, tc.method, tc.path, tc.body)
		if status != tc.status {
			t.Errorf("%s: status %d (%s), want %d", tc.name, status, resp, tc.status)
		}
		if status >= 400 && status != 404 || strings.HasPrefix(tc.path, "/v1/vms/") {
			var ae api.Error
			if json.Unmarshal([]byte(resp), &ae) != nil || ae.Message == "" && tc.status != 404 {
				t.Errorf("%s: body %q is not an api.Error", tc.name, resp)
			}
		}
	}

	check := func(c *api.Client) {
		t.Helper()
		vms, err := c.List(ctx)
		if err != nil || len(vms) != 1 || vms[0].Name != "good" {
			t.Fatalf("after bad input: %v %+v", err, vms)
		}
		info, err := c.Get(ctx, "good")
		if err != nil || info.TOML != good {
			t.Fatalf("good definition changed: %v %q", err, info.TOML)
		}
	}
	check(c)
	d.kill9()
	check(startDaemon(t, e).Client)
}

func TestAPIRefusesSecondDaemonAndReplacesStaleSocket(t *testing.T) {
	e := newTestEnv(t, "")
	d := startDaemon(t, e)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "SNPD_TEST_DAEMON="+e.Config)
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "another snpd is already answering") {
		t.Fatalf("second snpd: %v\n%s", err, out)
	}
	if _, err := d.Client.Status(ctxT(t, 5*time.Second)); err != nil {
		t.Fatalf("first snpd harmed by the second: %v", err)
	}
	st, err := os.Stat(e.Socket)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o660 {
		t.Errorf("socket mode %v, want 0660", st.Mode().Perm())
	}
	if gid := st.Sys().(*syscall.Stat_t).Gid; gid != testReadGID {
		t.Errorf("socket group %d, want the read group %d", gid, testReadGID)
	}
	d.kill9()
	if _, err := os.Stat(e.Socket); err != nil {
		t.Fatalf("SIGKILL should leave a stale socket file behind: %v", err)
	}
	startDaemon(t, e) // replaces it
	if err := os.WriteFile(filepath.Join(e.Dir, "notasocket"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := listenAPI(filepath.Join(e.Dir, "notasocket"), -1); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("regular file at the socket path: %v", err)
	}
}

var (
	snpctlOnce sync.Once
	snpctlPath string
	snpctlErr  error
)

// buildSnpctl builds cmd/snpctl once into a world-readable directory.
func buildSnpctl(t *testing.T) string {
	t.Helper()
	snpctlOnce.Do(func() {
		dir, err := os.MkdirTemp("", "snpctl-bin-")
		if err != nil {
			snpctlErr = err
			return
		}
		os.Chmod(dir, 0o755)
		snpctlPath = filepath.Join(dir, "snpctl")
		out, err := exec.Command("go", "build", "-o", snpctlPath, "../cmd/snpctl").CombinedOutput()
		if err != nil {
			snpctlErr = fmt.Errorf("building snpctl: %v\n%s", err, out)
		}
	})
	if snpctlErr != nil {
		t.Fatal(snpctlErr)
	}
	return snpctlPath
}

// snpctlAs runs snpctl as uid with the given groups (primary gid = uid when none).
func snpctlAs(t *testing.T, bin, socket string, uid int, groups []int, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"--socket", socket}, args...)...)
	gid := uid
	if len(groups) > 0 {
		gid = groups[0]
	}
	gs := make([]uint32, len(groups))
	for i, g := range groups {
		gs[i] = uint32(g)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: gs}}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, stdout.String(), stderr.String()
}

func TestAPIAuthorizationByPeerCredentials(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("running clients as other uids needs root")
	}
	bin := buildSnpctl(t)
	e := newTestEnv(t, "")
	d := startDaemon(t, e)
	mustDefine(t, d.Client, "vm1", "")

	// No group: the socket file (0660 root:read group) keeps the client out.
	code, _, stderr := snpctlAs(t, bin, e.Socket, testUID, nil, "vm", "list")
	if code == 0 || !strings.Contains(stderr, "permission denied") || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
		t.Errorf("no-group client: exit %d, stderr %q", code, stderr)
	}
	// Read group: may list and show, may not start or define.
	code, stdout, stderr := snpctlAs(t, bin, e.Socket, testUID, []int{testReadGID}, "vm", "list")
	if code != 0 || !strings.Contains(stdout, "vm1") {
		t.Errorf("read-group list: exit %d, %q %q", code, stdout, stderr)
	}
	code, _, stderr = snpctlAs(t, bin, e.Socket, testUID, []int{testReadGID}, "vm", "start", "vm1")
	if code == 0 || !strings.Contains(stderr, "may only read") {
		t.Errorf("read-group start: exit %d, stderr %q", code, stderr)
	}
	code, _, stderr = snpctlAs(t, bin, e.Socket, testUID, []int{testReadGID}, "vm", "undefine", "vm1")
	if code == 0 || !strings.Contains(stderr, "may only read") {
		t.Errorf("read-group undefine: exit %d, stderr %q", code, stderr)
	}
	// Operate group (plus the read group, to reach the socket): may change things.
	code, stdout, stderr = snpctlAs(t, bin, e.Socket, testUID, []int{testReadGID, testOperateGID}, "vm", "undefine", "vm1")
	if code != 0 {
		t.Errorf("operate-group undefine: exit %d, %q %q", code, stdout, stderr)
	}

	// Defence in depth: even if the file mode let anyone connect, SO_PEERCRED refuses
	// a uid without the groups with 403.
	if err := os.Chmod(e.Socket, 0o666); err != nil {
		t.Fatal(err)
	}
	code, _, stderr = snpctlAs(t, bin, e.Socket, testUID, nil, "vm", "list")
	// The message is the server's 403 body (api.KindForbidden), not a connect error.
	if code == 0 || !strings.Contains(stderr, "not root and not in snpd's operate or read group") {
		t.Errorf("no-group client on an open socket: exit %d, stderr %q", code, stderr)
	}
	code, _, stderr = snpctlAs(t, bin, e.Socket, testUID, nil, "status")
	if code == 0 || !strings.Contains(stderr, "not root and not in snpd's operate or read group") {
		t.Errorf("no-group status on an open socket: exit %d, stderr %q", code, stderr)
	}
}

// FuzzDefineBody feeds arbitrary bodies to POST /v1/vms through the real route table,
// authorization wrapper and store: the answer is 201 or a 4xx api.Error, never a panic
// or a 5xx, and a refused body leaves the store as it was.
func FuzzDefineBody(f *testing.F) {
	s, err := store.Open(f.TempDir())
	if err != nil {
		f.Fatal(err)
	}
	defer s.Close()
	mgr := NewManager(ManagerOptions{Store: s, Validate: validateDefinition, RuntimeDir: f.TempDir()})
	srv := &Server{mgr: mgr, store: s}
	mux := newMux(srv.routes(), slogDiscard())
	peer := &Peer{UID: 0, Role: RoleOperate}
	f.Add([]byte(`{"toml":"name = \"a\"\nfirmware = \"/usr/share/ovmf/OVMF.fd\"\n"}`))
	f.Add([]byte(`{"toml":"name = \"a/b\"\n","file":"x.toml"}`))
	f.Add([]byte(`{"toml":"vcpus = = 1","replace":true,"dir":"rel"}`))
	f.Add([]byte(`{"toml":"","bogus":1}`))
	f.Add([]byte(`[1,2]`))
	f.Fuzz(func(t *testing.T, body []byte) {
		before, err := s.ListVMs()
		if err != nil {
			t.Fatal(err)
		}
		req := httptest.NewRequest(http.MethodPost, "/v1/vms", bytes.NewReader(body))
		req = req.WithContext(context.WithValue(req.Context(), peerKey{}, peer))
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, req)
		if rec.Code == http.StatusCreated {
			return
		}
		if rec.Code < 400 || rec.Code >= 500 {
			t.Fatalf("status %d for %q: %s", rec.Code, body, rec.Body)
		}
		var ae api.Error
		if err := json.Unmarshal(rec.Body.Bytes(), &ae); err != nil || ae.Kind == "" || ae.Message == "" {
			t.Fatalf("error body %q is not an api.Error", rec.Body)
		}
		after, err := s.ListVMs()
		if err != nil || len(after) != len(before) {
			t.Fatalf("refused body changed the store: %d -> %d vms (%v)", len(before), len(after), err)
		}
	})
}

func FuzzValidName(f *testing.F) {
	for _, s := range []string{"a", "vm-1.x_y", "../x", "a/b", "$(id)", "", ".hidden", strings.Repeat("a", 64)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		if api.ValidName(name) != nil {
			return
		}
		if strings.ContainsAny(name, "/\\ $;&|`'\"()<>*?\n\x00") || name == "." || name == ".." || filepath.Base(name) != name {
			t.Fatalf("unsafe name %q accepted", name)
		}
	})
}

// TestAPIReplacesSocketNobodyServes: a socket file whose listener is held by a process
// that never answers (as a child of a killed snpd holds it between fork and exec) is not
// a live snpd: the next snpd replaces it instead of refusing to start.
func TestAPIReplacesSocketNobodyServes(t *testing.T) {
	e := newTestEnv(t, "")
	if err := os.MkdirAll(filepath.Dir(e.Socket), 0o755); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", e.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close() // never accepts: connections wait in its backlog
	d := startDaemon(t, e)
	if _, err := d.Client.Status(ctxT(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
}
