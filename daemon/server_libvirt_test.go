package daemon

import (
	"errors"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/snpd/snpd/daemon/api"
	"github.com/snpd/snpd/snp/snptest"
)

const plainDomain = `<domain type='kvm'><name>lv1</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='q35'>hvm</type><loader type='rom'>/usr/share/ovmf/OVMF.fd</loader></os>
<cpu mode='custom'><model fallback='forbid'>EPYC-v4</model></cpu></domain>`

func TestLibvirtHookEndpoints(t *testing.T) {
	needQEMU(t)
	e := newTestEnv(t, "")
	d := startDaemon(t, e)
	ctx := ctxT(t, time.Minute)
	var resp api.LibvirtDomainResponse
	err := d.Client.Do(ctx, http.MethodPost, api.LibvirtDomainsPath, api.LibvirtDomainRequest{Name: "lv1", XML: plainDomain}, &resp)
	if err != nil {
		t.Fatal(err)
	}
	// No launchSecurity: not confidential, no SNP digest (libvirt_confidential_test.go).
	if resp.Name != "lv1" || resp.ExpectedDigest != "" || resp.Note != api.NotConfidential {
		t.Fatalf("registration: %+v", resp)
	}
	// Registered, not launched: no VM appears in the list.
	if vms, err := d.Client.List(ctx); err != nil || len(vms) != 0 {
		t.Fatalf("libvirt registration created vms: %v %+v", err, vms)
	}
	err = d.Client.Do(ctx, http.MethodPost, api.LibvirtDomainsPath, api.LibvirtDomainRequest{Name: "other", XML: plainDomain}, nil)
	if !errors.Is(err, api.ErrInvalid) {
		t.Errorf("name mismatch: %v", err)
	}
	err = d.Client.Do(ctx, http.MethodPost, api.LibvirtDomainsPath, api.LibvirtDomainRequest{Name: "lv1", XML: "<domain"}, nil)
	if !errors.Is(err, api.ErrInvalid) {
		t.Errorf("malformed XML: %v", err)
	}
	if err := d.Client.Do(ctx, http.MethodDelete, api.LibvirtDomainPath("lv1"), nil, nil); err != nil {
		t.Fatal(err)
	}
	if err := d.Client.Do(ctx, http.MethodDelete, api.LibvirtDomainPath("lv1"), nil, nil); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("second delete: %v", err)
	}
}

func TestLibvirtHookPolicyViolations(t *testing.T) {
	needQEMU(t)
	xml := snptest.ReadShared(t, "testdata/libvirt/launch-security-sev-snp.xml")
	pol, err := filepath.Abs("../config/examples/policy.toml")
	if err != nil {
		t.Fatal(err)
	}
	e := newTestEnv(t, "policy_file = \""+pol+"\"\n")
	d := startDaemon(t, e)
	err = d.Client.Do(ctxT(t, time.Minute), http.MethodPost, api.LibvirtDomainsPath, api.LibvirtDomainRequest{Name: "QEMUGuest1", XML: string(xml)}, nil)
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Status != http.StatusUnprocessableEntity || !errors.Is(err, api.ErrPolicy) {
		t.Fatalf("non-conforming domain: %v", err)
	}
	if len(ae.Violations) < 2 {
		t.Fatalf("want every violation listed, got %+v", ae.Violations)
	}
	for _, v := range ae.Violations {
		if v.Rule == "" || v.Message == "" || !strings.Contains(ae.Message, v.Rule) {
			t.Errorf("violation %+v incomplete or missing from the message", v)
		}
	}
}
