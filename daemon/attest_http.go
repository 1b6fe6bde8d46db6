package daemon

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/snpd/snpd/config"
	"github.com/snpd/snpd/daemon/api"
	"github.com/snpd/snpd/daemon/guestchan"
	"github.com/snpd/snpd/snp"
)

// attestRoutes are the attestation API routes (added to the route table in routes.go).
func (s *Server) attestRoutes() []Route {
	return []Route{
		{"GET /v1/vms/{name}/attestation", RoleRead, s.getAttestation},
		{"GET /v1/vms/{name}/reference", RoleRead, s.getReference},
		{"GET " + api.LibvirtDomainsPath + "/{name}/reference", RoleRead, s.getLibvirtReference},
		{"POST " + api.VerifyPath, RoleRead, s.postVerify},
		{"GET " + api.CertsPath, RoleRead, s.listCerts},
		{"POST " + api.CertsPath, RoleOperate, s.importCerts},
	}
}

// attestLookup adapts the Manager to Attestor.Lookup: the VM's newest run record, its
// state and its guest channel from the definition and the daemon's settings; a serial
// channel goes through the VM's session in sessions (nil: dialled per exchange).
func attestLookup(m *Manager, gc config.GuestChannel, sessions *guestchan.GuestSessions) func(string) (*AttestTarget, error) {
	return func(name string) (*AttestTarget, error) {
		info, err := m.Get(name)
		if err != nil {
			return nil, err
		}
		t := &AttestTarget{}
		var vm config.VM
		if len(info.Definition) > 0 && json.Unmarshal(info.Definition, &vm) == nil {
			t.Definition = &vm
		}
		if info.Last != nil && len(info.Last.Record) > 0 {
			var rec api.LaunchRecord
			if err := json.Unmarshal(info.Last.Record, &rec); err != nil {
				return nil, fmt.Errorf("decoding the launch record of %s: %v: %w", name, err, api.ErrInternal)
			}
			t.Record = &rec
			t.Running = info.Last.State == api.StateRunning
			t.Channel.Timeout = time.Duration(gc.Timeout)
			if t.Definition != nil && t.Definition.Channel != nil {
				if t.Definition.Channel.Serial {
					t.Channel.SerialSocket = m.agentSocket(name, info.Last, &rec)
					if sessions != nil && t.Running {
						t.Channel.Session = sessions.Session(name)
					}
				}
				t.Channel.VsockCID = t.Definition.Channel.VsockCID
				t.Channel.VsockPort = gc.VsockPort
			}
		}
		return t, nil
	}
}

// libvirtLookup adapts the Manager's libvirt registrations to Attestor.LookupLibvirt: the
// registration's record and mapped definition; never running (libvirt owns the domain).
// A domain without sev-snp launch security has no SNP launch digest to verify against.
func libvirtLookup(m *Manager) func(string) (*AttestTarget, error) {
	return func(name string) (*AttestTarget, error) {
		d, err := m.LibvirtDomain(name)
		if err != nil {
			return nil, err
		}
		if d.Record == nil || d.Record.ExpectedDigest == "" {
			return nil, fmt.Errorf("libvirt domain %s has no SEV-SNP launch digest (its XML has no sev-snp launchSecurity): it is not confidential and no report can match it: %w", name, api.ErrConflict)
		}
		t := &AttestTarget{Record: d.Record}
		var vm config.VM
		if len(d.Definition) > 0 && json.Unmarshal(d.Definition, &vm) == nil {
			t.Definition = &vm
		}
		return t, nil
	}
}

func (s *Server) attestor() (*Attestor, error) {
	if s.att == nil {
		return nil, fmt.Errorf("attestation is not configured: %w", api.ErrUnavailable)
	}
	return s.att, nil
}

func (s *Server) getAttestation(w http.ResponseWriter, r *http.Request) error {
	name, err := vmName(r)
	if err != nil {
		return err
	}
	a, err := s.attestor()
	if err != nil {
		return err
	}
	q := r.URL.Query().Get("nonce")
	if q == "" {
		return fmt.Errorf("nonce: required (hex, 1..64 bytes): %w", api.ErrInvalid)
	}
	nonce, err := hex.DecodeString(q)
	if err != nil {
		return fmt.Errorf("nonce: not hex: %w", api.ErrInvalid)
	}
	resp, err := a.Attest(r.Context(), name, nonce)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, resp)
}

func (s *Server) getReference(w http.ResponseWriter, r *http.Request) error {
	return s.serveReference(w, r, (*Attestor).Reference)
}

func (s *Server) getLibvirtReference(w http.ResponseWriter, r *http.Request) error {
	return s.serveReference(w, r, (*Attestor).LibvirtReference)
}

// serveReference answers a reference route with export(name, format).
func (s *Server) serveReference(w http.ResponseWriter, r *http.Request, export func(a *Attestor, name, format string) ([]byte, error)) error {
	name, err := vmName(r)
	if err != nil {
		return err
	}
	a, err := s.attestor()
	if err != nil {
		return err
	}
	format := r.URL.Query().Get("format")
	if format == "" {
		format = snp.FormatJSON
	}
	b, err := export(a, name, format)
	if err != nil {
		return err
	}
	ct := "application/json"
	if format == snp.FormatSevGuestCheck {
		ct = "text/plain; charset=utf-8"
	}
	w.Header().Set("Content-Type", ct)
	w.WriteHeader(http.StatusOK)
	_, err = w.Write(b)
	return err
}

func (s *Server) postVerify(w http.ResponseWriter, r *http.Request) error {
	a, err := s.attestor()
	if err != nil {
		return err
	}
	var req api.VerifyRequest
	if err := decodeJSON(r, &req); err != nil {
		return err
	}
	resp, err := a.VerifyReport(r.Context(), &req)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, resp)
}

func certInfos(in []snp.CertInfo) api.CertList {
	out := api.CertList{Certs: []api.CertInfo{}}
	for _, c := range in {
		ci := api.CertInfo{Kind: string(c.Kind), ProductLine: c.ProductLine, ChipID: c.ChipID, Subject: c.Subject, NotAfter: c.NotAfter, SHA256: c.SHA256}
		if c.Kind == snp.KindVCEK || c.Kind == snp.KindVLEK {
			ci.TCB = fmt.Sprintf("%#016x", c.TCB)
		}
		out.Certs = append(out.Certs, ci)
	}
	return out
}

func (s *Server) listCerts(w http.ResponseWriter, r *http.Request) error {
	a, err := s.attestor()
	if err != nil {
		return err
	}
	l, err := a.Cache.List()
	if err != nil {
		return fmt.Errorf("%w: %w", err, api.ErrInternal)
	}
	return writeJSON(w, http.StatusOK, certInfos(l))
}

func (s *Server) importCerts(w http.ResponseWriter, r *http.Request) error {
	a, err := s.attestor()
	if err != nil {
		return err
	}
	var req api.CertImportRequest
	if err := decodeJSON(r, &req); err != nil {
		return err
	}
	l, err := a.Cache.Import(req.Data, a.now())
	if err != nil {
		return fmt.Errorf("%w: %w", err, api.ErrInvalid)
	}
	return writeJSON(w, http.StatusOK, certInfos(l))
}
