package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/snpd/snpd/config"
	"github.com/snpd/snpd/daemon/api"
	"github.com/snpd/snpd/daemon/guestchan"
	"github.com/snpd/snpd/daemon/launch"
	"github.com/snpd/snpd/daemon/metrics"
	"github.com/snpd/snpd/daemon/store"
)

// observer is where snpd watches itself: it is told how launches, policy checks and
// attestations end and what the API answers, and feeds that to the metrics (when
// [metrics] is configured) and to the event stream (always: policy refusals and
// attestation verdicts are events next to state changes). It also serves the metrics
// listener. A nil *observer does nothing.
type observer struct {
	metrics *metrics.Metrics // nil: metrics not configured
	log     *slog.Logger
	mgr     *Manager // the event stream's owner; set by watch

	ln        net.Listener // the metrics listener (nil: none)
	srv       *http.Server
	closeOnce sync.Once
}

// newObserver prepares the metrics of cfg.Metrics: when configured, it binds the
// metrics listener right away (like the API socket, before the store is touched) so a
// bad address or a live snpd on the socket stops snpd before it does anything. A unix
// socket gets mode 0660 and the API socket's group (readGID, else operateGID).
func newObserver(cfg *config.Daemon, operateGID, readGID int, log *slog.Logger) (*observer, error) {
	o := &observer{log: log}
	ep, ok, err := cfg.Metrics.Endpoint()
	if err != nil || !ok {
		return o, err
	}
	switch ep.Network {
	case "unix":
		gid := readGID
		if gid < 0 {
			gid = operateGID
		}
		o.ln, err = listenAPI(ep.Address, gid)
	default:
		o.ln, err = net.Listen(ep.Network, ep.Address)
	}
	if err != nil {
		return nil, fmt.Errorf("listening for metrics: %w", err)
	}
	o.metrics = metrics.New(metrics.Options{Platform: cfg.Platform, Version: Version, PerVM: cfg.Metrics.PerVM, Log: log})
	return o, nil
}

// addr is the metrics listener's address ("" when metrics are off).
func (o *observer) addr() string {
	if o == nil || o.ln == nil {
		return ""
	}
	return o.ln.Addr().String()
}

// watch makes o see every event m publishes (state changes count in
// snpd_vm_transitions_total) and publish its own through m. Call it before Reattach, so
// the guests found dead while snpd was down are counted.
func (o *observer) watch(m *Manager) {
	if o == nil {
		return
	}
	o.mgr = m
	m.mu.Lock()
	m.onEvent = func(ev api.Event) {
		if ev.KindName() == api.EventState {
			o.metrics.Transition(ev.State)
		}
	}
	m.mu.Unlock()
}

// publish sends ev to the event stream's subscribers.
func (o *observer) publish(ev api.Event) {
	if o == nil || o.mgr == nil {
		return
	}
	ev.At = time.Now().UTC()
	o.mgr.mu.Lock()
	o.mgr.publishLocked(ev)
	o.mgr.mu.Unlock()
}

// attach gives the metrics their scrape-time sources and the what-happened-at-start
// figures, has the Attestor report its verdicts here, and starts serving the metrics
// listener until ctx ends (snpd is stopping: no scrape then reads a closing store) or
// close.
func (o *observer) attach(ctx context.Context, st *store.Store, sessions *guestchan.GuestSessions, att *Attestor, reattach *Reattaching) {
	if o == nil {
		return
	}
	if att != nil {
		att.Observe = o.verdict
	}
	if o.metrics == nil {
		return
	}
	// The adoption of the guests found at start goes on while snpd serves: the figures
	// are set once it is done (zero until then).
	o.metrics.Reattached(nil)
	go func() {
		select {
		case <-reattach.Done():
		case <-ctx.Done():
			return
		}
		res, _ := reattach.Results()
		states := make([]api.State, len(res))
		for i, r := range res {
			states[i] = r.State
		}
		o.metrics.Reattached(states)
	}()
	src := metrics.Sources{
		Store: func() (metrics.StoreStats, error) {
			s, err := st.Stats()
			return metrics.StoreStats{SizeBytes: s.SizeBytes, LastWrite: s.LastWrite}, err
		},
	}
	if m := o.mgr; m != nil {
		src.VMs = func() ([]metrics.VM, error) {
			l, err := m.List()
			out := make([]metrics.VM, len(l))
			for i, v := range l {
				out[i] = metrics.VM{Name: v.Name, State: v.State}
			}
			return out, err
		}
	}
	if sessions != nil {
		src.GuestSessions = sessions.Counts
	}
	if att != nil && att.Cache != nil {
		src.Certs = func() ([]metrics.Cert, error) {
			l, err := att.Cache.List()
			out := make([]metrics.Cert, len(l))
			for i, c := range l {
				out[i] = metrics.Cert{Kind: string(c.Kind), NotAfter: c.NotAfter}
			}
			return out, err
		}
	}
	o.metrics.SetSources(src)
	o.srv = &http.Server{
		Handler:           o.metrics.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(o.log.Handler(), slog.LevelWarn),
	}
	go func() {
		if err := o.srv.Serve(o.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			o.log.Error("serving metrics", "err", err)
		}
	}()
	context.AfterFunc(ctx, o.close)
	o.log.Info("serving metrics", "address", o.addr(), "path", metrics.Path)
}

// close stops the metrics listener (a unix socket file is removed); it may be called
// more than once.
func (o *observer) close() {
	if o == nil || o.ln == nil {
		return
	}
	o.closeOnce.Do(func() {
		if o.srv == nil {
			o.ln.Close()
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := o.srv.Shutdown(ctx); err != nil {
			o.srv.Close()
		}
	})
}

// instrumentAPI counts the API's requests (the event stream's duration is no latency).
func (o *observer) instrumentAPI(h http.Handler) http.Handler {
	if o == nil {
		return h
	}
	return o.metrics.InstrumentAPI(h, "GET /v1/events")
}

// wrapStart observes the launches of start: each step's duration, and how the launch
// ended (started, refused by the policy at admission or by the QMP check, failed at a
// step); refusals are also events.
func (o *observer) wrapStart(start startFunc) startFunc {
	if o == nil {
		return start
	}
	return func(ctx context.Context, vm *config.VM, h startHooks) (vmProcess, error) {
		failed := ""
		tr := &launch.Trace{StepDone: func(step string, took time.Duration, err error) {
			if err != nil {
				failed = step
				return
			}
			o.metrics.LaunchStep(step, took)
		}}
		t0 := time.Now()
		proc, err := start(launch.WithTrace(ctx, tr), vm, h)
		o.launchDone(vm.Name, failed, time.Since(t0), err)
		return proc, err
	}
}

// launchDone records how a launch of vm ended; failedStep is the step that reported the
// error ("" when it came before any step, e.g. another launch of the VM was running).
func (o *observer) launchDone(vm, failedStep string, took time.Duration, err error) {
	var pe *PolicyError
	var me *launch.MismatchError
	switch {
	case err == nil:
		o.metrics.LaunchStarted(took)
	case errors.As(err, &pe):
		o.refused(metrics.PointDefinition, launch.StepAdmit, vm, APIViolations(pe.Violations), pe.Error())
	case errors.As(err, &me):
		var vs []api.Violation
		for _, d := range me.Diffs {
			vs = append(vs, api.Violation{Rule: "runtime." + d.Check, Message: d.Detail})
		}
		o.refused(metrics.PointRuntime, launch.StepVerify, vm, vs, me.Error())
	default:
		if failedStep == "" {
			failedStep = metrics.StepBeforeSteps
		}
		o.metrics.LaunchFailed(failedStep)
	}
}

// refused counts a policy refusal at point (by every distinct rule broken; a launch
// refused at step by its first rule) and publishes it.
func (o *observer) refused(point, step, vm string, vs []api.Violation, reason string) {
	var rules []string
	for _, v := range vs {
		if !slices.Contains(rules, v.Rule) {
			rules = append(rules, v.Rule)
		}
	}
	if step != "" && len(rules) > 0 {
		o.metrics.LaunchRefused(step, rules[0])
	}
	o.metrics.PolicyRefusal(point, rules)
	o.publish(api.Event{Kind: api.EventPolicy, VM: vm, Point: point, Violations: vs, Reason: reason})
}

// libvirtChecked records the libvirt hook's check of domain: a refusal is counted and
// published; other outcomes are the API metrics' business.
func (o *observer) libvirtChecked(domain string, err error) {
	var pe *PolicyError
	if o == nil || !errors.As(err, &pe) {
		return
	}
	o.refused(metrics.PointLibvirtHook, "", domain, APIViolations(pe.Violations), pe.Error())
}

// verdict is the Attestor's Observe: a verdict is counted (with its failed checks) and
// published; an error without a verdict is only counted.
func (o *observer) verdict(source, vm string, v *api.Verdict, err error) {
	if v == nil || err != nil {
		o.metrics.Attestation(source, metrics.VerdictError, nil)
		return
	}
	var failed []string
	for _, c := range v.Checks {
		if !c.OK {
			failed = append(failed, c.Name)
		}
	}
	result := metrics.VerdictOK
	if !v.OK {
		result = metrics.VerdictFailed
	}
	o.metrics.Attestation(source, result, failed)
	ok := v.OK
	o.publish(api.Event{Kind: api.EventAttestation, VM: vm, Source: source, OK: &ok, Failed: failed})
}
