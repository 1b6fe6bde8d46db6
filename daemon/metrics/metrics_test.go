package metrics

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/snpd/snpd/daemon/api"
	"github.com/snpd/snpd/daemon/metrics/metricstest"
)

// scrape serves GET /metrics from m's handler and parses it as a scraper does.
func scrape(t *testing.T, m *Metrics) (metricstest.Samples, metricstest.Types) {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, Path, nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /metrics: %d %s", rec.Code, rec.Body)
	}
	if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Fatalf("GET /metrics: content type %q, want the text format", ct)
	}
	s, types, err := metricstest.Parse(rec.Body)
	if err != nil {
		t.Fatal(err)
	}
	return s, types
}

var k = metricstest.Key

// TestCountersMoveByWhatHappened calls every recording method and checks each series
// moved by exactly that, and nothing else moved.
func TestCountersMoveByWhatHappened(t *testing.T) {
	m := New(Options{Platform: "none", Version: "test"})
	before, types := scrape(t, m)
	for name, typ := range map[string]dto.MetricType{
		"snpd_launches_total": dto.MetricType_COUNTER, "snpd_vm_transitions_total": dto.MetricType_COUNTER,
		"snpd_attestations_total": dto.MetricType_COUNTER, "snpd_reattached_guests": dto.MetricType_GAUGE,
		"snpd_build_info": dto.MetricType_GAUGE, "go_goroutines": dto.MetricType_GAUGE,
		"process_start_time_seconds": dto.MetricType_GAUGE,
	} {
		if types[name] != typ {
			t.Errorf("%s: type %v, want %v", name, types[name], typ)
		}
	}
	// Present at 0 before anything happened: increase() and rate() then see the first
	// event (a series born with the value 1 shows no increase).
	for _, key := range []string{
		k("snpd_launches_total", "result", "started", "step", "", "rule", ""),
		k("snpd_vm_transitions_total", "state", "crashed"),
		k("snpd_attestations_total", "source", "verify", "result", "failed"),
		k("snpd_reattached_guests", "state", "running"),
		k("snpd_launches_total", "result", "failed", "step", "spawn", "rule", ""),
		k("snpd_launches_total", "result", "failed", "step", "launch", "rule", ""),
		k("snpd_policy_refusals_total", "point", "runtime"),
		k("snpd_policy_refusals_total", "point", "libvirt_hook"),
	} {
		if v, ok := before[key]; !ok || v != 0 {
			t.Errorf("%s = %v (present %v), want 0 from the start", key, v, ok)
		}
	}
	if before[k("snpd_build_info", "platform", "none", "version", "test")] != 1 {
		t.Errorf("snpd_build_info missing")
	}

	m.LaunchStep("measure", 20*time.Millisecond)
	m.LaunchStep("spawn", 300*time.Millisecond)
	m.LaunchStarted(time.Second)
	m.LaunchRefused("admit", "snp.forbid_debug")
	m.LaunchFailed("spawn")
	m.PolicyRefusal(PointDefinition, []string{"snp.forbid_debug", "vcpu.models"})
	m.PolicyRefusal(PointLibvirtHook, []string{"vcpu.models"})
	m.Transition(api.StateStarting)
	m.Transition(api.StateRunning)
	m.Transition(api.StateCrashed)
	m.Attestation(SourceVerify, VerdictFailed, []string{"measurement", "report-data"})
	m.Attestation(SourceAttest, VerdictOK, nil)
	m.Attestation(SourceAttest, VerdictError, nil)
	m.Reattached([]api.State{api.StateRunning, api.StateRunning, api.StateFailed})

	after, _ := scrape(t, m)
	got := metricstest.Delta(before, after, "snpd_")
	want := map[string]float64{
		k("snpd_launch_step_duration_seconds_count", "step", "measure"):                            1,
		k("snpd_launch_step_duration_seconds_sum", "step", "measure"):                              0.02,
		k("snpd_launch_step_duration_seconds_count", "step", "spawn"):                              1,
		k("snpd_launch_step_duration_seconds_sum", "step", "spawn"):                                0.3,
		"snpd_launch_duration_seconds_count":                                                       1,
		"snpd_launch_duration_seconds_sum":                                                         1,
		k("snpd_launches_total", "result", "started", "step", "", "rule", ""):                      1,
		k("snpd_launches_total", "result", "refused", "step", "admit", "rule", "snp.forbid_debug"): 1,
		k("snpd_launches_total", "result", "failed", "step", "spawn", "rule", ""):                  1,
		k("snpd_policy_refusals_total", "point", "definition"):                                     1,
		k("snpd_policy_refusals_total", "point", "libvirt_hook"):                                   1,
		k("snpd_policy_violations_total", "point", "definition", "rule", "snp.forbid_debug"):       1,
		k("snpd_policy_violations_total", "point", "definition", "rule", "vcpu.models"):            1,
		k("snpd_policy_violations_total", "point", "libvirt_hook", "rule", "vcpu.models"):          1,
		k("snpd_vm_transitions_total", "state", "starting"):                                        1,
		k("snpd_vm_transitions_total", "state", "running"):                                         1,
		k("snpd_vm_transitions_total", "state", "crashed"):                                         1,
		k("snpd_attestations_total", "source", "verify", "result", "failed"):                       1,
		k("snpd_attestations_total", "source", "attest", "result", "ok"):                           1,
		k("snpd_attestations_total", "source", "attest", "result", "error"):                        1,
		k("snpd_attestation_check_failures_total", "source", "verify", "check", "measurement"):     1,
		k("snpd_attestation_check_failures_total", "source", "verify", "check", "report-data"):     1,
		k("snpd_reattached_guests", "state", "running"):                                            2,
		k("snpd_reattached_guests", "state", "failed"):                                             1,
	}
	compareDeltas(t, got, want)
}

// compareDeltas fails on every series whose change differs from want (sums compared to
// a microsecond).
func compareDeltas(t *testing.T, got, want map[string]float64) {
	t.Helper()
	for key, w := range want {
		g, ok := got[key]
		if !ok || g-w > 1e-6 || w-g > 1e-6 {
			t.Errorf("%s moved by %v, want %v", key, g, w)
		}
	}
	for key, g := range got {
		if _, ok := want[key]; !ok {
			t.Errorf("%s moved by %v, want unchanged", key, g)
		}
	}
}

func TestNilMetricsRecordNothing(t *testing.T) {
	var m *Metrics
	m.SetSources(Sources{})
	m.LaunchStep("measure", time.Second)
	m.LaunchStarted(time.Second)
	m.LaunchRefused("admit", "x")
	m.LaunchFailed("spawn")
	m.PolicyRefusal(PointRuntime, []string{"x"})
	m.Transition(api.StateRunning)
	m.Attestation(SourceAttest, VerdictOK, nil)
	m.Reattached(nil)
	h := http.NotFoundHandler()
	if got := m.InstrumentAPI(h); fmt.Sprintf("%p", got) != fmt.Sprintf("%p", h) {
		t.Fatal("a nil *Metrics must not wrap the API handler")
	}
}

func TestScrapeTimeSources(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	wrote := now.Add(-time.Minute)
	src := Sources{
		VMs: func() ([]VM, error) {
			return []VM{{"a", api.StateRunning}, {"b", api.StateRunning}, {"c", api.StateCrashed}}, nil
		},
		GuestSessions: func() (int, int) { return 3, 1 },
		Certs: func() ([]Cert, error) {
			return []Cert{
				{"VCEK", now.Add(48 * time.Hour)}, {"VCEK", now.Add(24 * time.Hour)},
				{"ASK", now.Add(-time.Hour)}, {"ARK", now.Add(1000 * time.Hour)},
			}, nil
		},
		Store: func() (StoreStats, error) { return StoreStats{SizeBytes: 32768, LastWrite: wrote}, nil },
	}
	for _, perVM := range []bool{false, true} {
		m := New(Options{Platform: "sev-snp", PerVM: perVM, Now: func() time.Time { return now }})
		m.SetSources(src)
		s, types := scrape(t, m)
		want := map[string]float64{
			k("snpd_vms", "platform", "sev-snp", "state", "running"):  2,
			k("snpd_vms", "platform", "sev-snp", "state", "crashed"):  1,
			k("snpd_vms", "platform", "sev-snp", "state", "stopped"):  0,
			k("snpd_vms", "platform", "sev-snp", "state", "failed"):   0,
			k("snpd_vms", "platform", "sev-snp", "state", "starting"): 0,
			k("snpd_vms", "platform", "sev-snp", "state", "stopping"): 0,
			"snpd_guest_sessions":                                3,
			"snpd_guest_sessions_connected":                      1,
			k("snpd_certificates", "kind", "VCEK"):               2,
			k("snpd_certificates", "kind", "ASK"):                1,
			k("snpd_certificates", "kind", "ARK"):                1,
			k("snpd_certificate_expiry_seconds", "kind", "VCEK"): 86400,
			k("snpd_certificate_expiry_seconds", "kind", "ASK"):  -3600,
			k("snpd_certificate_expiry_seconds", "kind", "ARK"):  3600000,
			"snpd_store_size_bytes":                              32768,
			"snpd_store_last_write_timestamp_seconds":            float64(wrote.Unix()),
		}
		for key, w := range want {
			if g, ok := s[key]; !ok || g != w {
				t.Errorf("per_vm %v: %s = %v (present %v), want %v", perVM, key, g, ok, w)
			}
		}
		if types["snpd_vms"] != dto.MetricType_GAUGE {
			t.Errorf("snpd_vms is a %v", types["snpd_vms"])
		}
		perVMSeries := 0
		for key := range s {
			if strings.HasPrefix(key, "snpd_vm_state{") {
				perVMSeries++
			}
			if strings.Contains(key, `vm="`) && !strings.HasPrefix(key, "snpd_vm_state{") {
				t.Errorf("%s: a VM name outside snpd_vm_state", key)
			}
		}
		if !perVM && perVMSeries != 0 {
			t.Errorf("per_vm off: %d snpd_vm_state series", perVMSeries)
		}
		if perVM && (perVMSeries != 3 || s[k("snpd_vm_state", "vm", "c", "state", "crashed")] != 1) {
			t.Errorf("per_vm on: %d snpd_vm_state series, c=%v", perVMSeries, s[k("snpd_vm_state", "vm", "c", "state", "crashed")])
		}
	}
}

// TestFailingSourceKeepsTheRest: a source that fails leaves its series out of the scrape
// and the others are still served.
func TestFailingSourceKeepsTheRest(t *testing.T) {
	m := New(Options{Platform: "none"})
	m.SetSources(Sources{
		VMs:   func() ([]VM, error) { return nil, errors.New("store is closed") },
		Store: func() (StoreStats, error) { return StoreStats{SizeBytes: 1}, nil },
	})
	s, _ := scrape(t, m)
	for key := range s {
		if strings.HasPrefix(key, "snpd_vms{") {
			t.Errorf("%s served although listing VMs failed", key)
		}
	}
	if s["snpd_store_size_bytes"] != 1 || s["snpd_launches_total{result=\"started\",rule=\"\",step=\"\"}"] != 0 {
		t.Errorf("the rest of the scrape is missing: %v", s["snpd_store_size_bytes"])
	}
}

// TestHandlerAnswersOnlyMetrics: the metrics listener's handler answers GET and HEAD
// /metrics and nothing else.
func TestHandlerAnswersOnlyMetrics(t *testing.T) {
	h := New(Options{}).Handler()
	for _, c := range []struct {
		method, path string
		status       int
	}{
		{"GET", "/metrics", 200},
		{"HEAD", "/metrics", 200},
		{"POST", "/metrics", 405},
		{"DELETE", "/metrics", 405},
		{"GET", "/", 404},
		{"GET", "/metrics/", 404},
		{"GET", "/v1/status", 404},
		{"POST", "/v1/vms", 404},
		{"GET", "/debug/pprof/", 404},
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(c.method, c.path, nil))
		if rec.Code != c.status {
			t.Errorf("%s %s: %d, want %d", c.method, c.path, rec.Code, c.status)
		}
	}
}

// TestInstrumentAPI counts requests by route pattern and status through a ServeMux like
// the API's, observes their latency except on stream routes, and keeps http.Flusher.
func TestInstrumentAPI(t *testing.T) {
	m := New(Options{})
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/vms/{name}", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("name") == "nope" {
			http.Error(w, "no", http.StatusNotFound)
			return
		}
		fmt.Fprint(w, "{}")
	})
	mux.HandleFunc("POST /v1/vms", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusCreated) })
	mux.HandleFunc("GET /v1/events", func(w http.ResponseWriter, r *http.Request) {
		if _, ok := w.(http.Flusher); !ok {
			t.Error("the instrumented writer lost http.Flusher")
		}
		w.(http.Flusher).Flush()
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { http.NotFound(w, r) })
	h := m.InstrumentAPI(mux, "GET /v1/events")
	before, _ := scrape(t, m)
	for _, c := range []struct{ method, path string }{
		{"GET", "/v1/vms/a"}, {"GET", "/v1/vms/b"}, {"GET", "/v1/vms/nope"}, {"POST", "/v1/vms"},
		{"GET", "/v1/events"}, {"GET", "/v2/what"}, {"DELETE", "/v1/events"},
	} {
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(c.method, c.path, nil))
	}
	after, _ := scrape(t, m)
	got := metricstest.Delta(before, after, "snpd_api_requests_total", "snpd_api_request_duration_seconds_count")
	want := map[string]float64{
		k("snpd_api_requests_total", "route", "GET /v1/vms/{name}", "code", "200"):  2,
		k("snpd_api_requests_total", "route", "GET /v1/vms/{name}", "code", "404"):  1,
		k("snpd_api_requests_total", "route", "POST /v1/vms", "code", "201"):        1,
		k("snpd_api_requests_total", "route", "GET /v1/events", "code", "200"):      1,
		k("snpd_api_requests_total", "route", "unmatched", "code", "404"):           2,
		k("snpd_api_request_duration_seconds_count", "route", "GET /v1/vms/{name}"): 3,
		k("snpd_api_request_duration_seconds_count", "route", "POST /v1/vms"):       1,
		k("snpd_api_request_duration_seconds_count", "route", "unmatched"):          2,
	}
	compareDeltas(t, got, want)
}

// BenchmarkInstrumentAPIOverhead is the instrumentation alone: a route that writes
// nothing, through a ServeMux bare and wrapped by InstrumentAPI.
func BenchmarkInstrumentAPIOverhead(b *testing.B) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/vms/{name}", func(w http.ResponseWriter, r *http.Request) {})
	m := New(Options{})
	for _, c := range []struct {
		name string
		h    http.Handler
	}{{"bare", mux}, {"instrumented", m.InstrumentAPI(mux)}} {
		b.Run(c.name, func(b *testing.B) {
			req := httptest.NewRequest(http.MethodGet, "/v1/vms/a", nil)
			w := httptest.NewRecorder()
			b.ReportAllocs()
			for b.Loop() {
				c.h.ServeHTTP(w, req)
			}
		})
	}
}
