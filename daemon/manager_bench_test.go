package daemon

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/snpd/snpd/daemon/api"
)

// BenchmarkStart20WhileListing starts 20 small VMs (64 MiB) concurrently through snpd
// on platform "none" with the real QEMU while clients list VMs in a loop, and reports
// the list latency percentiles while the starts run: over the API (api.Client) and as
// an operator sees it (`snpctl vm list`, a process per call). It prints BENCH lines
// (scripts/bench-service.sh collects them). One iteration is the whole scenario.
func BenchmarkStart20WhileListing(b *testing.B) {
	needQEMU(b)
	var snpctl string
	if p := os.Getenv("SNPCTL"); p != "" {
		snpctl = p
	}
	variants := []struct{ name, config string }{
		{"qemu_nice=0 (qemu at snpd's priority)", "qemu_nice = 0\n"},
		{"qemu_nice default (10)", ""},
	}
	for it := 0; it < b.N; it++ {
		var res []start20Result
		for _, v := range variants {
			r := start20WhileListing(b, v.config, snpctl)
			res = append(res, r)
			load, _ := os.ReadFile("/proc/loadavg")
			fmt.Printf("== %s; host load average (1/5/15 min, ...): %s", v.name, load)
			r.print()
		}
		base, def := res[0], res[len(res)-1]
		b.ReportMetric(def.apiP99, "api-list-p99-ms")
		b.ReportMetric(def.wall.Seconds(), "start20-s")
		fmt.Printf("ratios qemu_nice=0 / default: API list p99 %.1fx, snpctl vm list p99 %.1fx, start wall %.2fx\n",
			base.apiP99/def.apiP99, base.cliP99/max(def.cliP99, 1e-3), base.wall.Seconds()/def.wall.Seconds())
		fmt.Printf("BENCH service_start20_ok %d count ==20\n", def.ok)
		fmt.Printf("BENCH service_start20_wall %.2f s -\n", def.wall.Seconds())
		fmt.Printf("BENCH service_api_list_p99_during_start20 %.2f ms <=20\n", def.apiP99)
		if snpctl != "" {
			fmt.Printf("BENCH service_snpctl_list_p99_during_start20 %.2f ms <=20\n", def.cliP99)
		}
	}
}

// start20Result is one run of the start20WhileListing scenario.
type start20Result struct {
	ok                     int
	wall                   time.Duration
	apiN, cliN             int
	apiP50, apiP99, apiMax float64 // ms
	cliP50, cliP99, cliMax float64 // ms; cliN 0: snpctl not measured
}

func (r start20Result) print() {
	fmt.Printf("20 concurrent starts: %d ok in %.2f s\n", r.ok, r.wall.Seconds())
	fmt.Printf("API list while starting: %d calls, p50 %.2f ms, p99 %.2f ms, max %.2f ms\n", r.apiN, r.apiP50, r.apiP99, r.apiMax)
	if r.cliN > 0 {
		fmt.Printf("snpctl vm list while starting: %d calls, p50 %.2f ms, p99 %.2f ms, max %.2f ms\n", r.cliN, r.cliP50, r.cliP99, r.cliMax)
	}
}

// start20WhileListing runs the scenario once against a fresh snpd whose config gets
// extra appended; snpctl ("" : skip) is the binary timed per call.
func start20WhileListing(b *testing.B, extra, snpctl string) start20Result {
	const n = 20
	{
		e := newTestEnv(b, extra)
		d := startDaemon(b, e)
		for i := range n {
			mustDefine(b, d.Client, fmt.Sprintf("bench%02d", i), "")
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
		listers := sync.WaitGroup{}
		listers.Add(1)
		go func() {
			defer listers.Done()
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
					fmt.Printf("slow list %s at %s; status right after %s\n", el, t0.Format("15:04:05.000"), time.Since(t1))
				}
				if err == nil {
					mu.Lock()
					apiLat = append(apiLat, time.Since(t0))
					mu.Unlock()
				}
				time.Sleep(2 * time.Millisecond)
			}
		}()
		if snpctl != "" {
			listers.Add(1)
			go func() {
				defer listers.Done()
				for {
					select {
					case <-done:
						return
					default:
					}
					t0 := time.Now()
					err := exec.Command(snpctl, "--socket", e.Socket, "vm", "list").Run()
					if err == nil {
						mu.Lock()
						cliLat = append(cliLat, time.Since(t0))
						mu.Unlock()
					}
				}
			}()
		}
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
		close(done)
		listers.Wait()
		for _, p := range pids {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
		if len(failures) > 0 {
			b.Fatalf("%d of %d starts failed, first: %v", len(failures), n, failures[0])
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
			b.Fatalf("%d of %d vms were started", running, n)
		}
		p := func(l []time.Duration, q float64) float64 {
			if len(l) == 0 {
				return 0
			}
			s := slices.Clone(l)
			slices.Sort(s)
			return float64(s[min(len(s)-1, int(q*float64(len(s))))].Microseconds()) / 1000
		}
		return start20Result{ok: len(pids), wall: wall, apiN: len(apiLat), cliN: len(cliLat),
			apiP50: p(apiLat, 0.5), apiP99: p(apiLat, 0.99), apiMax: p(apiLat, 1),
			cliP50: p(cliLat, 0.5), cliP99: p(cliLat, 0.99), cliMax: p(cliLat, 1)}
	}
}
