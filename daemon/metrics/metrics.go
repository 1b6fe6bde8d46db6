// Package metrics is snpd's Prometheus instrumentation: the metric families and their
// labels (docs/operations.md lists every one), the collector that reads the daemon's
// state at scrape time, the instrumentation of API requests, and the handler of the
// metrics listener, which answers GET /metrics and nothing else.
//
// It knows nothing of the daemon. Package daemon calls its methods where things happen
// (a launch ends, the policy refuses, a report is verified) and gives it read-only
// Sources for what is read at scrape time (VM states, guest sessions, the certificate
// cache, the store). Every method is safe on a nil *Metrics, which is what the daemon
// holds when metrics are not configured: the instrumentation then costs a nil check.
//
// Labels have bounded values: states, launch steps, policy rule names, check names,
// route patterns, status codes. VM names appear only in snpd_vm_state, and only when the
// operator sets metrics.per_vm. No nonce, report or digest is ever a label.
package metrics

import (
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/snpd/snpd/daemon/api"
)

// Path is the only path the metrics listener answers (GET and HEAD).
const Path = "/metrics"

// Enforcement points of the host policy (label point of snpd_policy_refusals_total and
// snpd_policy_violations_total).
const (
	// PointDefinition is snpd's own launches: a VM definition, its sealed boot files and
	// the QEMU binary checked against the policy at vm start (the Admit step).
	PointDefinition = "definition"
	// PointLibvirtHook is a libvirt domain checked by the libvirt hook (prepare begin).
	PointLibvirtHook = "libvirt_hook"
	// PointRuntime is the running QEMU, paused before its first cont, compared over QMP
	// with the pinned spec; a difference kills it.
	PointRuntime = "runtime"
)

// Launch results (label result of snpd_launches_total).
const (
	ResultStarted = "started"
	ResultRefused = "refused"
	ResultFailed  = "failed"
)

// Attestation sources and results (labels of snpd_attestations_total).
const (
	// SourceAttest is GET /v1/vms/{name}/attestation: snpd challenged the guest.
	SourceAttest = "attest"
	// SourceVerify is POST /v1/verify: a report obtained elsewhere.
	SourceVerify = "verify"

	// VerdictOK: every check passed. VerdictFailed: a report was checked and at least
	// one check failed. VerdictError: no verdict (no report from the guest, no launch
	// record, malformed request).
	VerdictOK     = "ok"
	VerdictFailed = "failed"
	VerdictError  = "error"
)

// StepBeforeSteps is the step label of a launch that failed before its first step
// (another launch of the VM was running, the wait for the measuring slot ended).
const StepBeforeSteps = "launch"

// LaunchSteps are the steps a launch can fail at, each with a series from the start:
// launch.Step* in order (package metrics does not import launch), then StepBeforeSteps.
var LaunchSteps = []string{"measure", "probe", "admit", "spawn", "verify", "record", "cont", StepBeforeSteps}

// vmStates are the states of a VM, in lifecycle order: every one has a series.
var vmStates = []api.State{api.StateStopped, api.StateStarting, api.StateRunning, api.StateStopping,
	api.StateCrashed, api.StateFailed}

// RouteUnmatched is the route label of API requests no route of the table matched.
const RouteUnmatched = "unmatched"

// Options configure New.
type Options struct {
	// Platform is the daemon's platform ("sev-snp" or "none"), the platform label of
	// snpd_vms.
	Platform string
	// Version is snpd's version (snpd_build_info).
	Version string
	// PerVM adds snpd_vm_state, labelled with VM names (metrics.per_vm).
	PerVM bool
	// Now is the clock certificate expiry is measured from (nil: time.Now).
	Now func() time.Time
	// Log receives errors of scrapes (nil: discarded).
	Log *slog.Logger
}

// VM is one VM as the VMs source reports it.
type VM struct {
	Name  string
	State api.State
}

// Cert is one cached AMD certificate as the Certs source reports it.
type Cert struct {
	// Kind is ARK, ASK, ASVK, VCEK or VLEK.
	Kind string
	// NotAfter is the end of its validity.
	NotAfter time.Time
}

// StoreStats is what the Store source reports.
type StoreStats struct {
	// SizeBytes is the size of the store file in bytes.
	SizeBytes int64
	// LastWrite is when a write transaction last committed (zero: none yet).
	LastWrite time.Time
}

// Sources are read at each scrape. A nil source's series are left out; a source that
// fails makes its series absent from that scrape and is logged.
type Sources struct {
	// VMs lists every defined VM with its state (snpd_vms, snpd_vm_state).
	VMs func() ([]VM, error)
	// GuestSessions counts the guest-channel sessions snpd keeps (one per running VM
	// with a serial channel) and how many of them are connected to the guest's agent.
	GuestSessions func() (kept, connected int)
	// Certs lists the cached AMD certificates.
	Certs func() ([]Cert, error)
	// Store reports the durable store's size and last write.
	Store func() (StoreStats, error)
}

// Metrics holds snpd's metric families. Create it with New; a nil *Metrics records
// nothing.
type Metrics struct {
	reg  *prometheus.Registry
	opts Options
	log  *slog.Logger

	launches      *prometheus.CounterVec
	launchSteps   *prometheus.HistogramVec
	launchSeconds prometheus.Histogram
	refusals      *prometheus.CounterVec
	violations    *prometheus.CounterVec
	transitions   *prometheus.CounterVec
	attestations  *prometheus.CounterVec
	checkFailures *prometheus.CounterVec
	apiRequests   *prometheus.CounterVec
	apiSeconds    *prometheus.HistogramVec
	reattached    *prometheus.GaugeVec

	mu  sync.Mutex
	src Sources

	// apiSeries caches the series of each route and status (apiKey -> *apiSeries), so
	// that a request costs no label hashing.
	apiSeriesCache sync.Map
}

type apiKey struct {
	route string
	code  int
}

type apiSeries struct {
	requests prometheus.Counter
	seconds  prometheus.Observer // nil: a stream, counted only
}

// apiSeriesFor returns the series of route and code.
func (m *Metrics) apiSeriesFor(route string, code int, stream bool) *apiSeries {
	k := apiKey{route, code}
	if s, ok := m.apiSeriesCache.Load(k); ok {
		return s.(*apiSeries)
	}
	s := &apiSeries{requests: m.apiRequests.WithLabelValues(route, strconv.Itoa(code))}
	if !stream {
		s.seconds = m.apiSeconds.WithLabelValues(route)
	}
	v, _ := m.apiSeriesCache.LoadOrStore(k, s)
	return v.(*apiSeries)
}

// Buckets, in seconds.
var (
	// launchStepBuckets: from a cached measurement (milliseconds) to a QEMU that takes
	// its time to start under TCG or a busy host (tens of seconds).
	launchStepBuckets = []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}
	// launchBuckets: whole launches, including the wait for the measuring slot when
	// many VMs start at once.
	launchBuckets = []float64{.05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300}
	// apiBuckets: a list answers in a millisecond or two; an attestation waits for the
	// guest up to guest_channel.timeout (10 s by default).
	apiBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}
)

// New returns the metric families, registered with a registry of their own together
// with the Go runtime and process collectors. Call SetSources to add the scrape-time
// series.
func New(o Options) *Metrics {
	if o.Now == nil {
		o.Now = time.Now
	}
	m := &Metrics{reg: prometheus.NewRegistry(), opts: o, log: o.Log}
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	m.launches = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "snpd_launches_total",
		Help: "Launches of VMs by snpd, by result: started; refused by the host policy (step admit, rule: the first violated rule) or by the QMP check of the paused machine (step verify, rule runtime.*); failed (step: the launch step that failed).",
	}, []string{"result", "step", "rule"})
	m.launchSteps = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "snpd_launch_step_duration_seconds",
		Help:    "Duration of each launch step that completed, in seconds: measure (seal boot files, launch digest, ID block), probe (QEMU capabilities), admit (host policy), spawn (QEMU started paused, QMP connected), verify (QMP check), record (durable launch record), cont (resume).",
		Buckets: launchStepBuckets,
	}, []string{"step"})
	m.launchSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "snpd_launch_duration_seconds",
		Help:    "Duration of successful launches end to end, in seconds, including the wait for the measuring slot.",
		Buckets: launchBuckets,
	})
	m.refusals = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "snpd_policy_refusals_total",
		Help: "VMs and libvirt domains the host policy refused, by enforcement point: definition (vm start), libvirt_hook, runtime (the paused QEMU differed from its spec).",
	}, []string{"point"})
	m.violations = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "snpd_policy_violations_total",
		Help: "Host-policy rules broken by refused VMs and libvirt domains, by enforcement point and rule; a refusal breaking two rules adds one to each.",
	}, []string{"point", "rule"})
	m.transitions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "snpd_vm_transitions_total",
		Help: "VM state changes since snpd started, by the state entered (crashed: QEMU died without being asked to).",
	}, []string{"state"})
	m.attestations = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "snpd_attestations_total",
		Help: "Attestation reports checked against launch records, by source (attest: snpd challenged the guest; verify: POST /v1/verify) and result (ok, failed, error: no verdict).",
	}, []string{"source", "result"})
	m.checkFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "snpd_attestation_check_failures_total",
		Help: "Failed checks of attestation verdicts, by source and check name (measurement, report-data, certificate-chain, ...).",
	}, []string{"source", "check"})
	m.apiRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "snpd_api_requests_total",
		Help: "Requests to the API socket, by route pattern (\"unmatched\": no route) and HTTP status code.",
	}, []string{"route", "code"})
	m.apiSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "snpd_api_request_duration_seconds",
		Help:    "Time to answer API requests, in seconds, by route pattern (the event stream is not observed: it lasts as long as its client).",
		Buckets: apiBuckets,
	}, []string{"route"})
	m.reattached = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "snpd_reattached_guests",
		Help: "VMs found with a QEMU when this snpd started, by the state snpd left them in: running or stopping (reattached), failed (found half-started and killed), crashed or stopped (QEMU gone).",
	}, []string{"state"})
	build := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "snpd_build_info",
		Help:        "Always 1; labels name snpd's version and the platform it launches for.",
		ConstLabels: prometheus.Labels{"version": o.Version, "platform": o.Platform},
	})
	build.Set(1)

	// Series that exist from the start at 0, so rate() and increase() see their first
	// increment and alerts can tell "none" from "no data".
	m.launches.WithLabelValues(ResultStarted, "", "")
	for _, step := range LaunchSteps {
		m.launches.WithLabelValues(ResultFailed, step, "")
	}
	for _, p := range []string{PointDefinition, PointLibvirtHook, PointRuntime} {
		m.refusals.WithLabelValues(p)
	}
	for _, s := range vmStates {
		m.transitions.WithLabelValues(string(s))
		m.reattached.WithLabelValues(string(s))
	}
	for _, src := range []string{SourceAttest, SourceVerify} {
		for _, r := range []string{VerdictOK, VerdictFailed, VerdictError} {
			m.attestations.WithLabelValues(src, r)
		}
	}

	m.reg.MustRegister(m.launches, m.launchSteps, m.launchSeconds, m.refusals, m.violations, m.transitions,
		m.attestations, m.checkFailures, m.apiRequests, m.apiSeconds, m.reattached, build,
		&stateCollector{m: m},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// SetSources sets what is read at scrape time.
func (m *Metrics) SetSources(s Sources) {
	if m == nil {
		return
	}
	m.mu.Lock()
	m.src = s
	m.mu.Unlock()
}

func (m *Metrics) sources() Sources {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.src
}

// LaunchStep records how long a launch step that succeeded took.
func (m *Metrics) LaunchStep(step string, took time.Duration) {
	if m == nil {
		return
	}
	m.launchSteps.WithLabelValues(step).Observe(took.Seconds())
}

// LaunchStarted counts a launch that ended with the guest running, took end to end.
func (m *Metrics) LaunchStarted(took time.Duration) {
	if m == nil {
		return
	}
	m.launches.WithLabelValues(ResultStarted, "", "").Inc()
	m.launchSeconds.Observe(took.Seconds())
}

// LaunchRefused counts a launch the policy refused at step (admit or verify) with rule
// the first rule broken (the refusal itself, with every broken rule, goes to
// PolicyRefusal).
func (m *Metrics) LaunchRefused(step, rule string) {
	if m == nil {
		return
	}
	m.launches.WithLabelValues(ResultRefused, step, rule).Inc()
}

// LaunchFailed counts a launch that failed at step.
func (m *Metrics) LaunchFailed(step string) {
	if m == nil {
		return
	}
	m.launches.WithLabelValues(ResultFailed, step, "").Inc()
}

// PolicyRefusal counts one refusal at point, and each rule it broke.
func (m *Metrics) PolicyRefusal(point string, rules []string) {
	if m == nil {
		return
	}
	m.refusals.WithLabelValues(point).Inc()
	for _, r := range rules {
		m.violations.WithLabelValues(point, r).Inc()
	}
}

// Transition counts a VM entering state.
func (m *Metrics) Transition(state api.State) {
	if m == nil {
		return
	}
	m.transitions.WithLabelValues(string(state)).Inc()
}

// Attestation counts one verdict (result VerdictOK or VerdictFailed, with the names of
// the failed checks) or one request that ended without a verdict (VerdictError).
func (m *Metrics) Attestation(source, result string, failedChecks []string) {
	if m == nil {
		return
	}
	m.attestations.WithLabelValues(source, result).Inc()
	for _, c := range failedChecks {
		m.checkFailures.WithLabelValues(source, c).Inc()
	}
}

// Reattached sets snpd_reattached_guests from the states of the VMs found with a QEMU
// at start (api.ReattachResult.State of each).
func (m *Metrics) Reattached(states []api.State) {
	if m == nil {
		return
	}
	for _, s := range vmStates {
		m.reattached.WithLabelValues(string(s)).Set(float64(countOf(states, s)))
	}
}

func countOf(states []api.State, s api.State) int {
	n := 0
	for _, x := range states {
		if x == s {
			n++
		}
	}
	return n
}

// Handler is the metrics listener's handler: GET (and HEAD) /metrics in the Prometheus
// text format, 404 for any other path, 405 for another method on /metrics. At most 4
// scrapes run at once; a scrape is bounded to 10 s.
func (m *Metrics) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET "+Path, promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		ErrorLog:            slog.NewLogLogger(m.log.Handler(), slog.LevelWarn),
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: 4,
		Timeout:             10 * time.Second,
	}))
	return mux
}

// InstrumentAPI wraps the API's handler h (a ServeMux with a catch-all "/" route for
// unknown paths) so that every request is counted by route pattern and status, and its
// duration observed, except for the routes in streams (long-lived, like the event
// stream), which are only counted. A nil *Metrics returns h itself.
func (m *Metrics) InstrumentAPI(h http.Handler, streams ...string) http.Handler {
	if m == nil {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t0 := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		h.ServeHTTP(sw, r)
		// ServeMux sets r.Pattern on the request it routes (Go >= 1.23).
		route := r.Pattern
		if route == "" || route == "/" {
			route = RouteUnmatched
		}
		status := sw.status
		if status == 0 {
			status = http.StatusOK
		}
		s := m.apiSeriesFor(route, status, slices.Contains(streams, route))
		s.requests.Inc()
		if s.seconds != nil {
			s.seconds.Observe(time.Since(t0).Seconds())
		}
	})
}

// statusWriter remembers the status a handler wrote. It keeps http.Flusher (the event
// stream flushes each event) and lets http.ResponseController reach the original.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Flush() {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap is for http.ResponseController.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
