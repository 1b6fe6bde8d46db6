package daemon

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/snpd/snpd/daemon/api"
	"github.com/snpd/snpd/snp"
	"github.com/snpd/snpd/snp/agentproto"
	"github.com/snpd/snpd/snp/snptest"
)

// TestLibvirtDomainsServedToReaders: libvirt domains the hook registered with a real snpd
// (platform none) are read back over the API by a read-role client: listed in name
// order, shown one by one with the record snpd made, given reference values in every
// format (a domain without sev-snp launch security has none: 409), and verified against
// with POST /v1/verify's libvirt_domain, which is never confused with an snpd VM of the
// same name. snpctl does the same by name: libvirt list|show, reference and verify
// (taking the one that exists, refusing a name that is both an snpd VM and a registered
// domain unless told which), and vm list marks the domains libvirt owns.
func TestLibvirtDomainsServedToReaders(t *testing.T) {
	needQEMU(t)
	e := newTestEnv(t, "")
	d := startDaemon(t, e)
	ctx := ctxT(t, 2*time.Minute)
	c := d.Client

	if l, err := c.LibvirtDomains(ctx); err != nil || l == nil || len(l) != 0 {
		t.Fatalf("no registrations: %v %#v", err, l)
	}
	if status, body := rawRequest(t, e.Socket, http.MethodGet, api.LibvirtDomainsPath, nil); status != 200 || body != "{\"domains\":[]}\n" {
		t.Fatalf("empty list: %d %q", status, body)
	}
	var snpResp api.LibvirtDomainResponse
	for _, r := range []api.LibvirtDomainRequest{{Name: "lv2", XML: snpDomain}, {Name: "lv1", XML: plainDomain}} {
		var resp api.LibvirtDomainResponse
		if err := c.Do(ctx, http.MethodPost, api.LibvirtDomainsPath, r, &resp); err != nil {
			t.Fatal(err)
		}
		if r.Name == "lv2" {
			snpResp = resp
		}
	}
	l, err := c.LibvirtDomains(ctx)
	if err != nil || len(l) != 2 || l[0].Name != "lv1" || l[1].Name != "lv2" {
		t.Fatalf("list: %v %+v", err, l)
	}
	if l[0].ExpectedDigest != "" || l[0].Confidential || l[1].ExpectedDigest != snpResp.ExpectedDigest || l[1].Platform != "none" ||
		l[1].Confidential || l[1].VCPUs != 1 || l[1].MemoryMiB != 128 || l[1].CPUModel != "EPYC-v4" || l[1].RegisteredAt.IsZero() {
		t.Fatalf("list rows: %+v", l)
	}
	dom, err := c.LibvirtDomain(ctx, "lv2")
	if err != nil || dom.Record == nil || dom.Record.ExpectedDigest != snpResp.ExpectedDigest || dom.XML != snpDomain ||
		!bytes.Contains(dom.Definition, []byte(`"firmware":"/usr/share/ovmf/OVMF.fd"`)) || dom.Record.Policy != 0x30000 {
		t.Fatalf("show lv2: %v %+v", err, dom)
	}
	if _, err := c.LibvirtDomain(ctx, "nosuch"); !isKind(err, api.ErrNotFound) {
		t.Fatalf("show of an unregistered domain: %v", err)
	}

	// Reference values of the sev-snp domain, every format; none for the plain one.
	for _, f := range api.ReferenceFormats {
		var b bytes.Buffer
		if err := c.Do(ctx, http.MethodGet, api.LibvirtReferencePath("lv2", f), nil, &b); err != nil {
			t.Fatalf("reference %s: %v", f, err)
		}
		if f == snp.FormatLaunchLog {
			if got, err := snp.ReplayLaunchLog(b.Bytes()); err != nil || hex.EncodeToString(got) != snpResp.ExpectedDigest {
				t.Fatalf("the libvirt domain's launch log does not replay to its digest: %v", err)
			}
		}
		if f == snp.FormatJSON && (!strings.Contains(b.String(), snpResp.ExpectedDigest) || !strings.Contains(b.String(), `"confidential": false`)) {
			t.Fatalf("json reference:\n%s", b.String())
		}
	}
	err = c.Do(ctx, http.MethodGet, api.LibvirtReferencePath("lv1", "json"), nil, nil)
	if !isKind(err, api.ErrConflict) || !strings.Contains(err.Error(), "no SEV-SNP launch digest") {
		t.Fatalf("reference of a domain without sev-snp launch security: %v", err)
	}
	// The VM route does not serve libvirt domains, nor the other way round.
	if err := c.Do(ctx, http.MethodGet, api.ReferencePath("lv2", "json"), nil, nil); !isKind(err, api.ErrNotFound) {
		t.Fatalf("vm reference of a libvirt domain: %v", err)
	}

	// Verify a report against the registration.
	signer, err := snptest.NewSigner(snptest.SignerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	nonce := []byte("libvirt verifier")
	rd, err := agentproto.BindReportData(nonce, nil)
	if err != nil {
		t.Fatal(err)
	}
	f := snptest.Fields{Policy: 0x30000, ReportData: rd}
	digest, _ := hex.DecodeString(snpResp.ExpectedDigest)
	copy(f.Measurement[:], digest)
	good, err := signer.Report(f)
	if err != nil {
		t.Fatal(err)
	}
	req := api.VerifyRequest{LibvirtDomain: "lv2", Report: bytes.Clone(good), CertTable: signer.CertTable(), Nonce: hex.EncodeToString(nonce), AllowNonConfidential: true}
	vr, err := c.Verify(ctx, &req)
	if err != nil || vr.LibvirtDomain != "lv2" || vr.VM != "" {
		t.Fatalf("verify against lv2: %v %+v", err, vr)
	}
	// snpd trusts AMD's roots, not the test chain: the chain fails, the launch values
	// (measurement, policy, nonce) match the registration.
	for _, name := range []string{snp.CheckMeasurement, snp.CheckPolicy, snp.CheckReportData, snp.CheckConfidential} {
		if ck := findCheck(vr.Verdict, name); !ck.OK {
			t.Errorf("verify against lv2: check %s: %+v", name, ck)
		}
	}
	if vr.Verdict.OK || findCheck(vr.Verdict, snp.CheckCertificate).OK {
		t.Errorf("a test-chain report passed against AMD's roots: %+v", vr.Verdict)
	}
	req.Report[0x90] ^= 1 // MEASUREMENT
	if vr, err = c.Verify(ctx, &req); err != nil || findCheck(vr.Verdict, snp.CheckMeasurement).OK {
		t.Fatalf("another measurement against lv2: %v %+v", err, vr)
	}
	req.VM = "lv2"
	if _, err := c.Verify(ctx, &req); !isKind(err, api.ErrInvalid) {
		t.Fatalf("vm and libvirt_domain both: %v", err)
	}
	req.LibvirtDomain = ""
	if _, err := c.Verify(ctx, &req); !isKind(err, api.ErrNotFound) {
		t.Fatalf("vm lv2 (only a libvirt domain of that name): %v", err)
	}
	req.VM, req.LibvirtDomain = "", "lv1"
	if _, err := c.Verify(ctx, &req); !isKind(err, api.ErrConflict) {
		t.Fatalf("verify against a domain without sev-snp launch security: %v", err)
	}

	// snpctl, as a member of the read group only.
	if os.Geteuid() != 0 {
		t.Skip("running snpctl as a read-only user needs root")
	}
	bin := buildSnpctl(t)
	read := func(args ...string) (int, string, string) {
		return snpctlAs(t, bin, e.Socket, testUID, []int{testReadGID}, args...)
	}
	code, out, errOut := read("libvirt", "list")
	if code != 0 || !strings.Contains(out, "NAME") || !regexpLine(out, `^lv1 +\S+ +no \(platform none\) +1 +128MiB +-$`) ||
		!regexpLine(out, `^lv2 +\S+ +no \(platform none\) +1 +128MiB +`+snpResp.ExpectedDigest[:16]+`…$`) {
		t.Fatalf("libvirt list: exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut = read("libvirt", "show", "lv2")
	if code != 0 || !strings.Contains(out, "Expected digest:") || !strings.Contains(out, snpResp.ExpectedDigest) || !strings.Contains(out, "libvirt domain") {
		t.Fatalf("libvirt show: exit %d\n%s%s", code, out, errOut)
	}
	code, out, _ = read("--json", "libvirt", "show", "lv2")
	var got api.LibvirtDomain
	if err := json.Unmarshal([]byte(out), &got); code != 0 || err != nil || got.Record == nil || got.Record.ExpectedDigest != snpResp.ExpectedDigest {
		t.Fatalf("libvirt show --json: exit %d %v\n%s", code, err, out)
	}
	if code, _, errOut = read("libvirt", "show", "nosuch"); code != 1 || !strings.Contains(errOut, "not registered") {
		t.Fatalf("libvirt show nosuch: exit %d %s", code, errOut)
	}
	// reference by name: the registration, as the only guest of that name.
	code, out, errOut = read("reference", "lv2", "--format", "json")
	if code != 0 || !strings.Contains(out, snpResp.ExpectedDigest) {
		t.Fatalf("reference lv2: exit %d\n%s%s", code, out, errOut)
	}
	if code, _, errOut = read("reference", "lv2", "--snpd-vm"); code != 1 || !strings.Contains(errOut, "not defined") {
		t.Fatalf("reference lv2 --snpd-vm: exit %d %s", code, errOut)
	}
	// verify by name.
	work, err := os.MkdirTemp("", "snpd-lvread-") // readable by the test uid, unlike t.TempDir's parent
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(work) })
	os.Chmod(work, 0o755)
	goodPath := filepath.Join(work, "good.bin")
	if err := os.WriteFile(goodPath, append(bytes.Clone(good), signer.CertTable()...), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errOut = read("verify", "--vm", "lv2", "--report", goodPath, "--nonce", hex.EncodeToString(nonce))
	if code != 1 || !strings.Contains(out, "FAIL  confidential") || !strings.Contains(out, "FAIL  certificate-chain") || strings.Contains(out, "FAIL  measurement") {
		t.Fatalf("verify --vm lv2: exit %d\n%s%s", code, out, errOut)
	}
	// A name that is both an snpd VM and a registered domain is refused unless told which.
	mustDefine(t, c, "lv2", "")
	code, _, errOut = read("reference", "lv2")
	if code != 1 || !strings.Contains(errOut, `"lv2" is both a VM defined in snpd and a libvirt domain registered with snpd: say which with --snpd-vm or --libvirt`) {
		t.Fatalf("reference of an ambiguous name: exit %d %s", code, errOut)
	}
	if code, _, errOut = read("verify", "--vm", "lv2", "--report", goodPath, "--nonce", hex.EncodeToString(nonce)); code != 1 || !strings.Contains(errOut, "is both") {
		t.Fatalf("verify of an ambiguous name: exit %d %s", code, errOut)
	}
	if code, out, errOut = read("reference", "lv2", "--libvirt"); code != 0 || !strings.Contains(out, snpResp.ExpectedDigest) {
		t.Fatalf("reference lv2 --libvirt: exit %d\n%s%s", code, out, errOut)
	}
	if code, _, errOut = read("reference", "lv2", "--snpd-vm"); code != 1 || !strings.Contains(errOut, "no launch record") {
		t.Fatalf("reference lv2 --snpd-vm (defined, never started): exit %d %s", code, errOut)
	}
	// vm list: snpd's VMs, then the domains libvirt owns.
	code, out, errOut = read("vm", "list")
	vmsPart, lvPart, ok := strings.Cut(out, "\nlibvirt domains (owned by libvirt, registered by the hook):\n")
	if code != 0 || !ok || !regexpLine(vmsPart, `^lv2 +stopped `) || strings.Contains(vmsPart, "lv1") ||
		!regexpLine(lvPart, `^lv1 `) || !regexpLine(lvPart, `^lv2 `) {
		t.Fatalf("vm list: exit %d\n%s%s", code, out, errOut)
	}
	code, out, _ = read("--json", "vm", "list")
	var both struct {
		VMs            []api.VMSummary            `json:"vms"`
		LibvirtDomains []api.LibvirtDomainSummary `json:"libvirt_domains"`
	}
	if err := json.Unmarshal([]byte(out), &both); code != 0 || err != nil || len(both.VMs) != 1 || len(both.LibvirtDomains) != 2 {
		t.Fatalf("vm list --json: exit %d %v\n%s", code, err, out)
	}
	if code, _, errOut = read("vm", "show", "lv1"); code != 1 || !strings.Contains(errOut, "snpctl libvirt show lv1") {
		t.Fatalf("vm show of a libvirt domain: exit %d %s", code, errOut)
	}
}

// regexpLine reports whether some line of s matches re.
func regexpLine(s, re string) bool {
	return regexp.MustCompile("(?m)" + re).MatchString(s)
}
