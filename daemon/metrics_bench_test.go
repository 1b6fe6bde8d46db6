package daemon

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/snpd/snpd/daemon/api"
	"github.com/snpd/snpd/daemon/metrics"
)

// BenchmarkAPIInstrumentation is what metrics add to one API request, in process and
// without contention: GET /v1/vms (20 VMs defined) through the route table bare and
// instrumented (counted by route and status, timed), and one scrape of /metrics with
// per_vm (the scrape lists the VMs). scripts/bench-service.sh measures the same under
// load, end to end, side by side.
func BenchmarkAPIInstrumentation(b *testing.B) {
	srv, cleanup := testServer(b)
	defer cleanup()
	for i := range 20 {
		name := fmt.Sprintf("bench%02d", i)
		if _, err := srv.mgr.Define(api.DefineRequest{File: name + ".toml", TOML: vmTOML(name, "")}, nil); err != nil {
			b.Fatal(err)
		}
	}
	m := metrics.New(metrics.Options{Platform: "none", PerVM: true})
	m.SetSources(metrics.Sources{VMs: func() ([]metrics.VM, error) {
		l, err := srv.mgr.List()
		out := make([]metrics.VM, len(l))
		for i, v := range l {
			out[i] = metrics.VM{Name: v.Name, State: v.State}
		}
		return out, err
	}})
	ctx := context.WithValue(context.Background(), peerKey{}, &Peer{Role: RoleRead})
	for _, c := range []struct {
		name string
		h    http.Handler
	}{
		{"list/bare", newMux(srv.routes(), slogDiscard())},
		{"list/instrumented", m.InstrumentAPI(newMux(srv.routes(), slogDiscard()))},
	} {
		b.Run(c.name, func(b *testing.B) {
			req := httptest.NewRequestWithContext(ctx, http.MethodGet, "/v1/vms", nil)
			b.ReportAllocs()
			for b.Loop() {
				rec := httptest.NewRecorder()
				c.h.ServeHTTP(rec, req)
				if rec.Code != http.StatusOK {
					b.Fatalf("GET /v1/vms: %d", rec.Code)
				}
			}
		})
	}
	b.Run("scrape", func(b *testing.B) {
		h := m.Handler()
		req := httptest.NewRequest(http.MethodGet, metrics.Path, nil)
		b.ReportAllocs()
		for b.Loop() {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != http.StatusOK {
				b.Fatalf("GET /metrics: %d", rec.Code)
			}
		}
	})
}
