package daemon

import (
	"context"
	"fmt"
	"io"
	"net/http"
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

	"github.com/snpd/snpd/daemon/api"
	"github.com/snpd/snpd/daemon/store"
)

// BenchmarkStart20WhileListing starts 20 small VMs (64 MiB) concurrently through snpd
// on platform "none" with the real QEMU while clients list VMs in a loop, and reports
// the list latency percentiles while the starts run: over the API (api.Client) and as
// an operator sees it (`snpctl vm list`, a process per call). It prints BENCH lines
// (scripts/bench-service.sh collects them). One iteration is the whole scenario, run
// once per variant, side by side:
//
//   - flat, qemu_nice=0 and flat, qemu_nice default (10): snpd (a re-executed test
//     binary) and its QEMUs stay in the CPU cgroup the bench started in. snpd runs in a
//     session of its own (setsid), as systemd starts every service, and so, outside any
//     cgroup CPU controller, in an autogroup of its own; so does each QEMU: 20 guests
//     get 20 CPU shares (weighted by qemu_nice) against the one of snpd and the one of
//     the operator's session (the bench driver and every snpctl it spawns).
//   - flat, qemu_nice default, metrics: the same with [metrics] on a unix socket and
//     per_vm, the API instrumented, and a scraper reading /metrics every second (a
//     Prometheus scrapes every 15 to 60 s): what metrics cost the API, side by side with
//     "flat, qemu_nice default".
//   - deployed, qemu_nice default: the layout of a host running systemd/snpd.service.
//     A fresh CPU cgroup stands in for snpd.service: a child of the bench's own cgroup
//     (on cgroup v2, when that cgroup holds processes and so cannot pass the cpu
//     controller down, a top-level cgroup beside system.slice and user.slice instead),
//     at the default weight (v1 cpu.shares 1024, v2 cpu.weight 100: systemd's default
//     CPUWeight). The snpd process is moved into it (cgroup.procs) after its API
//     answers and before any VM is defined, so snpd and every QEMU it forks run in it
//     (KillMode=process keeps them there in production too). The bench driver is never
//     moved, so the API client and every snpctl process it spawns run in the cgroup the
//     bench started in, outside snpd's from their first instruction, as an operator's
//     session is. Inside a CPU cgroup the kernel ignores autogroups, so all guests share
//     one weight against snpctl's session, and snpd shares that same weight with its
//     guests. The bench reads /proc/PID/cgroup of snpd, every QEMU and every snpctl,
//     prints where they ran, and fails rather than print a deployed figure if any is in
//     the wrong cgroup. If no cgroup can be made (no cpu controller, not root) it prints
//     why and measures only the flat layout. The cgroup is removed afterwards.
//
// The variants take turns round by round, in order in odd rounds and in reverse in even
// ones (A B C, C B A, A B C...), so that a change in the host's load during the run
// falls on all of them alike.
//
// Both samplers are closed loops: snpctl runs back to back, the API client pauses 2 ms
// between calls. Spaced-out calls see a heavier tail on a host this oversubscribed:
// with SNPD_BENCH_THINK=20ms (a pause after each snpctl call) and SNPD_BENCH_NOAPI=1
// (no API sampler), 12 rounds in the deployed layout gave p99 62-75 ms over 300-360
// calls where the closed loop gave 15.8 ms over 3218 (the kernel's scheduling of a
// session that wakes from idle among 20 busy TCG guests on 2 CPUs; see the issue notes).
func BenchmarkStart20WhileListing(b *testing.B) {
	needQEMUBinary(b) // no KVM needed: the guests run under TCG where KVM is missing
	var snpctl string
	if p := os.Getenv("SNPCTL"); p != "" {
		snpctl = p
	}
	type variant struct {
		name, tag, config string
		deployed          bool // snpd and its QEMUs in a CPU cgroup of their own
	}
	variants := []variant{
		{name: "flat, qemu_nice=0 (qemu at snpd's priority)", tag: "nice0", config: "qemu_nice = 0\n"},
		{name: "flat, qemu_nice default (10)", tag: "default"},
		{name: "flat, qemu_nice default (10), metrics on a unix socket with per_vm, scraped every 1 s", tag: "metrics",
			config: "[metrics]\nlisten = \"unix:run/metrics.sock\"\nper_vm = true\n"},
	}
	// SNPD_BENCH_NICE="5,19" adds flat variants with those qemu_nice values (exploration).
	if extra := os.Getenv("SNPD_BENCH_NICE"); extra != "" {
		for _, v := range strings.Split(extra, ",") {
			variants = append(variants, variant{name: "flat, qemu_nice=" + v, tag: "nice" + v, config: "qemu_nice = " + v + "\n"})
		}
	}
	// SNPD_BENCH_DEPLOYED_NICE="0,19" adds deployed variants with those qemu_nice values.
	if extra := os.Getenv("SNPD_BENCH_DEPLOYED_NICE"); extra != "" {
		for _, v := range strings.Split(extra, ",") {
			variants = append(variants, variant{name: "deployed, qemu_nice=" + v, tag: "deployed-nice" + v,
				config: "qemu_nice = " + v + "\n", deployed: true})
		}
	}
	variants = append(variants, variant{name: "deployed (snpd and its QEMUs in a CPU cgroup standing in for snpd.service, snpctl outside), qemu_nice default (10)",
		tag: "deployed", deployed: true})
	// SNPD_BENCH_ONLY="default,deployed" runs only the variants with those tags (exploration,
	// e.g. under perf sched record); the ratios need nice0, default and deployed.
	if only := os.Getenv("SNPD_BENCH_ONLY"); only != "" {
		variants = slices.DeleteFunc(variants, func(v variant) bool { return !slices.Contains(strings.Split(only, ","), v.tag) })
	}
	// Each variant runs the scenario `rounds` times and pools the samples, so that a
	// p99 rests on several hundred calls, not on the two or three slowest of one round.
	rounds := 5
	if n, err := strconv.Atoi(os.Getenv("SNPD_BENCH_ROUNDS")); err == nil && n > 0 {
		rounds = n
	}
	for it := 0; it < b.N; it++ {
		res := map[string]start20Result{}
		cgs := map[string]*benchCgroup{}
		var run []variant
		for _, v := range variants {
			if v.deployed {
				cg, err := newBenchCgroup(fmt.Sprintf("%d-%s", it, v.tag))
				if err != nil {
					fmt.Printf("== %s\nnot measured: no CPU cgroup for snpd: %v\n", v.name, err)
					continue
				}
				// Registered before startDaemon's own cleanup, so it runs after snpd
				// has stopped (cleanups run last-in first-out).
				b.Cleanup(func() {
					if err := cg.remove(10 * time.Second); err != nil {
						b.Error(err)
					}
				})
				cgs[v.tag] = cg
			}
			run = append(run, v)
		}
		rs := map[string][]start20Result{}
		loads := map[string][]string{}
		for i := range rounds {
			order := slices.Clone(run)
			if i%2 == 1 {
				slices.Reverse(order)
			}
			for _, v := range order {
				cli := snpctl
				r, err := start20WhileListing(b, v.config, v.tag, cli, cgs[v.tag], i == 0)
				for retry := 1; err != nil && retry <= maxRoundRetries; retry++ {
					// A start that failed (on a loaded host without KVM, a TCG QEMU that
					// does not greet QMP within 10 s) spoils the round's load: run it again.
					fmt.Printf("round %d of %s discarded, run again: %v\n", i+1, v.tag, err)
					r, err = start20WhileListing(b, v.config, v.tag, cli, cgs[v.tag], false)
				}
				if err != nil {
					b.Fatalf("round %d of %s: %v", i+1, v.tag, err)
				}
				rs[v.tag] = append(rs[v.tag], r)
				load, _ := os.ReadFile("/proc/loadavg")
				loads[v.tag] = append(loads[v.tag], strings.Fields(string(load) + " -")[0])
			}
		}
		for _, v := range run {
			fmt.Printf("== %s\n", v.name)
			r := pool(rs[v.tag])
			res[v.tag] = r
			fmt.Printf("host load average (1 min) after each round: %s\n", strings.Join(loads[v.tag], " "))
			r.print()
		}
		base, def := res["nice0"], res["default"]
		dep, haveDep := res["deployed"]
		b.ReportMetric(def.apiP99, "api-list-p99-ms")
		b.ReportMetric(def.wall.Seconds(), "start20-s")
		if _, ok := res["nice0"]; ok {
			fmt.Printf("ratios flat qemu_nice=0 / flat default: API list p99 %.1fx, snpctl vm list p99 %.1fx, start wall %.2fx\n",
				base.apiP99/def.apiP99, base.cliP99/max(def.cliP99, 1e-3), base.wall.Seconds()/def.wall.Seconds())
		}
		if haveDep {
			fmt.Printf("ratios flat default / deployed: API list p99 %.1fx, snpctl vm list p99 %.1fx, start wall %.2fx\n",
				def.apiP99/dep.apiP99, def.cliP99/max(dep.cliP99, 1e-3), def.wall.Seconds()/dep.wall.Seconds())
		}
		met, haveMet := res["metrics"]
		if haveMet {
			fmt.Printf("ratios flat default with metrics / without: API list p99 %.2fx, p50 %.2fx, snpctl vm list p99 %.2fx, start wall %.2fx\n",
				met.apiP99/def.apiP99, met.apiP50/def.apiP50, met.cliP99/max(def.cliP99, 1e-3), met.wall.Seconds()/def.wall.Seconds())
		}
		fmt.Printf("BENCH service_start20_ok %d count >=20\n", def.ok)
		fmt.Printf("BENCH service_start20_wall %.2f s -\n", def.wall.Seconds())
		fmt.Printf("BENCH service_api_list_p99_during_start20 %.2f ms <=20\n", def.apiP99)
		if snpctl != "" {
			fmt.Printf("BENCH service_snpctl_list_p99_during_start20 %.2f ms <=20\n", def.cliP99)
		}
		if haveMet {
			fmt.Printf("BENCH service_api_list_p99_metrics %.2f ms <=20\n", met.apiP99)
			fmt.Printf("BENCH service_api_list_p99_metrics_ratio %.2f x <=1.25\n", met.apiP99/def.apiP99)
			fmt.Printf("BENCH service_metrics_scrape_p99 %.2f ms -\n", met.scrapeP99)
		}
		if haveDep {
			fmt.Printf("BENCH service_start20_ok_deployed %d count >=20\n", dep.ok)
			fmt.Printf("BENCH service_start20_wall_deployed %.2f s -\n", dep.wall.Seconds())
			fmt.Printf("BENCH service_api_list_p99_deployed %.2f ms <=20\n", dep.apiP99)
			if snpctl != "" {
				fmt.Printf("BENCH service_snpctl_list_p99_deployed %.2f ms <=20\n", dep.cliP99)
			}
		}
	}
}

// maxRoundRetries is how many times a round whose starts did not all succeed is run
// again before the benchmark fails.
const maxRoundRetries = 3

// start20Result is one run of the start20WhileListing scenario, or several pooled.
type start20Result struct {
	rounds                 int
	ok                     int           // starts that succeeded (pooled: the fewest of a round)
	wall                   time.Duration // the 20 starts (pooled: the median round)
	apiLat, cliLat         []time.Duration
	apiN, cliN             int
	apiP50, apiP99, apiMax float64 // ms
	cliP50, cliP99, cliMax float64 // ms; cliN 0: snpctl not measured
	// scrapeLat are the GET /metrics latencies (metrics variant only); scrapeP99 in ms.
	scrapeLat []time.Duration
	scrapeP99 float64
	// snpd's threads while the starts ran, from /proc/PID/task/*/schedstat (threads
	// alive at both reads): time on a CPU and time runnable but waiting for one
	// (pooled: summed over the rounds).
	snpdRun, snpdWait time.Duration
}

// percentiles fills the figures from the latency samples.
func (r *start20Result) percentiles() {
	p := func(l []time.Duration, q float64) float64 {
		if len(l) == 0 {
			return 0
		}
		s := slices.Clone(l)
		slices.Sort(s)
		return float64(s[min(len(s)-1, int(q*float64(len(s))))].Microseconds()) / 1000
	}
	r.apiN, r.cliN = len(r.apiLat), len(r.cliLat)
	r.apiP50, r.apiP99, r.apiMax = p(r.apiLat, 0.5), p(r.apiLat, 0.99), p(r.apiLat, 1)
	r.cliP50, r.cliP99, r.cliMax = p(r.cliLat, 0.5), p(r.cliLat, 0.99), p(r.cliLat, 1)
	r.scrapeP99 = p(r.scrapeLat, 0.99)
}

// pool merges rounds of one variant: all latency samples together.
func pool(rs []start20Result) start20Result {
	out := start20Result{rounds: len(rs), ok: rs[0].ok}
	var walls []time.Duration
	for _, r := range rs {
		out.ok = min(out.ok, r.ok)
		walls = append(walls, r.wall)
		out.apiLat = append(out.apiLat, r.apiLat...)
		out.cliLat = append(out.cliLat, r.cliLat...)
		out.scrapeLat = append(out.scrapeLat, r.scrapeLat...)
		out.snpdRun += r.snpdRun
		out.snpdWait += r.snpdWait
	}
	slices.Sort(walls)
	out.wall = walls[len(walls)/2]
	out.percentiles()
	return out
}

func (r start20Result) print() {
	fmt.Printf("%d rounds of 20 concurrent starts: the fewest ok in a round %d, median round %.2f s\n", r.rounds, r.ok, r.wall.Seconds())
	fmt.Printf("API list while starting: %d calls, p50 %.2f ms, p99 %.2f ms, max %.2f ms\n", r.apiN, r.apiP50, r.apiP99, r.apiMax)
	if r.cliN > 0 {
		fmt.Printf("snpctl vm list while starting: %d calls, p50 %.2f ms, p99 %.2f ms, max %.2f ms\n", r.cliN, r.cliP50, r.cliP99, r.cliMax)
	}
	if len(r.scrapeLat) > 0 {
		fmt.Printf("GET /metrics while starting: %d scrapes, p99 %.2f ms\n", len(r.scrapeLat), r.scrapeP99)
	}
	fmt.Printf("snpd while starting (schedstat, all rounds): %d ms on a CPU, %d ms runnable waiting for a CPU\n", r.snpdRun.Milliseconds(), r.snpdWait.Milliseconds())
}

// schedstat sums /proc/PID/task/*/schedstat of pid: nanoseconds on a CPU and runnable
// waiting for one, per thread id (a thread that is gone is missing).
func schedstat(pid int) map[string][2]time.Duration {
	out := map[string][2]time.Duration{}
	dir := fmt.Sprintf("/proc/%d/task", pid)
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		b, err := os.ReadFile(dir + "/" + e.Name() + "/schedstat")
		f := strings.Fields(string(b))
		if err != nil || len(f) < 2 {
			continue
		}
		run, err1 := strconv.ParseInt(f[0], 10, 64)
		wait, err2 := strconv.ParseInt(f[1], 10, 64)
		if err1 == nil && err2 == nil {
			out[e.Name()] = [2]time.Duration{time.Duration(run), time.Duration(wait)}
		}
	}
	return out
}

// schedDelta is the summed on-CPU and waiting time of the threads in both reads.
func schedDelta(before, after map[string][2]time.Duration) (run, wait time.Duration) {
	for tid, a := range after {
		if b, ok := before[tid]; ok {
			run += a[0] - b[0]
			wait += a[1] - b[1]
		}
	}
	return run, wait
}

// start20WhileListing runs the scenario once against a fresh snpd whose config gets
// extra appended; snpctl ("" : skip) is the binary timed per call; cg (nil: the flat
// layout) is the cgroup snpd is moved into before any VM is defined; first (the first
// round of a variant) also times snpctl on the idle daemon. It returns an error when a
// start failed (the caller may run the round again). With
// SNPD_TEST_TRACE or SNPD_TEST_CPUPROFILE set, that snpd writes them to the path plus
// "."+tag.
func start20WhileListing(b *testing.B, extra, tag, snpctl string, cg *benchCgroup, first bool) (start20Result, error) {
	const n = 20
	// Exploration knobs (see BenchmarkStart20WhileListing): a pause after each snpctl
	// call, and no API sampler.
	think, _ := time.ParseDuration(os.Getenv("SNPD_BENCH_THINK"))
	noAPI := os.Getenv("SNPD_BENCH_NOAPI") != ""
	{
		e := newTestEnv(b, extra)
		var env []string
		for _, k := range []string{"SNPD_TEST_TRACE", "SNPD_TEST_CPUPROFILE"} {
			if p := os.Getenv(k); p != "" {
				env = append(env, k+"="+p+"."+tag)
			}
		}
		e.Setsid = true // as systemd starts snpd: a session, hence an autogroup, of its own
		d := startDaemon(b, e, env...)
		if cg != nil {
			if err := cg.add(d.cmd.Process.Pid); err != nil {
				b.Fatal(err)
			}
		}
		cgv := newCgroupCheck(b, cg, d.cmd.Process.Pid)
		for i := range n {
			mustDefine(b, d.Client, fmt.Sprintf("bench%02d", i), "")
		}
		if tag == "default" && snpctl != "" && first {
			idleCLI(b, e.Socket, snpctl, os.Getenv("SNPCTL_CGO"))
		}
		var (
			wg       sync.WaitGroup
			mu       sync.Mutex
			pids     []int
			failures []error
			apiLat   []time.Duration
			cliLat   []time.Duration
		)
		done := make(chan struct{})
		roundStart := time.Now()
		listers := sync.WaitGroup{}
		if !noAPI {
			listers.Go(func() {
				for {
					select {
					case <-done:
						return
					default:
					}
					t0 := time.Now()
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					_, err := d.Client.List(ctx)
					cancel()
					if el := time.Since(t0); el > 20*time.Millisecond && os.Getenv("SNPD_BENCH_DEBUG") != "" {
						t1 := time.Now()
						_, _ = d.Client.Status(context.Background())
						fmt.Printf("slow list %s at %s into the round; status right after %s\n", el.Round(time.Millisecond), t0.Sub(roundStart).Round(time.Millisecond), time.Since(t1).Round(time.Millisecond))
					}
					if err == nil {
						mu.Lock()
						apiLat = append(apiLat, time.Since(t0))
						mu.Unlock()
					}
					time.Sleep(2 * time.Millisecond)
				}
			})
		}
		if snpctl != "" {
			listers.Go(func() {
				for {
					select {
					case <-done:
						return
					default:
					}
					t0 := time.Now()
					cmd := exec.Command(snpctl, "--socket", e.Socket, "vm", "list")
					err := cmd.Start()
					if err == nil {
						cgv.client(cmd.Process.Pid)
						err = cmd.Wait()
					}
					if el := time.Since(t0); err == nil {
						mu.Lock()
						cliLat = append(cliLat, el)
						mu.Unlock()
						if el > 20*time.Millisecond && os.Getenv("SNPD_BENCH_DEBUG") != "" {
							fmt.Printf("slow snpctl %s, started %s into the round\n", el.Round(time.Millisecond), t0.Sub(roundStart).Round(time.Millisecond))
						}
					}
					if think > 0 {
						time.Sleep(think)
					}
				}
			})
		}
		var scrapeLat []time.Duration
		if sock := filepath.Join(e.RuntimeDir, "metrics.sock"); strings.Contains(extra, "[metrics]") {
			mc := httpOver("unix", sock)
			listers.Go(func() {
				tick := time.NewTicker(time.Second)
				defer tick.Stop()
				for {
					select {
					case <-done:
						return
					case <-tick.C:
					}
					t0 := time.Now()
					resp, err := mc.Get("http://snpd/metrics")
					if err == nil {
						_, err = io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						if err == nil && resp.StatusCode != http.StatusOK {
							err = fmt.Errorf("GET /metrics: %s", resp.Status)
						}
					}
					if err != nil {
						b.Errorf("scraping metrics: %v", err)
						return
					}
					mu.Lock()
					scrapeLat = append(scrapeLat, time.Since(t0))
					mu.Unlock()
				}
			})
		}
		sched0 := schedstat(d.cmd.Process.Pid)
		t0 := time.Now()
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
				defer cancel()
				info, err := d.Client.Start(ctx, fmt.Sprintf("bench%02d", i))
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					failures = append(failures, err)
					return
				}
				pids = append(pids, info.PID)
			}()
		}
		wg.Wait()
		wall := time.Since(t0)
		snpdRun, snpdWait := schedDelta(sched0, schedstat(d.cmd.Process.Pid))
		close(done)
		listers.Wait()
		for _, p := range pids {
			cgv.qemu(p)
		}
		// Killed before anything can fail the benchmark: a Fatal exits without snpd
		// stopping its guests, and 20 leaked TCG guests would load every later run.
		for _, p := range pids {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
		cgv.report()
		if len(failures) > 0 {
			return start20Result{}, fmt.Errorf("%d of %d starts failed, first: %w", len(failures), n, failures[0])
		}
		vms, err := d.Client.List(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		running := 0
		for _, v := range vms {
			if v.State == api.StateRunning || v.State == api.StateCrashed {
				running++ // crashed: killed just above, before the list
			}
		}
		if running != n {
			return start20Result{}, fmt.Errorf("%d of %d vms were started", running, n)
		}
		r := start20Result{rounds: 1, ok: len(pids), wall: wall, apiLat: apiLat, cliLat: cliLat,
			snpdRun: snpdRun, snpdWait: snpdWait, scrapeLat: scrapeLat}
		r.percentiles()
		return r, nil
	}
}

// BenchmarkManagerList20 is the daemon's own cost of one `vm list` with 20 defined VMs
// that each have 3 or 300 runs in the store (no QEMU): what scales with the number of
// VMs and of their past runs.
func BenchmarkManagerList20(b *testing.B) {
	for _, runs := range []int{3, 300} {
		b.Run(fmt.Sprintf("runs=%d", runs), func(b *testing.B) { benchManagerList(b, 20, runs) })
	}
}

func benchManagerList(b *testing.B, vms, runsPerVM int) {
	s, err := store.Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	m := NewManager(ManagerOptions{Store: s, Validate: validateDefinition, RuntimeDir: b.TempDir()})
	for i := range vms {
		name := fmt.Sprintf("bench%02d", i)
		if _, err := m.Define(api.DefineRequest{File: name + ".toml", TOML: vmTOML(name, "")}, nil); err != nil {
			b.Fatal(err)
		}
		for range runsPerVM {
			if _, err := s.NewRun(name, api.Run{State: api.StateStopped}); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportAllocs()
	for b.Loop() {
		l, err := m.List()
		if err != nil || len(l) != vms {
			b.Fatalf("%d vms, %v", len(l), err)
		}
	}
}

// idleCLI times `snpctl vm list` against an idle snpd with 20 VMs, 100 calls, for the
// shipped build (static) and, when given, a cgo build, alternating call by call so both
// see the same host: process start-up cost without contention.
func idleCLI(b *testing.B, socket, shipped, cgo string) {
	type bin struct{ name, path string }
	bins := []bin{{"static (make build's snpctl)", shipped}}
	if cgo != "" {
		bins = append(bins, bin{"cgo", cgo})
	}
	lat := make([][]time.Duration, len(bins))
	for range 100 {
		for i, bin := range bins {
			t0 := time.Now()
			if err := exec.Command(bin.path, "--socket", socket, "vm", "list").Run(); err != nil {
				b.Fatalf("%s vm list: %v", bin.path, err)
			}
			lat[i] = append(lat[i], time.Since(t0))
		}
	}
	for i, bin := range bins {
		slices.Sort(lat[i])
		fmt.Printf("snpctl vm list idle, %s: p50 %.2f ms, p99 %.2f ms\n", bin.name,
			float64(lat[i][50].Microseconds())/1000, float64(lat[i][99].Microseconds())/1000)
	}
}
