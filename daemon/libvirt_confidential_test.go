package daemon

import (
	"context"
	"net/http"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/snpd/snpd/config"
	"github.com/snpd/snpd/daemon/api"
	"github.com/snpd/snpd/daemon/launch"
	"github.com/snpd/snpd/daemon/store"
)

// snpDomain is plainDomain with SEV-SNP launch security: the only kind of libvirt
// domain that has an SNP launch digest.
var snpDomain = strings.Replace(strings.Replace(plainDomain, "<name>lv1</name>", "<name>lv2</name>", 1),
	"</domain>", "<launchSecurity type='sev-snp'><policy>0x30000</policy></launchSecurity></domain>", 1)

// TestLibvirtRegistrationDigestOnlyForSNPDomains registers a plain domain and a sev-snp
// one with a real snpd (platform "none", real QEMU probes, Debian's OVMF): only the
// sev-snp domain gets an expected digest; the plain one's answer and stored record say
// it is not confidential and carry no SNP launch values, while the firmware digest (a
// fact about the file libvirt loads) is kept.
func TestLibvirtRegistrationDigestOnlyForSNPDomains(t *testing.T) {
	needQEMU(t)
	e := newTestEnv(t, "")
	d := startDaemon(t, e)
	ctx := ctxT(t, time.Minute)

	var plain, snp api.LibvirtDomainResponse
	if err := d.Client.Do(ctx, http.MethodPost, api.LibvirtDomainsPath, api.LibvirtDomainRequest{Name: "lv1", XML: plainDomain}, &plain); err != nil {
		t.Fatal(err)
	}
	if plain.ExpectedDigest != "" || plain.Note != api.NotConfidential {
		t.Errorf("plain domain answered %+v, want no expected digest and note %q", plain, api.NotConfidential)
	}
	if err := d.Client.Do(ctx, http.MethodPost, api.LibvirtDomainsPath, api.LibvirtDomainRequest{Name: "lv2", XML: snpDomain}, &snp); err != nil {
		t.Fatal(err)
	}
	// Platform "none": computed for reference, like snpd's own VMs there, and still
	// marked not confidential.
	if len(snp.ExpectedDigest) != 96 || snp.Note != api.NotConfidential {
		t.Errorf("sev-snp domain answered %+v, want a 48-byte digest and note %q", snp, api.NotConfidential)
	}

	d.signal(syscall.SIGTERM)
	<-d.done
	s, err := store.Open(e.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	reg, err := s.LibvirtDomain("lv1")
	if err != nil {
		t.Fatal(err)
	}
	checkNotConfidentialRecord(t, reg.Record)
	if reg.Record.FirmwareSHA256 == "" {
		t.Error("plain domain's record lost the firmware digest")
	}
	reg, err = s.LibvirtDomain("lv2")
	if err != nil {
		t.Fatal(err)
	}
	if reg.Record.ExpectedDigest != snp.ExpectedDigest || reg.Record.Policy != 0x30000 {
		t.Errorf("sev-snp domain's record: digest %q policy %#x, want %q 0x30000", reg.Record.ExpectedDigest, reg.Record.Policy, snp.ExpectedDigest)
	}
}

// checkNotConfidentialRecord fails unless rec claims nothing SEV-SNP.
func checkNotConfidentialRecord(t *testing.T, rec *api.LaunchRecord) {
	t.Helper()
	if rec == nil {
		t.Fatal("registration without a record")
	}
	if rec.Confidential || rec.Note != api.NotConfidential || rec.ExpectedDigest != "" ||
		rec.Policy != 0 || rec.GuestFeatures != 0 || rec.VMMType != "" || rec.VCPUSig != 0 {
		t.Errorf("non-confidential domain's record pretends SEV-SNP: confidential=%v note=%q digest=%q policy=%#x features=%#x vmm=%q sig=%#x",
			rec.Confidential, rec.Note, rec.ExpectedDigest, rec.Policy, rec.GuestFeatures, rec.VMMType, rec.VCPUSig)
	}
	if rec.Name == "" || rec.VCPUs == 0 || rec.MemoryMiB == 0 || rec.CPUModel == "" {
		t.Errorf("record lost what is known about the domain: %+v", rec)
	}
}

// TestLibvirtNonConfidentialOnSNPHost registers a domain without launchSecurity on a
// platform "sev-snp" snpd whose policy allows non-confidential domains, with the real
// launcher (on this host, without SEV-SNP, measuring would fail): the domain is accepted
// without being measured and its record is not confidential, although the host is.
func TestLibvirtNonConfidentialOnSNPHost(t *testing.T) {
	needQEMU(t)
	pol, err := config.LoadPolicy(filepath.Join("..", "config", "examples", "policy.toml"))
	if err != nil {
		t.Fatal(err)
	}
	pol.Libvirt.AllowNonConfidential = true
	s, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	run := t.TempDir()
	l := &launch.Launcher{QEMU: testQEMU, Platform: launch.PlatformSEVSNP, RuntimeDir: run}
	m := NewManager(ManagerOptions{Store: s, Validate: validateDefinition, Policy: pol, Platform: string(launch.PlatformSEVSNP),
		Prepare: launcherPrepare(l), RuntimeDir: run, QEMU: testQEMU})
	defer m.Close()
	reg, err := m.RegisterLibvirt(ctxT(t, time.Minute), api.LibvirtDomainRequest{Name: "lv1", XML: plainDomain})
	if err != nil {
		t.Fatal(err)
	}
	checkNotConfidentialRecord(t, reg.Record)
	if reg.Record.Platform != string(launch.PlatformSEVSNP) {
		t.Errorf("record platform %q, want the host's sev-snp", reg.Record.Platform)
	}
}

// FuzzRegisterLibvirt feeds domain XML to the hook's registration (no policy, platform
// "none", no launcher): it never panics, a refusal stores nothing, and a registration
// has an SNP digest only for a sev-snp domain (the fake launcher gives every one it is
// asked for).
func FuzzRegisterLibvirt(f *testing.F) {
	f.Add("lv1", plainDomain)
	f.Add("lv2", snpDomain)
	f.Add("lv1", "<domain><name>lv1</name><memory>1</memory><os><loader>/nonexistent</loader></os></domain>")
	f.Add("x", "<domain")
	s, err := store.Open(f.TempDir())
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { s.Close() })
	m := NewManager(ManagerOptions{Store: s, Platform: string(launch.PlatformNone), RuntimeDir: f.TempDir(),
		Prepare: func(_ context.Context, vm *config.VM) (*api.LaunchRecord, error) {
			return &api.LaunchRecord{Name: vm.Name, ExpectedDigest: strings.Repeat("ab", 48)}, nil
		}})
	f.Cleanup(m.Close)
	f.Fuzz(func(t *testing.T, name, xml string) {
		_ = s.DeleteLibvirt(name)
		reg, err := m.RegisterLibvirt(context.Background(), api.LibvirtDomainRequest{Name: name, XML: xml})
		if err != nil {
			if _, gerr := s.LibvirtDomain(name); gerr == nil {
				t.Fatalf("refused registration (%v) was stored", err)
			}
			return
		}
		def, err := config.FromLibvirtXML([]byte(xml))
		if err != nil {
			t.Fatalf("registered XML that does not map: %v", err)
		}
		snp := def.Libvirt.LaunchSecurity == "sev-snp"
		if got := reg.Record.ExpectedDigest != ""; got != snp {
			t.Fatalf("launchSecurity %q: expected digest %q", def.Libvirt.LaunchSecurity, reg.Record.ExpectedDigest)
		}
		if !snp && (reg.Record.Confidential || reg.Record.Note != api.NotConfidential) {
			t.Fatalf("non-confidential domain recorded as %+v", reg.Record)
		}
	})
}
