package daemon

import (
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/snpd/snpd/daemon/api"
	"github.com/snpd/snpd/daemon/launch"
)

// stormRounds is how many times TestCrashStorm SIGKILLs snpd.
const stormRounds = 30

// TestCrashStorm SIGKILLs snpd 30 times while a client defines, starts, stops, kills and
// undefines VMs against it, each kill at a random moment (during a launch, a stop, a
// store write...). Afterwards, with one more snpd: no acknowledged definition or
// undefinition is lost, no QEMU runs that snpd does not account for (no orphan), and
// every VM starts.
func TestCrashStorm(t *testing.T) {
	needQEMU(t)
	e := newTestEnv(t, "")
	names := []string{"s0", "s1", "s2", "s3"}
	rng := rand.New(rand.NewPCG(1, uint64(time.Now().UnixNano())))

	// want[name]: true/false after an acknowledged define/undefine; absent while an
	// unacknowledged one (cut by a kill) leaves it open.
	var mu sync.Mutex
	want := map[string]bool{}
	var acked, ops int
	// set records the outcome of a define or undefine: err nil is acknowledged; a
	// request that never reached snpd (refused: it was dead) changed nothing; any other
	// error (cut by the kill) leaves the outcome open.
	set := func(name string, defined bool, err error) {
		if err != nil && strings.Contains(err.Error(), "snpd is not running") { // refused at connect
			return
		}
		mu.Lock()
		defer mu.Unlock()
		ops++
		if ack := err == nil; ack {
			acked++
			want[name] = defined
		} else {
			delete(want, name)
		}
	}
	allPIDs := map[int]bool{}
	t.Cleanup(func() {
		for pid := range allPIDs {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	// check runs on every snpd of the storm before the client starts: the definitions
	// the acknowledged operations left, and no QEMU snpd does not account for.
	var checked, lost, orphans int
	check := func(c *api.Client) []api.VMSummary {
		t.Helper()
		waitReattached(t, c)
		list, err := c.List(ctxT(t, 10*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		present := map[string]api.VMSummary{}
		for _, v := range list {
			present[v.Name] = v
		}
		for name, defined := range want {
			checked++
			if _, ok := present[name]; ok != defined {
				lost++
				t.Errorf("%s: the last acknowledged operation left it defined=%v, but after the restart defined=%v", name, defined, ok)
			}
		}
		// Every QEMU of this snpd's runtime directory is the process of a VM it
		// reports running or stopping.
		found, err := launch.FindQEMUs(e.RuntimeDir)
		if err != nil {
			t.Fatal(err)
		}
		for name, pids := range found {
			for _, pid := range pids {
				if v, ok := present[name]; !ok || v.PID != pid || v.State.Terminal() {
					orphans++
					t.Errorf("orphan qemu %d of %s (listed as %+v)", pid, name, v)
				}
			}
		}
		return list
	}
	for round := 0; round < stormRounds; round++ {
		d := startDaemon(t, e)
		c := d.Client
		check(c)
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		for w := 0; w < 2; w++ {
			seed := rng.Uint64()
			wg.Go(func() {
				r := rand.New(rand.NewPCG(seed, uint64(w)))
				for ctx.Err() == nil {
					name := names[r.IntN(len(names))]
					rctx, rcancel := context.WithTimeout(ctx, 30*time.Second)
					switch op := r.IntN(10); {
					case op < 3:
						_, err := c.Define(rctx, api.DefineRequest{File: name + ".toml", TOML: vmTOML(name, "")})
						if !errors.Is(err, api.ErrConflict) { // already defined: nothing changed
							set(name, true, err)
						}
					case op < 6:
						if info, err := c.Start(rctx, name); err == nil {
							mu.Lock()
							allPIDs[info.PID] = true
							mu.Unlock()
						}
					case op < 7:
						_, _ = c.Stop(rctx, name, api.StopRequest{TimeoutSeconds: 0.5})
					case op < 8:
						_, _ = c.Kill(rctx, name)
					default:
						err := c.Undefine(rctx, name)
						if !errors.Is(err, api.ErrConflict) && !errors.Is(err, api.ErrNotFound) { // else nothing changed
							set(name, false, err)
						}
					}
					rcancel()
				}
			})
		}
		time.Sleep(time.Duration(200+rng.IntN(1300)) * time.Millisecond)
		d.kill9()
		cancel()
		wg.Wait()
	}

	d := startDaemon(t, e)
	c := d.Client
	list := check(c)
	t.Logf("%d kills, %d define/undefine attempts reached snpd (%d acknowledged); %d definitions checked across the restarts: %d lost; %d orphan qemus",
		stormRounds, ops, acked, checked, lost, orphans)

	// Every VM starts (or already runs) and can be killed.
	for _, v := range list {
		if v.State != api.StateRunning {
			info, err := c.Start(ctxT(t, time.Minute), v.Name)
			if err != nil {
				t.Errorf("%s (%s) does not start after the storm: %v", v.Name, v.State, err)
				continue
			}
			t.Cleanup(func() { _ = syscall.Kill(info.PID, syscall.SIGKILL) })
		}
		if _, err := c.Kill(ctxT(t, 30*time.Second), v.Name); err != nil {
			t.Errorf("killing %s: %v", v.Name, err)
		}
	}
}
