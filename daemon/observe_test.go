package daemon

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/snpd/snpd/config"
	"github.com/snpd/snpd/daemon/api"
	"github.com/snpd/snpd/daemon/launch"
	"github.com/snpd/snpd/daemon/metrics"
	"github.com/snpd/snpd/daemon/metrics/metricstest"
)

func scrapeHandler(t *testing.T, m *metrics.Metrics) metricstest.Samples {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, metrics.Path, nil))
	s, _, err := metricstest.Parse(rec.Body)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestObserverClassifiesLaunchEnds: how a launch ended decides what is counted and
// published. A policy refusal at admission and a QMP mismatch before cont are refusals
// (at points definition and runtime, every distinct rule counted, the launch by its
// first rule) and policy events; any other error is a failure at the step that
// reported it ("launch" when none did).
func TestObserverClassifiesLaunchEnds(t *testing.T) {
	srv, cleanup := testServer(t)
	defer cleanup()
	o := &observer{metrics: metrics.New(metrics.Options{Platform: "none"}), log: slogDiscard()}
	o.watch(srv.mgr)
	events, cancel := srv.mgr.Subscribe("")
	defer cancel()
	before := scrapeHandler(t, o.metrics)

	o.launchDone("a", "", time.Second, nil)
	o.launchDone("b", launch.StepAdmit, 0, fmt.Errorf("launching b: %w", &PolicyError{VM: "b", Violations: []config.Violation{
		{Rule: "vcpu.models", Value: "qemu64", Message: "no"}, {Rule: "memory.size", Value: "1", Message: "no"}}}))
	o.launchDone("c", launch.StepVerify, 0, fmt.Errorf("launching c: %w", &launch.MismatchError{Diffs: []launch.Mismatch{
		{Check: "vcpus", Detail: "vCPUs: 2, want 3"}, {Check: "pci", Detail: "PCI 1af4:1042: 0 present, want 1"},
		{Check: "pci", Detail: "PCI 1af4:1041: 2 present, want 1"}}}))
	o.launchDone("d", launch.StepSpawn, 0, errors.New("qemu exited at start"))
	o.launchDone("e", "", 0, errors.New("launching e: another launch of it is in progress"))

	got := metricstest.Delta(before, scrapeHandler(t, o.metrics), "snpd_launches_total", "snpd_policy_", "snpd_launch_duration_seconds_count")
	want := map[string]float64{
		mk("snpd_launches_total", "result", "started", "step", "", "rule", ""):                    1,
		"snpd_launch_duration_seconds_count":                                                      1,
		mk("snpd_launches_total", "result", "refused", "step", "admit", "rule", "vcpu.models"):    1,
		mk("snpd_launches_total", "result", "refused", "step", "verify", "rule", "runtime.vcpus"): 1,
		mk("snpd_launches_total", "result", "failed", "step", "spawn", "rule", ""):                1,
		mk("snpd_launches_total", "result", "failed", "step", "launch", "rule", ""):               1,
		mk("snpd_policy_refusals_total", "point", "definition"):                                   1,
		mk("snpd_policy_refusals_total", "point", "runtime"):                                      1,
		mk("snpd_policy_violations_total", "point", "definition", "rule", "vcpu.models"):          1,
		mk("snpd_policy_violations_total", "point", "definition", "rule", "memory.size"):          1,
		mk("snpd_policy_violations_total", "point", "runtime", "rule", "runtime.vcpus"):           1,
		mk("snpd_policy_violations_total", "point", "runtime", "rule", "runtime.pci"):             1,
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

	var seen []string
	for len(seen) < 2 {
		select {
		case ev := <-events:
			var rules []string
			for _, v := range ev.Violations {
				rules = append(rules, v.Rule)
			}
			seen = append(seen, fmt.Sprintf("%s %s %s %s", ev.Kind, ev.VM, ev.Point, strings.Join(rules, ",")))
			if ev.Seq == 0 || ev.At.IsZero() || ev.Reason == "" {
				t.Errorf("event without seq, time or reason: %+v", ev)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("events: got %q, want two policy events", seen)
		}
	}
	wantEv := []string{"policy b definition vcpu.models,memory.size", "policy c runtime runtime.vcpus,runtime.pci,runtime.pci"}
	if !slices.Equal(seen, wantEv) {
		t.Errorf("events %q, want %q", seen, wantEv)
	}
	select {
	case ev := <-events:
		t.Errorf("unexpected event %+v", ev)
	default:
	}
}

// TestObserverCountsStateEventsOnly: state changes count as transitions, the observer's
// own policy and attestation events do not.
// TestLaunchStepLabels: the steps package metrics gives a series from the start are
// exactly the launch package's, in order, and the label of a failure before any step.
func TestLaunchStepLabels(t *testing.T) {
	want := []string{launch.StepMeasure, launch.StepProbe, launch.StepAdmit, launch.StepSpawn, launch.StepVerify,
		launch.StepRecord, launch.StepCont, metrics.StepBeforeSteps}
	if !slices.Equal(metrics.LaunchSteps, want) {
		t.Fatalf("metrics.LaunchSteps %q, want %q", metrics.LaunchSteps, want)
	}
}

func TestObserverCountsStateEventsOnly(t *testing.T) {
	srv, cleanup := testServer(t)
	defer cleanup()
	o := &observer{metrics: metrics.New(metrics.Options{}), log: slogDiscard()}
	o.watch(srv.mgr)
	before := scrapeHandler(t, o.metrics)
	srv.mgr.mu.Lock()
	srv.mgr.publishLocked(api.Event{VM: "a", State: api.StateCrashed})
	srv.mgr.mu.Unlock()
	o.verdict("attest", "a", &api.Verdict{OK: false, Checks: []api.Check{{Name: "measurement"}, {Name: "vmpl", OK: true}}}, nil)
	o.verdict("attest", "a", nil, errors.New("the agent did not answer"))
	o.libvirtChecked("lv", &PolicyError{VM: "lv", Violations: []config.Violation{{Rule: "vcpu.models"}}})
	o.libvirtChecked("lv", errors.New("bad XML"))
	got := metricstest.Delta(before, scrapeHandler(t, o.metrics), "snpd_")
	want := map[string]float64{
		mk("snpd_vm_transitions_total", "state", "crashed"):                                     1,
		mk("snpd_attestations_total", "source", "attest", "result", "failed"):                   1,
		mk("snpd_attestations_total", "source", "attest", "result", "error"):                    1,
		mk("snpd_attestation_check_failures_total", "source", "attest", "check", "measurement"): 1,
		mk("snpd_policy_refusals_total", "point", "libvirt_hook"):                               1,
		mk("snpd_policy_violations_total", "point", "libvirt_hook", "rule", "vcpu.models"):      1,
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
	var nilObs *observer
	nilObs.libvirtChecked("x", &PolicyError{})
	nilObs.publish(api.Event{})
	if h := http.NotFoundHandler(); fmt.Sprintf("%p", nilObs.instrumentAPI(h)) != fmt.Sprintf("%p", h) {
		t.Error("a nil observer wrapped the API")
	}
}

// FuzzEventKinds feeds GET /v1/events?kind= values to its parser: an error, or a set of
// known kinds that are exactly the comma-separated items.
func FuzzEventKinds(f *testing.F) {
	for _, s := range []string{"", "state", "state,policy", "attestation,state,policy", "bogus", "state,", ",", "STATE"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, q string) {
		kinds, err := eventKinds(q)
		if err != nil {
			if !errors.Is(err, api.ErrInvalid) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("%q: error %v", q, err)
			}
			return
		}
		if q == "" {
			if kinds != nil {
				t.Fatalf("empty query gave %v", kinds)
			}
			return
		}
		for _, k := range strings.Split(q, ",") {
			if !kinds[k] || !slices.Contains(api.EventKinds, k) {
				t.Fatalf("%q: item %q accepted as %v", q, k, kinds)
			}
		}
		for k := range kinds {
			if !slices.Contains(api.EventKinds, k) {
				t.Fatalf("%q: unknown kind %q accepted", q, k)
			}
		}
	})
}
