package daemon

import (
	"bufio"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
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

	"github.com/snpd/snpd/config"
	"github.com/snpd/snpd/daemon/api"
	"github.com/snpd/snpd/daemon/metrics/metricstest"
	"github.com/snpd/snpd/daemon/store"
	"github.com/snpd/snpd/snp/agentproto"
	"github.com/snpd/snpd/snp/snptest"
)

// needQEMUBinary skips when the real QEMU or its firmware is absent. Unlike needQEMU it
// does not need /dev/kvm: on platform "none" snpd runs the guest under TCG.
func needQEMUBinary(t testing.TB) {
	t.Helper()
	for _, p := range []string{testQEMU, testFirmware} {
		if _, err := os.Stat(p); err != nil {
			t.Skipf("%s is missing (run scripts/install-deps.sh): %v", p, err)
		}
	}
}

// metricsPolicy is a host policy that lets the test VMs start and refuses debug guests.
const metricsPolicy = `[firmware]
allow_any = true
[snp]
forbid = ["debug"]
[vcpu]
models = ["EPYC-v4"]
max = 4
[memory]
min_mib = 16
max_mib = 1024
`

// badDomain is a libvirt domain the metricsPolicy refuses twice: CPU model and memory.
const badDomain = `<domain type='kvm'><name>lvbad</name><memory unit='MiB'>2048</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='q35'>hvm</type><loader type='rom'>/usr/share/ovmf/OVMF.fd</loader></os>
<cpu mode='custom'><model fallback='forbid'>qemu64</model></cpu></domain>`

// httpOver returns an HTTP client whose every request goes to network/addr.
func httpOver(network, addr string) *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
	}}
}

// scrapeMetrics GETs /metrics through c and parses it with the Prometheus text parser.
func scrapeMetrics(t *testing.T, c *http.Client) metricstest.Samples {
	t.Helper()
	resp, err := c.Get("http://snpd/metrics")
	if err != nil {
		t.Fatalf("scraping metrics: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("scraping metrics: %s: %s", resp.Status, b)
	}
	s, _, err := metricstest.Parse(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

var mk = metricstest.Key

// TestMetricsCountWhatHappened runs snpd with a unix metrics socket and does a define, a
// start, a start the policy refuses, a libvirt domain the policy refuses, a verify that
// passes and one that fails, and a stop; every counter and histogram count of snpd_*
// moved by exactly what happened, the gauges say where things stand, and the event
// stream carried the refusals and verdicts next to the state changes.
func TestMetricsCountWhatHappened(t *testing.T) {
	needQEMUBinary(t)
	signer, err := snptest.NewSigner(snptest.SignerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	e := newTestEnv(t, "policy_file = \"policy.toml\"\n[attestation]\ntrusted_roots_file = \"roots.pem\"\n[metrics]\nlisten = \"unix:run/metrics.sock\"\n")
	for name, b := range map[string][]byte{"policy.toml": []byte(metricsPolicy), "roots.pem": signer.RootsPEM()} {
		if err := os.WriteFile(filepath.Join(e.Dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	d := startDaemon(t, e)
	c := d.Client
	ctx := ctxT(t, 3*time.Minute)
	sock := filepath.Join(e.RuntimeDir, "metrics.sock")
	mc := httpOver("unix", sock)

	// Follow the event stream from the start.
	evCtx, evStop := context.WithCancel(ctx)
	defer evStop()
	var evMu sync.Mutex
	var events []api.Event
	followed := make(chan error, 1)
	subscribed := make(chan struct{})
	go func() {
		followed <- c.FollowEvents(evCtx, api.EventsOptions{Connected: func() { close(subscribed) }}, func(ev api.Event) error {
			evMu.Lock()
			events = append(events, ev)
			evMu.Unlock()
			return nil
		})
	}()
	select {
	case <-subscribed:
	case err := <-followed:
		t.Fatalf("following events: %v", err)
	}
	// A second follower asks for policy events alone (?kind=policy).
	var policyOnly []api.Event
	policyFollowed := make(chan error, 1)
	policySubscribed := make(chan struct{})
	go func() {
		policyFollowed <- c.FollowEvents(evCtx, api.EventsOptions{Kinds: []string{api.EventPolicy}, Connected: func() { close(policySubscribed) }},
			func(ev api.Event) error {
				evMu.Lock()
				policyOnly = append(policyOnly, ev)
				evMu.Unlock()
				return nil
			})
	}()
	select {
	case <-policySubscribed:
	case err := <-policyFollowed:
		t.Fatalf("following policy events: %v", err)
	}
	if status, body := rawRequest(t, e.Socket, "GET", "/v1/events?kind=state,bogus", nil); status != http.StatusBadRequest || !strings.Contains(body, "not an event kind") {
		t.Fatalf("GET /v1/events?kind=state,bogus: %d %s", status, body)
	}

	before := scrapeMetrics(t, mc)
	t0 := time.Now()

	mustDefine(t, c, "good", "")
	mustDefine(t, c, "dbg", "[snp]\npolicy = 0xb0000\n")
	if _, err := c.Start(ctx, "good"); err != nil {
		t.Fatalf("starting good: %v", err)
	}
	_, err = c.Start(ctx, "dbg")
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Status != http.StatusUnprocessableEntity || len(ae.Violations) != 1 || ae.Violations[0].Rule != "snp.forbid_debug" {
		t.Fatalf("starting dbg: %v, want a 422 naming snp.forbid_debug", err)
	}
	err = c.Do(ctx, http.MethodPost, api.LibvirtDomainsPath, api.LibvirtDomainRequest{Name: "lvbad", XML: badDomain}, nil)
	if !errors.As(err, &ae) || ae.Status != http.StatusUnprocessableEntity {
		t.Fatalf("registering lvbad: %v, want a 422", err)
	}
	var libvirtRules []string
	for _, v := range ae.Violations {
		libvirtRules = append(libvirtRules, v.Rule)
	}
	if !slices.Equal(libvirtRules, []string{"vcpu.models", "memory.size"}) {
		t.Fatalf("lvbad refused for %q, want vcpu.models and memory.size", libvirtRules)
	}

	// A report of good's launch, signed by the fake chip the trusted roots know.
	info, err := c.Get(ctx, "good")
	if err != nil || info.Last == nil {
		t.Fatalf("reading good: %v", err)
	}
	var rec api.LaunchRecord
	if err := json.Unmarshal(info.Last.Record, &rec); err != nil {
		t.Fatal(err)
	}
	digest, err := hex.DecodeString(rec.ExpectedDigest)
	if err != nil || len(digest) != 48 {
		t.Fatalf("expected digest %q: %v", rec.ExpectedDigest, err)
	}
	nonce := []byte("metrics test nonce")
	rd, err := agentproto.BindReportData(nonce, nil)
	if err != nil {
		t.Fatal(err)
	}
	f := snptest.Fields{Policy: rec.Policy, ReportData: rd}
	copy(f.Measurement[:], digest)
	report, err := signer.Report(f)
	if err != nil {
		t.Fatal(err)
	}
	verify := func(nonce []byte) *api.VerifyResponse {
		t.Helper()
		var vr api.VerifyResponse
		req := api.VerifyRequest{VM: "good", Report: report, CertTable: signer.CertTable(), Nonce: hex.EncodeToString(nonce),
			// platform none: a passing verdict needs the explicit opt-in.
			AllowNonConfidential: true}
		if err := c.Do(ctx, http.MethodPost, api.VerifyPath, req, &vr); err != nil {
			t.Fatalf("verifying: %v", err)
		}
		return &vr
	}
	if vr := verify(nonce); !vr.Verdict.OK {
		t.Fatalf("the good report failed: %+v", vr.Verdict)
	}
	bad := verify([]byte("another nonce"))
	var badChecks []string
	for _, ch := range bad.Verdict.Checks {
		if !ch.OK {
			badChecks = append(badChecks, ch.Name)
		}
	}
	if bad.Verdict.OK || !slices.Contains(badChecks, "report-data") {
		t.Fatalf("a report bound to another nonce: %+v", bad.Verdict)
	}
	if _, err := c.Stop(ctx, "good", api.StopRequest{TimeoutSeconds: 1}); err != nil {
		t.Fatalf("stopping good: %v", err)
	}
	after := scrapeMetrics(t, mc)

	// Every counter and histogram count moved by exactly what happened, no other did.
	moved := metricstest.Delta(before, after, "snpd_")
	got := map[string]float64{}
	for key, v := range moved {
		name, _, _ := strings.Cut(key, "{")
		switch {
		case strings.HasSuffix(name, "_total"), strings.HasSuffix(name, "_count"):
			got[key] = v
		case strings.HasSuffix(name, "_sum"):
			if v <= 0 {
				t.Errorf("%s moved by %v: a duration sum must grow", key, v)
			}
		}
	}
	want := map[string]float64{
		mk("snpd_api_requests_total", "route", "POST /v1/vms", "code", "201"):                       2,
		mk("snpd_api_requests_total", "route", "POST /v1/vms/{name}/start", "code", "200"):          1,
		mk("snpd_api_requests_total", "route", "POST /v1/vms/{name}/start", "code", "422"):          1,
		mk("snpd_api_requests_total", "route", "POST /v1/libvirt/domains", "code", "422"):           1,
		mk("snpd_api_requests_total", "route", "GET /v1/vms/{name}", "code", "200"):                 1,
		mk("snpd_api_requests_total", "route", "POST /v1/verify", "code", "200"):                    2,
		mk("snpd_api_requests_total", "route", "POST /v1/vms/{name}/stop", "code", "200"):           1,
		mk("snpd_api_request_duration_seconds_count", "route", "POST /v1/vms"):                      2,
		mk("snpd_api_request_duration_seconds_count", "route", "POST /v1/vms/{name}/start"):         2,
		mk("snpd_api_request_duration_seconds_count", "route", "POST /v1/libvirt/domains"):          1,
		mk("snpd_api_request_duration_seconds_count", "route", "GET /v1/vms/{name}"):                1,
		mk("snpd_api_request_duration_seconds_count", "route", "POST /v1/verify"):                   2,
		mk("snpd_api_request_duration_seconds_count", "route", "POST /v1/vms/{name}/stop"):          1,
		mk("snpd_launches_total", "result", "started", "step", "", "rule", ""):                      1,
		mk("snpd_launches_total", "result", "refused", "step", "admit", "rule", "snp.forbid_debug"): 1,
		"snpd_launch_duration_seconds_count":                                                        1,
		mk("snpd_launch_step_duration_seconds_count", "step", "measure"):                            2,
		mk("snpd_launch_step_duration_seconds_count", "step", "probe"):                              2,
		mk("snpd_launch_step_duration_seconds_count", "step", "admit"):                              1,
		mk("snpd_launch_step_duration_seconds_count", "step", "spawn"):                              1,
		mk("snpd_launch_step_duration_seconds_count", "step", "verify"):                             1,
		mk("snpd_launch_step_duration_seconds_count", "step", "record"):                             1,
		mk("snpd_launch_step_duration_seconds_count", "step", "cont"):                               1,
		mk("snpd_policy_refusals_total", "point", "definition"):                                     1,
		mk("snpd_policy_refusals_total", "point", "libvirt_hook"):                                   1,
		mk("snpd_policy_violations_total", "point", "definition", "rule", "snp.forbid_debug"):       1,
		mk("snpd_policy_violations_total", "point", "libvirt_hook", "rule", "vcpu.models"):          1,
		mk("snpd_policy_violations_total", "point", "libvirt_hook", "rule", "memory.size"):          1,
		mk("snpd_vm_transitions_total", "state", "starting"):                                        2,
		mk("snpd_vm_transitions_total", "state", "running"):                                         1,
		mk("snpd_vm_transitions_total", "state", "failed"):                                          1,
		mk("snpd_vm_transitions_total", "state", "stopping"):                                        1,
		mk("snpd_vm_transitions_total", "state", "stopped"):                                         1,
		mk("snpd_attestations_total", "source", "verify", "result", "ok"):                           1,
		mk("snpd_attestations_total", "source", "verify", "result", "failed"):                       1,
	}
	for _, ch := range badChecks {
		want[mk("snpd_attestation_check_failures_total", "source", "verify", "check", ch)] = 1
	}
	for key, w := range want {
		if got[key] != w {
			t.Errorf("%s moved by %v, want %v", key, got[key], w)
		}
	}
	for key, g := range got {
		if _, ok := want[key]; !ok {
			t.Errorf("%s moved by %v, want unchanged", key, g)
		}
	}

	// Gauges: where things stand now.
	for key, w := range map[string]float64{
		mk("snpd_vms", "platform", "none", "state", "stopped"): 1,
		mk("snpd_vms", "platform", "none", "state", "failed"):  1,
		mk("snpd_vms", "platform", "none", "state", "running"): 0,
		"snpd_guest_sessions":                                         0,
		"snpd_guest_sessions_connected":                               0,
		mk("snpd_reattached_guests", "state", "running"):              0,
		mk("snpd_build_info", "platform", "none", "version", Version): 1,
	} {
		if g, ok := after[key]; !ok || g != w {
			t.Errorf("%s = %v (present %v), want %v", key, g, ok, w)
		}
	}
	if w := after["snpd_store_last_write_timestamp_seconds"]; w < float64(t0.Unix()) || w > float64(time.Now().Unix()+1) {
		t.Errorf("store last write at %v, not during the test (from %d)", w, t0.Unix())
	}
	if st, err := os.Stat(filepath.Join(e.StateDir, "state.db")); err != nil || after["snpd_store_size_bytes"] != float64(st.Size()) {
		t.Errorf("store size %v, the file has %v (%v)", after["snpd_store_size_bytes"], st.Size(), err)
	}
	for key := range after {
		if strings.Contains(key, `vm="`) {
			t.Errorf("%s: a VM name without metrics.per_vm", key)
		}
	}

	// The event stream carried the refusals and verdicts as their own kinds.
	evStop()
	if err := <-followed; !errors.Is(err, context.Canceled) {
		t.Errorf("following events: %v", err)
	}
	if err := <-policyFollowed; !errors.Is(err, context.Canceled) {
		t.Errorf("following policy events: %v", err)
	}
	evMu.Lock()
	defer evMu.Unlock()
	var kinds []string
	for _, ev := range events {
		switch ev.Kind {
		case api.EventState:
			kinds = append(kinds, ev.VM+":"+string(ev.State))
		case api.EventPolicy:
			var rules []string
			for _, v := range ev.Violations {
				rules = append(rules, v.Rule)
			}
			kinds = append(kinds, fmt.Sprintf("%s:policy@%s:%s", ev.VM, ev.Point, strings.Join(rules, "+")))
		case api.EventAttestation:
			kinds = append(kinds, fmt.Sprintf("%s:%s:ok=%v", ev.VM, ev.Source, ev.OK != nil && *ev.OK))
		default:
			t.Errorf("event of kind %q: %+v", ev.Kind, ev)
		}
	}
	wantEvents := []string{"good:starting", "good:running", "dbg:starting", "dbg:policy@definition:snp.forbid_debug", "dbg:failed",
		"lvbad:policy@libvirt_hook:vcpu.models+memory.size", "good:verify:ok=true", "good:verify:ok=false", "good:stopping", "good:stopped"}
	if strings.Join(kinds, " ") != strings.Join(wantEvents, " ") {
		t.Errorf("events:\n got %q\nwant %q", kinds, wantEvents)
	}
	var policyVMs []string
	for _, ev := range policyOnly {
		policyVMs = append(policyVMs, ev.Kind+":"+ev.VM)
	}
	if !slices.Equal(policyVMs, []string{"policy:dbg", "policy:lvbad"}) {
		t.Errorf("?kind=policy delivered %q, want the two refusals only", policyVMs)
	}
}

// listeningSockets lists what process pid listens on: unix socket paths and TCP
// addresses (from /proc/PID/fd, /proc/net/unix and /proc/net/tcp{,6}).
func listeningSockets(t *testing.T, pid int) []string {
	t.Helper()
	inodes := map[string]bool{}
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if l, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil {
			if ino, ok := strings.CutPrefix(l, "socket:["); ok {
				inodes[strings.TrimSuffix(ino, "]")] = true
			}
		}
	}
	var out []string
	scan := func(file string, f func([]string)) {
		fh, err := os.Open(file)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return
			}
			t.Fatal(err)
		}
		defer fh.Close()
		sc := bufio.NewScanner(fh)
		sc.Scan() // header
		for sc.Scan() {
			f(strings.Fields(sc.Text()))
		}
	}
	// Num RefCount Protocol Flags Type St Inode [Path]; Flags 00010000 is __SO_ACCEPTCON.
	scan("/proc/net/unix", func(f []string) {
		if len(f) >= 8 && f[3] == "00010000" && inodes[f[6]] {
			out = append(out, "unix:"+f[7])
		}
	})
	for _, file := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		// sl local_address rem_address st ... inode (field 10); st 0A is LISTEN.
		scan(file, func(f []string) {
			if len(f) >= 10 && f[3] == "0A" && inodes[f[9]] {
				host, port, _ := strings.Cut(f[1], ":")
				p, _ := strconv.ParseUint(port, 16, 16)
				out = append(out, fmt.Sprintf("tcp:%s:%d", host, p))
			}
		})
	}
	slices.Sort(out)
	return out
}

// freeLoopbackPort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freeLoopbackPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// TestMetricsEndpointOnlyWhenConfigured: without [metrics] snpd listens on its API socket
// alone (no TCP port, no other socket) and the API has no /metrics; with a unix or a
// loopback TCP address it listens there too, serves /metrics, and removes the socket
// file when it stops. A non-loopback address stops snpd at start.
func TestMetricsEndpointOnlyWhenConfigured(t *testing.T) {
	e := newTestEnv(t, "")
	d := startDaemon(t, e)
	if got := listeningSockets(t, d.cmd.Process.Pid); !slices.Equal(got, []string{"unix:" + e.Socket}) {
		t.Errorf("snpd without [metrics] listens on %q, want only its API socket", got)
	}
	if status, body := rawRequest(t, e.Socket, "GET", "/metrics", nil); status != http.StatusNotFound || !strings.Contains(body, `"not_found"`) {
		t.Errorf("GET /metrics on the API socket: %d %s", status, body)
	}
	if m, _ := filepath.Glob(filepath.Join(e.RuntimeDir, "*metrics*")); len(m) != 0 {
		t.Errorf("metrics files without [metrics]: %q", m)
	}

	port := freeLoopbackPort(t)
	for _, c := range []struct {
		name, listen, network, addr, socket string
	}{
		{"unix", "unix:run/m.sock", "unix", "", "unix:"},
		{"tcp", fmt.Sprintf("127.0.0.1:%d", port), "tcp", fmt.Sprintf("127.0.0.1:%d", port), fmt.Sprintf("tcp:0100007F:%d", port)},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newTestEnv(t, "[metrics]\nlisten = \""+c.listen+"\"\n")
			addr, want := c.addr, c.socket
			if c.network == "unix" {
				addr = filepath.Join(e.RuntimeDir, "m.sock")
				want = "unix:" + addr
			}
			d := startDaemon(t, e)
			if got := listeningSockets(t, d.cmd.Process.Pid); !slices.Equal(got, []string{"unix:" + e.Socket, want}) && !slices.Equal(got, []string{want, "unix:" + e.Socket}) {
				t.Errorf("snpd listens on %q, want its API socket and %s", got, want)
			}
			s := scrapeMetrics(t, httpOver(c.network, addr))
			if s[mk("snpd_launches_total", "result", "started", "step", "", "rule", "")] != 0 || s["go_goroutines"] == 0 || s["process_start_time_seconds"] == 0 {
				t.Errorf("scrape lacks snpd's, Go's or the process's series")
			}
			if c.network == "unix" {
				st, err := os.Stat(addr)
				if err != nil || st.Mode().Perm() != 0o660 {
					t.Errorf("metrics socket: %v, mode %v; want 0660", err, st.Mode().Perm())
				}
				d.signal(syscall.SIGTERM)
				<-d.done
				if _, err := os.Stat(addr); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("metrics socket left behind after snpd stopped: %v", err)
				}
			}
		})
	}

	// Fail closed: a non-loopback address is refused at start, before anything else.
	e = newTestEnv(t, "[metrics]\nlisten = \"0.0.0.0:9477\"\n")
	out, err := runDaemonOnce(e)
	if err == nil || !strings.Contains(out, "not a loopback address") {
		t.Errorf("snpd with metrics on 0.0.0.0: %v\n%s", err, out)
	}
}

// runDaemonOnce runs snpd for e to its end (it is expected to refuse to start).
func runDaemonOnce(e *testEnv) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := execDaemon(ctx, e)
	b, err := cmd.CombinedOutput()
	return string(b), err
}

// apiPaths gives each route of the table a concrete method and path.
func apiPaths() [][2]string {
	var out [][2]string
	for _, rt := range (&Server{}).routes() {
		method, path, _ := strings.Cut(rt.Pattern, " ")
		out = append(out, [2]string{method, strings.ReplaceAll(path, "{name}", "x")})
	}
	return out
}

// TestMetricsListenerIsNoWayIntoTheAPI sends every API route, as root, to the metrics
// listener (unix and TCP): each is 404 with no API answer, and nothing changed behind
// it; /metrics answers there and only there.
func TestMetricsListenerIsNoWayIntoTheAPI(t *testing.T) {
	port := freeLoopbackPort(t)
	e := newTestEnv(t, fmt.Sprintf("[metrics]\nlisten = \"127.0.0.1:%d\"\n", port))
	d := startDaemon(t, e)
	mustDefine(t, d.Client, "x", "")
	tcp := httpOver("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	paths := apiPaths()
	if len(paths) < 15 {
		t.Fatalf("only %d routes", len(paths))
	}
	for _, p := range append(paths, [2]string{"GET", "/"}, [2]string{"GET", "/v1/"}, [2]string{"GET", "/debug/pprof/"}) {
		req, err := http.NewRequest(p[0], "http://snpd"+p[1]+"?vm=x&nonce=00", strings.NewReader("{}"))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := tcp.Do(req)
		if err != nil {
			t.Fatalf("%s %s on the metrics listener: %v", p[0], p[1], err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound || strings.Contains(string(b), `"kind"`) {
			t.Errorf("%s %s on the metrics listener: %d %s; want a plain 404", p[0], p[1], resp.StatusCode, b)
		}
	}
	for _, m := range []string{"POST", "PUT", "DELETE"} {
		req, _ := http.NewRequest(m, "http://snpd/metrics", nil)
		resp, err := tcp.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("%s /metrics: %d, want 405", m, resp.StatusCode)
		}
	}
	// Nothing happened behind the 404s: x is still defined and stopped, nothing started.
	info, err := d.Client.Get(ctxT(t, 10*time.Second), "x")
	if err != nil || info.State != api.StateStopped || info.Starts != 0 {
		t.Fatalf("x after the requests to the metrics listener: %v %+v", err, info)
	}
	s := scrapeMetrics(t, tcp)
	if n := s[mk("snpd_api_requests_total", "route", "POST /v1/vms", "code", "201")]; n != 1 {
		t.Errorf("API requests counted %v defines, want the one on the API socket", n)
	}
	for key, v := range s {
		if strings.HasPrefix(key, "snpd_api_requests_total") && v != 0 && !strings.Contains(key, `route="POST /v1/vms"`) && !strings.Contains(key, `route="GET /v1/status"`) && !strings.Contains(key, `route="GET /v1/vms/{name}"`) {
			t.Errorf("%s = %v: a request on the metrics listener reached the API", key, v)
		}
	}
}

// TestAPIRolesUnchangedByInstrumentation: for every route and every role, the
// instrumented API answers with the status the bare route table gives, and a role
// weaker than the route's is 403 in both.
func TestAPIRolesUnchangedByInstrumentation(t *testing.T) {
	e := newTestEnv(t, "[metrics]\nlisten = \"unix:run/m.sock\"\n")
	cfg := loadTestConfig(t, e)
	o, err := newObserver(cfg, -1, -1, slogDiscard())
	if err != nil {
		t.Fatal(err)
	}
	defer o.close()
	if o.metrics == nil {
		t.Fatal("metrics not set up")
	}
	srv, cleanup := testServer(t)
	defer cleanup()
	bare := newMux(srv.routes(), slogDiscard())
	instrumented := o.instrumentAPI(newMux(srv.routes(), slogDiscard()))
	need := map[string]Role{}
	for _, rt := range srv.routes() {
		need[rt.Pattern] = rt.Need
	}
	n := 0
	for _, rt := range srv.routes() {
		method, path, _ := strings.Cut(rt.Pattern, " ")
		path = strings.ReplaceAll(path, "{name}", "x")
		for _, role := range []Role{RoleNone, RoleRead, RoleOperate} {
			status := func(h http.Handler) int {
				ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond) // ends the event stream
				defer cancel()
				peer := &Peer{UID: 1000, GID: 1000, Role: role}
				req, _ := http.NewRequestWithContext(context.WithValue(ctx, peerKey{}, peer), method, "http://snpd"+path, strings.NewReader("{}"))
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, req)
				return rec.Code
			}
			b, i := status(bare), status(instrumented)
			n++
			if b != i {
				t.Errorf("%s as %s: %d bare, %d instrumented", rt.Pattern, role, b, i)
			}
			if role < need[rt.Pattern] && i != http.StatusForbidden {
				t.Errorf("%s as %s: %d, want 403 (needs %s)", rt.Pattern, role, i, need[rt.Pattern])
			}
			if role >= need[rt.Pattern] && i == http.StatusForbidden {
				t.Errorf("%s as %s: 403, but the role suffices", rt.Pattern, role)
			}
		}
	}
	t.Logf("%d route and role pairs", n)
}

// TestAPIRolesWithMetricsEnabled checks the roles with real peer credentials against an
// snpd serving metrics: the read group lists but may not start, a user in no group is
// refused by the socket's mode and, on an open socket, by SO_PEERCRED; the metrics
// socket has the API socket's mode and group.
func TestAPIRolesWithMetricsEnabled(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("running clients as other uids needs root")
	}
	bin := buildSnpctl(t)
	e := newTestEnv(t, "[metrics]\nlisten = \"unix:run/metrics.sock\"\n")
	d := startDaemon(t, e)
	mustDefine(t, d.Client, "vm1", "")
	for _, sock := range []string{e.Socket, filepath.Join(e.RuntimeDir, "metrics.sock")} {
		st, err := os.Stat(sock)
		if err != nil {
			t.Fatal(err)
		}
		if gid := st.Sys().(*syscall.Stat_t).Gid; st.Mode().Perm() != 0o660 || gid != testReadGID {
			t.Errorf("%s: mode %v group %d, want 0660 and the read group %d", sock, st.Mode().Perm(), gid, testReadGID)
		}
	}
	code, _, stderr := snpctlAs(t, bin, e.Socket, testUID, nil, "vm", "list")
	if code == 0 || !strings.Contains(stderr, "permission denied") {
		t.Errorf("no-group list: exit %d, %q", code, stderr)
	}
	code, stdout, stderr := snpctlAs(t, bin, e.Socket, testUID, []int{testReadGID}, "vm", "list")
	if code != 0 || !strings.Contains(stdout, "vm1") {
		t.Errorf("read-group list: exit %d, %q %q", code, stdout, stderr)
	}
	code, _, stderr = snpctlAs(t, bin, e.Socket, testUID, []int{testReadGID}, "vm", "start", "vm1")
	if code == 0 || !strings.Contains(stderr, "may only read") {
		t.Errorf("read-group start: exit %d, %q", code, stderr)
	}
	if err := os.Chmod(e.Socket, 0o666); err != nil {
		t.Fatal(err)
	}
	code, _, stderr = snpctlAs(t, bin, e.Socket, testUID, nil, "vm", "list")
	if code == 0 || !strings.Contains(stderr, "not root and not in snpd's operate or read group") {
		t.Errorf("no-group list on an open socket: exit %d, %q", code, stderr)
	}
}

// execDaemon is the command that runs snpd for e in a re-executed test binary.
func execDaemon(ctx context.Context, e *testEnv) *exec.Cmd {
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "SNPD_TEST_DAEMON="+e.Config)
	return cmd
}

// loadTestConfig loads e's snpd.toml as snpd does.
func loadTestConfig(t *testing.T, e *testEnv) *config.Daemon {
	t.Helper()
	cfg, err := config.LoadDaemon(e.Config)
	if err != nil {
		t.Fatal(err)
	}
	cfg.SetDefaults()
	return cfg
}

// testServer is the API's Server over a fresh store and Manager, without QEMU or
// attestation (those routes answer 503).
func testServer(t testing.TB) (*Server, func()) {
	t.Helper()
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	mgr := NewManager(ManagerOptions{Store: st, Validate: validateDefinition, RuntimeDir: t.TempDir()})
	cfg := &config.Daemon{Platform: config.PlatformNone}
	cfg.SetDefaults()
	return &Server{cfg: cfg, mgr: mgr, store: st, log: slogDiscard()}, func() { mgr.Close(); st.Close() }
}
