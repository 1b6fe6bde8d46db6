package daemon

import (
	"fmt"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/snpd/snpd/daemon/api"
)

// routes is the API's one route table (Go 1.22 ServeMux patterns). Add a route by adding
// a line here; handlers return errors wrapping an api.Err* kind.
func (s *Server) routes() []Route {
	return append([]Route{
		{"GET /v1/status", RoleRead, s.getStatus},
		{"GET /v1/events", RoleRead, s.getEvents},

		{"GET /v1/vms", RoleRead, s.listVMs},
		{"POST /v1/vms", RoleOperate, s.defineVM},
		{"GET /v1/vms/{name}", RoleRead, s.getVM},
		{"DELETE /v1/vms/{name}", RoleOperate, s.undefineVM},
		{"GET /v1/vms/{name}/runs", RoleRead, s.getRuns},
		{"GET /v1/vms/{name}/log", RoleRead, s.getLog},
		{"POST /v1/vms/{name}/start", RoleOperate, s.startVM},
		{"POST /v1/vms/{name}/stop", RoleOperate, s.stopVM},
		{"POST /v1/vms/{name}/kill", RoleOperate, s.killVM},

		// The libvirt hook (snpctl libvirt-hook): check and measure, do not launch.
		{"POST " + api.LibvirtDomainsPath, RoleOperate, s.registerLibvirt},
		{"DELETE " + api.LibvirtDomainsPath + "/{name}", RoleOperate, s.unregisterLibvirt},
		// Registrations read back (snpctl libvirt list|show); the reference route is in
		// attest_http.go.
		{"GET " + api.LibvirtDomainsPath, RoleRead, s.listLibvirt},
		{"GET " + api.LibvirtDomainsPath + "/{name}", RoleRead, s.getLibvirt},
	}, s.attestRoutes()...) // attestation: daemon/attest_http.go
}

func (s *Server) getStatus(w http.ResponseWriter, r *http.Request) error {
	counts, err := s.mgr.Counts()
	if err != nil {
		return err
	}
	var reattached []api.ReattachResult
	var pending int
	if s.reattach != nil {
		reattached, pending = s.reattach.Results()
	}
	return writeJSON(w, http.StatusOK, api.Status{
		Version: Version, Platform: s.cfg.Platform, PID: os.Getpid(), StartedAt: s.started,
		StateDir: s.cfg.StateDir, Socket: s.socket, QEMU: s.cfg.QEMU, VMs: counts,
		Policy: s.cfg.PolicyFile, RunWithoutPolicy: s.cfg.RunWithoutPolicy,
		Reattached: reattached, Reattaching: pending,
	})
}

func (s *Server) listVMs(w http.ResponseWriter, r *http.Request) error {
	l, err := s.mgr.List()
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, api.ListResponse{VMs: l})
}

func (s *Server) defineVM(w http.ResponseWriter, r *http.Request) error {
	var req api.DefineRequest
	if err := decodeJSON(r, &req); err != nil {
		return err
	}
	info, err := s.mgr.Define(req, PeerFrom(r.Context()).Caller())
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusCreated, info)
}

func (s *Server) getVM(w http.ResponseWriter, r *http.Request) error {
	name, err := vmName(r)
	if err != nil {
		return err
	}
	info, err := s.mgr.Get(name)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, info)
}

func (s *Server) undefineVM(w http.ResponseWriter, r *http.Request) error {
	name, err := vmName(r)
	if err != nil {
		return err
	}
	if err := s.mgr.Undefine(name); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) getRuns(w http.ResponseWriter, r *http.Request) error {
	name, err := vmName(r)
	if err != nil {
		return err
	}
	limit, err := queryInt(r, "limit", 0, 0, 1<<20)
	if err != nil {
		return err
	}
	runs, err := s.mgr.Runs(name, limit)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, runs)
}

func (s *Server) getLog(w http.ResponseWriter, r *http.Request) error {
	name, err := vmName(r)
	if err != nil {
		return err
	}
	n, err := queryInt(r, "bytes", 16<<10, 1, 16<<20)
	if err != nil {
		return err
	}
	b, err := s.mgr.ConsoleLog(name, int64(n))
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, err = w.Write(b)
	return err
}

// emptyBody accepts an empty body or an empty JSON object (unknown fields rejected).
func emptyBody(r *http.Request) error {
	if r.ContentLength == 0 {
		return nil
	}
	var v struct{}
	return decodeJSON(r, &v)
}

func (s *Server) startVM(w http.ResponseWriter, r *http.Request) error {
	name, err := vmName(r)
	if err != nil {
		return err
	}
	if err := emptyBody(r); err != nil {
		return err
	}
	// The launch continues if the client goes away: a half-done launch is worse.
	info, err := s.mgr.Start(contextWithoutCancel(r), name)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, info)
}

func (s *Server) stopVM(w http.ResponseWriter, r *http.Request) error {
	name, err := vmName(r)
	if err != nil {
		return err
	}
	var req api.StopRequest
	if r.ContentLength != 0 {
		if err := decodeJSON(r, &req); err != nil {
			return err
		}
	}
	if req.TimeoutSeconds < 0 || req.TimeoutSeconds > 3600 {
		return fmt.Errorf("timeout_seconds %v: must be between 0 and 3600: %w", req.TimeoutSeconds, api.ErrInvalid)
	}
	info, err := s.mgr.Stop(r.Context(), name, time.Duration(req.TimeoutSeconds*float64(time.Second)))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, info)
}

func (s *Server) killVM(w http.ResponseWriter, r *http.Request) error {
	name, err := vmName(r)
	if err != nil {
		return err
	}
	if err := emptyBody(r); err != nil {
		return err
	}
	info, err := s.mgr.Kill(r.Context(), name)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, info)
}

// getEvents streams events (state changes, policy refusals, attestation verdicts) as
// server-sent events until the client leaves.
func (s *Server) getEvents(w http.ResponseWriter, r *http.Request) error {
	vm := r.URL.Query().Get("vm")
	if vm != "" {
		if err := api.ValidName(vm); err != nil {
			return err
		}
	}
	kinds, err := eventKinds(r.URL.Query().Get("kind"))
	if err != nil {
		return err
	}
	fl, ok := w.(http.Flusher)
	if !ok {
		return fmt.Errorf("streaming not supported: %w", api.ErrInternal)
	}
	ch, cancel := s.mgr.Subscribe(vm)
	defer cancel()
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	fmt.Fprint(w, ": snpd events\n\n")
	fl.Flush()
	keepalive := time.NewTicker(15 * time.Second)
	defer keepalive.Stop()
	for {
		select {
		case <-r.Context().Done():
			return nil
		case <-keepalive.C:
			fmt.Fprint(w, ": keepalive\n\n")
		case ev, ok := <-ch:
			if !ok {
				return nil
			}
			kind := ev.KindName()
			if kinds != nil && !kinds[kind] {
				continue
			}
			ev.Kind = kind
			b, _ := jsonLine(ev)
			fmt.Fprintf(w, "id: %d\nevent: %s\ndata: %s\n\n", ev.Seq, kind, b)
		}
		fl.Flush()
	}
}

// eventKinds parses the kind query of GET /v1/events: a comma-separated list of event
// kinds; nil (every kind) when empty.
func eventKinds(q string) (map[string]bool, error) {
	if q == "" {
		return nil, nil
	}
	out := map[string]bool{}
	for _, k := range strings.Split(q, ",") {
		if !slices.Contains(api.EventKinds, k) {
			return nil, fmt.Errorf("query kind=%q: %q is not an event kind (want %s): %w", q, k, strings.Join(api.EventKinds, ", "), api.ErrInvalid)
		}
		out[k] = true
	}
	return out, nil
}

func queryInt(r *http.Request, key string, def, lo, hi int) (int, error) {
	v := r.URL.Query().Get(key)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		return 0, fmt.Errorf("query %s=%q: want an integer in [%d, %d]: %w", key, v, lo, hi, api.ErrInvalid)
	}
	return n, nil
}

func (s *Server) registerLibvirt(w http.ResponseWriter, r *http.Request) error {
	var req api.LibvirtDomainRequest
	if err := decodeJSON(r, &req); err != nil {
		return err
	}
	reg, err := s.mgr.RegisterLibvirt(r.Context(), req)
	s.obs.libvirtChecked(req.Name, err)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, api.LibvirtDomainResponse{Name: reg.Name, ExpectedDigest: reg.Record.ExpectedDigest, Note: reg.Record.Note})
}

func (s *Server) listLibvirt(w http.ResponseWriter, r *http.Request) error {
	l, err := s.mgr.LibvirtDomains()
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, api.LibvirtDomainList{Domains: l})
}

func (s *Server) getLibvirt(w http.ResponseWriter, r *http.Request) error {
	name, err := vmName(r)
	if err != nil {
		return err
	}
	d, err := s.mgr.LibvirtDomain(name)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, d)
}

func (s *Server) unregisterLibvirt(w http.ResponseWriter, r *http.Request) error {
	name, err := vmName(r)
	if err != nil {
		return err
	}
	if err := s.mgr.UnregisterLibvirt(name); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
