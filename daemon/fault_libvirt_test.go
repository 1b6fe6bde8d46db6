package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/snpd/snpd/config"
	"github.com/snpd/snpd/daemon/api"
	"github.com/snpd/snpd/daemon/launch"
	"github.com/snpd/snpd/daemon/store"
)

// postDomain sends a hook registration through the real route table as root and
// returns the status and the decoded error.
func postDomain(t *testing.T, m *Manager, s *store.Store, name, xml string) (int, api.Error) {
	t.Helper()
	srv := &Server{mgr: m, store: s}
	mux := newMux(srv.routes(), slogDiscard())
	body, _ := json.Marshal(api.LibvirtDomainRequest{Name: name, XML: xml})
	req := httptest.NewRequest(http.MethodPost, api.LibvirtDomainsPath, bytes.NewReader(body))
	req = req.WithContext(context.WithValue(req.Context(), peerKey{}, &Peer{UID: 0, Role: RoleOperate}))
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, req)
	var ae api.Error
	_ = json.Unmarshal(rec.Body.Bytes(), &ae)
	return rec.Code, ae
}

// TestLibvirtRegistrationErrorKinds: a hook registration that fails on the host side
// (measuring the domain failed for a reason that is not the domain's) is a 5xx; one
// whose definition is at fault (its firmware file is missing) is a 400. Both used to be
// 400 "invalid request", which told libvirt's operator to fix a domain that was fine.
func TestLibvirtRegistrationErrorKinds(t *testing.T) {
	s, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	hostFailure := NewManager(ManagerOptions{Store: s, Platform: string(launch.PlatformNone), RuntimeDir: t.TempDir(),
		Prepare: func(context.Context, *config.VM) (*api.LaunchRecord, error) {
			return nil, errors.New("creating memfd for firmware: cannot allocate memory")
		}})
	defer hostFailure.Close()
	code, ae := postDomain(t, hostFailure, s, "lv2", snpDomain)
	if code != http.StatusInternalServerError || ae.Kind != api.KindInternal || !strings.Contains(ae.Message, "cannot allocate memory") {
		t.Errorf("host failure: %d %+v, want 500 naming the cause", code, ae)
	}

	// The real launcher on platform none (no QEMU is run: this host has no KVM, or the
	// model check is cached), with the domain's firmware missing: the domain's fault.
	run := t.TempDir()
	l := &launch.Launcher{QEMU: testQEMU, Platform: launch.PlatformNone, RuntimeDir: run, Host: &launch.HostFacts{Accel: launch.AccelTCG}}
	real := NewManager(ManagerOptions{Store: s, Platform: string(launch.PlatformNone), RuntimeDir: run, QEMU: testQEMU,
		Prepare: launcherPrepare(l)})
	defer real.Close()
	missing := strings.Replace(snpDomain, "/usr/share/ovmf/OVMF.fd", "/nonexistent/OVMF.fd", 1)
	code, ae = postDomain(t, real, s, "lv2", missing)
	if code != http.StatusBadRequest || ae.Kind != api.KindInvalid || !strings.Contains(ae.Message, "/nonexistent/OVMF.fd") {
		t.Errorf("missing firmware: %d %+v, want 400 naming the file", code, ae)
	}
	if _, err := s.LibvirtDomain("lv2"); err == nil {
		t.Error("a refused registration was stored")
	}
}

// TestLibvirtHookHostFailureOnSNPHostWithoutSNP registers a sev-snp domain with the
// real snpd on platform "sev-snp" on this host, which has no SEV-SNP: measuring fails on
// the host (QEMU cannot query the SEV firmware), which is a 5xx saying SEV-SNP is not
// available, not 400 "invalid request".
func TestLibvirtHookHostFailureOnSNPHostWithoutSNP(t *testing.T) {
	if _, err := os.Stat(testQEMU); err != nil {
		t.Skipf("%s is missing (run scripts/install-deps.sh): %v", testQEMU, err)
	}
	if _, err := os.Stat("/dev/sev"); err == nil {
		t.Skip("this host has /dev/sev: the host failure cannot be provoked here")
	}
	e := newTestEnv(t, "")
	cfg, err := os.ReadFile(e.Config)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.Config, bytes.Replace(cfg, []byte(`platform = "none"`), []byte(`platform = "sev-snp"`), 1), 0o644); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, e)
	err = d.Client.Do(ctxT(t, time.Minute), http.MethodPost, api.LibvirtDomainsPath, api.LibvirtDomainRequest{Name: "lv2", XML: snpDomain}, nil)
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Status < 500 {
		t.Fatalf("registration on a host without SEV-SNP: %v, want a 5xx", err)
	}
	t.Logf("%d: %s", ae.Status, ae.Message)
	if !strings.Contains(ae.Message, "SEV") {
		t.Errorf("message does not say what failed: %q", ae.Message)
	}
}
