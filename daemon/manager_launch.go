package daemon

import (
	"context"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/snpd/snpd/config"
	"github.com/snpd/snpd/daemon/api"
	"github.com/snpd/snpd/daemon/launch"
)

// instanceProc adapts a launched *Instance (snpd's child) to vmProcess.
type instanceProc struct{ inst *launch.Instance }

func (p instanceProc) PID() int              { return p.inst.PID }
func (p instanceProc) Done() <-chan struct{} { return p.inst.Done() }
func (p instanceProc) Kill() error           { return p.inst.Kill() }
func (p instanceProc) Stop(ctx context.Context, grace time.Duration) error {
	return p.inst.Stop(ctx, grace)
}

func (p instanceProc) Exit() api.ExitStatus {
	ex := p.inst.Exit()
	out := api.ExitStatus{Known: ex.Known, Detail: "waited for by snpd (its parent)"}
	if !ex.Known {
		out.Detail = notChildDetail
		return out
	}
	if ex.Signal != "" {
		out.Signal = signalName(ex.Signal)
	} else {
		c := ex.Code
		out.Code = &c
	}
	if n := len(ex.StderrTail); n > 0 {
		out.Detail += "; last stderr line: " + ex.StderrTail[n-1]
	}
	return out
}

// signalName maps Go's signal description ("killed") to its name ("SIGKILL").
func signalName(desc string) string {
	for s := unix.Signal(1); s < 65; s++ {
		if s.String() == desc {
			if n := unix.SignalName(s); n != "" {
				return n
			}
		}
	}
	return strings.ToUpper(desc)
}

// launcherStart adapts Launcher.Launch to the Manager's startFunc; admit (nil: none) is
// the host policy check.
//
// The CPU-bound part of a launch (sealing and hashing the boot files, computing the
// launch digest with its parallel page hashing, the policy's firmware facts) runs for
// one VM at a time: it ends when Admit returns, before QEMU starts, so QEMU start-up and
// QMP verification of many VMs still overlap. Without this, concurrent starts fill Go's
// run queues with hashing goroutines and API requests wait behind them for a P
// (scheduler delay seen in a runtime trace; scripts/bench-service.sh measures it).
func launcherStart(l *launch.Launcher, admit func(*config.VM, *launch.Spec, *api.LaunchRecord) error) startFunc {
	measuring := make(chan struct{}, 1)
	return func(ctx context.Context, vm *config.VM, sh startHooks) (vmProcess, error) {
		select {
		case measuring <- struct{}{}:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		var once sync.Once
		release := func() { once.Do(func() { <-measuring }) }
		defer release()
		hooks := launch.LaunchHooks{Spawned: sh.Spawned, BeforeCont: sh.BeforeCont, DiskOwner: sh.DiskOwner, DiskRoots: sh.DiskRoots, Admit: func(vm *config.VM, spec *launch.Spec, rec *api.LaunchRecord) error {
			defer release()
			if admit != nil {
				return admit(vm, spec, rec)
			}
			return nil
		}}
		inst, err := l.Launch(ctx, vm, hooks)
		if err != nil {
			return nil, err
		}
		return instanceProc{inst}, nil
	}
}
