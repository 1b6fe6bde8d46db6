package launch

import (
	"context"
	"strings"
	"time"
)

// The steps of a launch, in order, as Launch reports them to a Trace.
const (
	// StepMeasure seals the boot files into memfds, computes the expected launch digest
	// and builds the ID block (Prepare).
	StepMeasure = "measure"
	// StepProbe probes the QEMU binary (cached after the first launch) and, on
	// sev-snp, checks it can launch SNP guests.
	StepProbe = "probe"
	// StepAdmit is LaunchHooks.Admit: the host policy.
	StepAdmit = "admit"
	// StepSpawn creates the runtime directory and sockets, starts QEMU paused and
	// connects to its monitor.
	StepSpawn = "spawn"
	// StepVerify checks the paused machine over QMP against the spec.
	StepVerify = "verify"
	// StepRecord is LaunchHooks.BeforeCont: the durable launch record.
	StepRecord = "record"
	// StepCont resumes the guest and checks that it runs.
	StepCont = "cont"
)

// Trace observes a launch, as net/http/httptrace observes a request: attach it to the
// context given to Launcher.Launch with WithTrace. Nil functions are skipped.
type Trace struct {
	// StepDone is called on the launching goroutine as each step ends, with how long it
	// took and its error (nil: it succeeded; the launch stops at the first error). Steps
	// the launch did not reach are not reported.
	StepDone func(step string, took time.Duration, err error)
}

type traceKey struct{}

// WithTrace returns ctx carrying t for Launcher.Launch.
func WithTrace(ctx context.Context, t *Trace) context.Context {
	return context.WithValue(ctx, traceKey{}, t)
}

func traceFrom(ctx context.Context) *Trace {
	t, _ := ctx.Value(traceKey{}).(*Trace)
	return t
}

// done reports step, begun at since, to t (nil: nothing).
func (t *Trace) done(step string, since time.Time, err error) {
	if t != nil && t.StepDone != nil {
		t.StepDone(step, time.Since(since), err)
	}
}

// Mismatch is one difference between the paused machine and the spec.
type Mismatch struct {
	// Check names what was compared: "status", "sev" (SEV type and SNP policy),
	// "snp-object" (a sev-snp-guest property), "vcpus", "memory" or "pci".
	Check string
	// Detail says how it differs.
	Detail string
}

// MismatchError is the QMP check before cont finding that the paused machine is not
// the one the spec describes; the launch kills QEMU. It lists every difference.
type MismatchError struct {
	Diffs []Mismatch
}

func (e *MismatchError) Error() string {
	ds := make([]string, len(e.Diffs))
	for i, d := range e.Diffs {
		ds[i] = d.Detail
	}
	return "the paused machine differs from the spec: " + strings.Join(ds, "; ")
}
