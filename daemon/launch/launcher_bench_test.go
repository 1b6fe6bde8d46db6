package launch

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/snpd/snpd/qmp"
)

// BenchmarkLaunchOverhead measures, side by side in one run, the time from "start" to
// "running" through Launcher.Launch (seal, measure, probe-cached checks, sockets, start
// paused, QMP verification, cont) and through starting the very same QEMU argv directly
// and sending cont over QMP; plus the firmware measurement alone. It reports medians:
// launch-ms, direct-ms, measure-ms and overhead-ms, the median over pairs of
// launch - direct - measure (the launch path's own cost; target <= 30 ms). The timed
// launches are cold: the Launcher's seal and digest caches (cache.go) are emptied
// first, so each one seals and measures as the first launch of an image does;
// cached-ms is the same launch again with them warm (a second guest from the same
// files). scripts/bench-launch.sh prints them as BENCH lines.
func BenchmarkLaunchOverhead(b *testing.B) {
	ltNeed(b)
	l := &Launcher{QEMU: ltQEMU, Platform: PlatformNone, RuntimeDir: ltRuntimeDir(b)}
	vm := ltVM("bench")
	ctx := context.Background()
	// Warm the cached probes (QEMU capabilities, KVM model check) outside the timing:
	// they run once per snpd process, not per launch.
	warm, err := l.Launch(ctx, vm, LaunchHooks{})
	if err != nil {
		b.Fatal(err)
	}
	warm.Kill()
	b.Logf("accelerator %s %s", warm.Record.Accel, warm.Record.AccelNote)

	var launch, direct, measure, cached []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		l.seals.Close()
		l.measured = measureCache{}
		b.StartTimer()
		t0 := time.Now()
		inst, err := l.Launch(ctx, vm, LaunchHooks{})
		if err != nil {
			b.Fatal(err)
		}
		launch = append(launch, time.Since(t0))
		b.StopTimer()
		inst.Kill()
		inst.QMP.Close()

		d, m := benchDirect(b, l, vm.Name+"-direct", ctx)
		direct = append(direct, d)
		measure = append(measure, m)

		t1 := time.Now()
		inst, err = l.Launch(ctx, vm, LaunchHooks{})
		if err != nil {
			b.Fatal(err)
		}
		cached = append(cached, time.Since(t1))
		inst.Kill()
		inst.QMP.Close()
		b.StartTimer()
	}
	b.StopTimer()
	med := func(v []time.Duration) float64 {
		s := append([]time.Duration(nil), v...)
		sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
		return float64(s[len(s)/2]) / float64(time.Millisecond)
	}
	// Paired: each launch is compared with the direct start and measurement right after
	// it, so a slow moment of the machine affects both sides of one pair.
	paired := make([]time.Duration, len(launch))
	for i := range launch {
		paired[i] = launch[i] - direct[i] - measure[i]
	}
	b.ReportMetric(med(launch), "launch-ms")
	b.ReportMetric(med(direct), "direct-ms")
	b.ReportMetric(med(measure), "measure-ms")
	b.ReportMetric(med(paired), "overhead-ms")
	b.ReportMetric(med(cached), "cached-ms")
}

// benchDirect starts the argv Launch would use, by hand: QEMU, dial QMP, cont, check
// running. Spec, sockets and sealing are prepared outside the timing. It also times the
// measurement of the spec's firmware.
func benchDirect(b *testing.B, l *Launcher, name string, ctx context.Context) (startToRunning, measureTime time.Duration) {
	vm := ltVM(name)
	spec, rec, err := l.Prepare(ctx, vm)
	if err != nil {
		b.Fatal(err)
	}
	defer spec.Close()
	t0 := time.Now()
	if _, err := measureSpec(spec); err != nil {
		b.Fatal(err)
	}
	measureTime = time.Since(t0)

	dir := l.VMDir(name)
	os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(dir)
	spec.Runtime.Dir = dir
	if spec.Runtime.QMP, err = listenUnixFile(filepath.Join(dir, QMPSocketName)); err != nil {
		b.Fatal(err)
	}
	defer spec.Runtime.QMP.Close()
	if spec.Runtime.Agent, err = listenUnixFile(filepath.Join(dir, AgentSocketName)); err != nil {
		b.Fatal(err)
	}
	defer spec.Runtime.Agent.Close()
	args, extra := BuildArgv(spec)
	_ = rec

	t0 = time.Now()
	inst, _, err := StartProcess(l.QEMU, args, extra, filepath.Join(dir, StderrName))
	if err != nil {
		b.Fatal(err)
	}
	defer inst.Kill()
	c, err := qmp.Dial(ctx, filepath.Join(dir, QMPSocketName), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	if err := c.Cont(ctx); err != nil {
		b.Fatal(err)
	}
	if st, err := c.QueryStatus(ctx); err != nil || !st.Running {
		b.Fatalf("direct: %+v %v", st, err)
	}
	return time.Since(t0), measureTime
}
