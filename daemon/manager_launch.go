package daemon

import (
	"context"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/snpd/snpd/config"
	"github.com/snpd/snpd/daemon/api"
)

// instanceProc adapts a launched *Instance (snpd's child) to vmProcess.
type instanceProc struct{ inst *Instance }

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
func launcherStart(l *Launcher, admit func(*config.VM, *Spec, *api.LaunchRecord) error) startFunc {
	return func(ctx context.Context, vm *config.VM, beforeCont func(*api.LaunchRecord) error) (vmProcess, error) {
		inst, err := l.Launch(ctx, vm, LaunchHooks{Admit: admit, BeforeCont: beforeCont})
		if err != nil {
			return nil, err
		}
		return instanceProc{inst}, nil
	}
}
