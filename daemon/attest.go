package daemon

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-sev-guest/verify/trust"

	"github.com/snpd/snpd/config"
	"github.com/snpd/snpd/daemon/api"
	"github.com/snpd/snpd/daemon/guestchan"
	dlaunch "github.com/snpd/snpd/daemon/launch"
	"github.com/snpd/snpd/snp"
	"github.com/snpd/snpd/snp/agentproto"
	"github.com/snpd/snpd/snp/launch"
)

// AttestTarget is what the Attestor needs to know about one VM.
type AttestTarget struct {
	// Record is the launch record of the VM's current (or last) run; nil if never launched.
	Record *api.LaunchRecord
	// Running tells whether the guest is up (challenges need it).
	Running bool
	// Channel reaches its agent.
	Channel guestchan.GuestChannel
	// Definition is the VM definition (for the launch-log reference); nil: unknown.
	Definition *config.VM
}

// Attestor relays verifiers' challenges to guests and verifies the answers against the
// launch records snpd made. Safe for concurrent use.
type Attestor struct {
	// Lookup returns a VM's attestation target (errors wrap api.ErrNotFound etc.).
	Lookup func(name string) (*AttestTarget, error)
	// LookupLibvirt returns a registered libvirt domain's target (its registration's
	// record; never running: libvirt owns it). Nil: libvirt domains are not served.
	LookupLibvirt func(name string) (*AttestTarget, error)
	// Verifier verifies reports (roots, certificate cache, KDS getter).
	Verifier *snp.Verifier
	// Roots are the trusted roots Verifier and Cache check against (nil: snp.DefaultRoots).
	// No reference export carries them: roots are the verifier's to choose.
	Roots *snp.Roots
	// Cache is the certificate cache certs import writes to (nil: import refused).
	Cache *snp.CertCache
	// Policy is the host policy (nil: none); its [snp] rules give the policy ceiling.
	Policy *config.Policy
	// MinTCB is the least acceptable REPORTED_TCB (0: none).
	MinTCB uint64
	// PlatformSMT and PlatformTSME are the host platform's SMT and TSME state
	// (attestation.platform_smt_enabled / platform_tsme_enabled), passed on in the trustee
	// export (nil: unknown, left out).
	PlatformSMT, PlatformTSME *bool
	// Now is the clock (nil: time.Now).
	Now func() time.Time
	// Sessions, when set, is told the chain that verified each VM's report, which its
	// guest may then ask for (nil: not kept).
	Sessions *guestchan.GuestSessions
	// Observe, when set, is told how each Attest ("attest") and VerifyReport ("verify")
	// ended: the verdict, or the error when there is none (metrics, event stream).
	Observe func(source, vm string, v *api.Verdict, err error)
}

// NewAttestor builds the Attestor from the daemon config: trusted roots (AMD's, or
// attestation.trusted_roots_file), the certificate cache, KDS fetching only when
// attestation.fetch_from_kds, and the minimum TCB.
func NewAttestor(cfg *config.Daemon, policy *config.Policy, lookup func(string) (*AttestTarget, error)) (*Attestor, error) {
	roots := snp.DefaultRoots()
	if f := cfg.Attestation.TrustedRootsFile; f != "" {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("reading attestation.trusted_roots_file: %w", err)
		}
		if roots, err = snp.ParseRoots(b); err != nil {
			return nil, fmt.Errorf("attestation.trusted_roots_file %s: %w", f, err)
		}
	}
	var minTCB uint64
	if s := cfg.Attestation.MinTCB; s != "" {
		v, err := strconv.ParseUint(strings.TrimPrefix(s, "0x"), 16, 64)
		if err != nil {
			return nil, fmt.Errorf("attestation.min_tcb %q: %w", s, err)
		}
		minTCB = v
	}
	dir := cfg.Attestation.CertCacheDir
	if dir == "" {
		dir = filepath.Join(cfg.StateDir, "certs")
	}
	if !filepath.IsAbs(dir) {
		return nil, fmt.Errorf("attestation.cert_cache_dir %q: must be an absolute path", dir)
	}
	cache := &snp.CertCache{Dir: dir, Roots: roots}
	v := &snp.Verifier{Roots: roots, Cache: cache}
	if cfg.Attestation.FetchFromKDS {
		v.Getter = &trust.RetryHTTPSGetter{Timeout: 30 * time.Second, MaxRetryDelay: 5 * time.Second, Getter: &trust.SimpleHTTPSGetter{}}
	}
	return &Attestor{Lookup: lookup, Verifier: v, Roots: roots, Cache: cache, Policy: policy, MinTCB: minTCB,
		PlatformSMT: cfg.Attestation.PlatformSMTEnabled, PlatformTSME: cfg.Attestation.PlatformTSMEEnabled}, nil
}

func (a *Attestor) now() time.Time {
	if a.Now != nil {
		return a.Now()
	}
	return time.Now()
}

// Attest challenges VM name's guest agent with nonce (1..64 bytes) and verifies its
// report against the launch record. A guest that cannot produce a report (no SEV-SNP
// device, no agent, timeout) is an error wrapping api.ErrUnavailable; a report that fails
// verification is a response whose Verdict is not OK.
func (a *Attestor) Attest(ctx context.Context, name string, nonce []byte) (out *api.AttestResponse, err error) {
	defer func() {
		if a.Observe != nil {
			var v *api.Verdict
			if out != nil {
				v = &out.Verdict
			}
			a.Observe("attest", name, v, err)
		}
	}()
	if len(nonce) < agentproto.MinNonce || len(nonce) > agentproto.MaxNonce {
		return nil, fmt.Errorf("nonce is %d bytes, want %d..%d: %w", len(nonce), agentproto.MinNonce, agentproto.MaxNonce, api.ErrInvalid)
	}
	t, err := a.Lookup(name)
	if err != nil {
		return nil, err
	}
	if t.Record == nil {
		return nil, fmt.Errorf("vm %s has no launch record (never started): %w", name, api.ErrConflict)
	}
	if !t.Running {
		return nil, fmt.Errorf("vm %s is not running: %w", name, api.ErrConflict)
	}
	resp, err := t.Channel.Challenge(ctx, nonce, nil)
	if err != nil {
		if errors.Is(err, guestchan.ErrNoGuestChannel) {
			return nil, fmt.Errorf("vm %s: %w: %w", name, err, api.ErrConflict)
		}
		return nil, fmt.Errorf("attesting vm %s: %w: %w", name, err, api.ErrUnavailable)
	}
	exp, ref, err := a.expected(t.Record)
	if err != nil {
		return nil, err
	}
	exp.Nonce = nonce
	vd := a.Verifier.Verify(ctx, resp.Report, resp.CertTable, exp)
	out = &api.AttestResponse{
		VM: name, Nonce: hex.EncodeToString(nonce), Report: resp.Report, CertTable: resp.CertTable,
		ChainPEM: vd.ChainPEM, Reference: ref, Verdict: wireVerdict(vd), At: a.now().UTC(),
	}
	if vd.Report != nil {
		out.Decoded, _ = json.Marshal(vd.Report)
	}
	if a.Sessions != nil && vd.ChainPEM != "" {
		a.Sessions.RememberChain(name, vd.ChainPEM)
	}
	// Give the guest its own launch record and chain (best effort: the evidence above
	// stands on its own).
	if b, err := json.Marshal(t.Record); err == nil {
		if err := t.Channel.Provision(ctx, b, vd.ChainPEM); err == nil {
			out.Provisioned = true
		}
	}
	return out, nil
}

// VerifyReport checks a report a verifier obtained elsewhere against VM's launch record.
// The binding fields are checked before anything is looked up: a nonce of 1..64 bytes and
// user data of 0..64 (as attest bounds them: the binding hashes the nonce's length in 16
// bits), and with both a nonce and an exact report_data the one must bind the other.
func (a *Attestor) VerifyReport(ctx context.Context, req *api.VerifyRequest) (out *api.VerifyResponse, err error) {
	name, lookup, what := req.VM, a.Lookup, "vm"
	defer func() {
		if a.Observe != nil {
			var v *api.Verdict
			if out != nil {
				v = &out.Verdict
			}
			a.Observe("verify", name, v, err)
		}
	}()
	switch {
	case req.VM != "" && req.LibvirtDomain != "":
		return nil, fmt.Errorf("vm %q and libvirt_domain %q: give one of them: %w", req.VM, req.LibvirtDomain, api.ErrInvalid)
	case req.LibvirtDomain != "":
		name, lookup, what = req.LibvirtDomain, a.lookupLibvirt, "libvirt domain"
	}
	if name == "" {
		return nil, fmt.Errorf("vm or libvirt_domain: required: %w", api.ErrInvalid)
	}
	if err := api.ValidName(name); err != nil {
		return nil, err
	}
	var exp snp.Expected
	dec := func(field, s string) ([]byte, error) {
		if s == "" {
			return nil, nil
		}
		b, err := hex.DecodeString(s)
		if err != nil {
			return nil, fmt.Errorf("%s: not hex: %w", field, api.ErrInvalid)
		}
		return b, nil
	}
	if exp.Nonce, err = dec("nonce", req.Nonce); err != nil {
		return nil, err
	}
	if exp.UserData, err = dec("user_data", req.UserData); err != nil {
		return nil, err
	}
	if exp.ReportData, err = dec("report_data", req.ReportData); err != nil {
		return nil, err
	}
	if exp.ReportData != nil && len(exp.ReportData) != 64 {
		return nil, fmt.Errorf("report_data is %d bytes, want 64: %w", len(exp.ReportData), api.ErrInvalid)
	}
	if exp.Nonce != nil || exp.UserData != nil {
		b, err := agentproto.BindReportData(exp.Nonce, exp.UserData)
		if err != nil {
			return nil, fmt.Errorf("%v: %w", err, api.ErrInvalid)
		}
		if exp.ReportData != nil && !bytes.Equal(exp.ReportData, b[:]) {
			return nil, fmt.Errorf("report_data is not the binding of nonce and user_data: %w", api.ErrInvalid)
		}
	}
	t, err := lookup(name)
	if err != nil {
		return nil, err
	}
	if t.Record == nil {
		return nil, fmt.Errorf("%s %s has no launch record (never started): %w", what, name, api.ErrConflict)
	}
	want, ref, err := a.expected(t.Record)
	if err != nil {
		return nil, err
	}
	want.Nonce, want.UserData, want.ReportData = exp.Nonce, exp.UserData, exp.ReportData
	want.AllowNonConfidential = req.AllowNonConfidential
	raw, certs := req.Report, req.CertTable
	if len(raw) > snp.ReportSize && len(certs) == 0 {
		// The check tool's "bin" form: report immediately followed by the table.
		raw, certs = raw[:snp.ReportSize], raw[snp.ReportSize:]
	}
	vd := a.Verifier.Verify(ctx, raw, certs, want)
	out = &api.VerifyResponse{VM: req.VM, LibvirtDomain: req.LibvirtDomain, ChainPEM: vd.ChainPEM, Reference: ref, Verdict: wireVerdict(vd)}
	if vd.Report != nil {
		out.Decoded, _ = json.Marshal(vd.Report)
	}
	return out, nil
}

func wireVerdict(vd *snp.Verdict) api.Verdict {
	out := api.Verdict{OK: vd.OK, Confidential: vd.Confidential}
	for _, c := range vd.Checks {
		out.Checks = append(out.Checks, api.Check{Name: c.Name, OK: c.OK, Reason: c.Reason})
	}
	return out
}

// expected turns a launch record and the host policy into verification expectations and
// the json reference document.
func (a *Attestor) expected(rec *api.LaunchRecord) (snp.Expected, json.RawMessage, error) {
	ref, err := a.reference(rec)
	if err != nil {
		return snp.Expected{}, nil, err
	}
	exp := snp.Expected{
		Measurement: ref.Measurement, Policy: ref.Policy, HostData: ref.HostData,
		IDKeyDigest: ref.IDKeyDigest, AuthorKeyDigest: ref.AuthorKeyDigest, MinimumTCB: a.MinTCB,
		ProductLine: ref.ProductLine, NotConfidential: ref.NotConfidential,
	}
	if a.Policy != nil {
		c, err := a.Policy.GuestPolicyCeiling()
		if err != nil {
			return snp.Expected{}, nil, err
		}
		exp.PolicyCeiling = &c
	}
	doc, err := snp.ExportReference(ref, snp.FormatJSON)
	if err != nil {
		return snp.Expected{}, nil, fmt.Errorf("%w: %w", err, api.ErrInternal)
	}
	return exp, doc, nil
}

// reference builds the reference values of a launch record.
func (a *Attestor) reference(rec *api.LaunchRecord) (snp.Reference, error) {
	bad := func(field string, err error) (snp.Reference, error) {
		return snp.Reference{}, fmt.Errorf("launch record of %s: %s: %v: %w", rec.Name, field, err, api.ErrInternal)
	}
	hexN := func(field, s string, n int) ([]byte, error) {
		if s == "" {
			return nil, nil
		}
		b, err := hex.DecodeString(s)
		if err == nil && len(b) != n {
			err = fmt.Errorf("%d bytes, want %d", len(b), n)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", field, err)
		}
		return b, nil
	}
	m, err := hexN("expected_digest", rec.ExpectedDigest, 48)
	if err != nil || m == nil {
		return bad("expected_digest", fmt.Errorf("missing or malformed: %v", err))
	}
	hd, err := hexN("host_data", rec.HostData, 32)
	if err != nil {
		return bad("host_data", err)
	}
	idk, err := hexN("id_key_digest", rec.IDKeyDigest, 48)
	if err != nil {
		return bad("id_key_digest", err)
	}
	if rec.IDBlockSHA256 != "" && idk == nil {
		// Fail closed: an ID block was used but the record cannot say which key signed it.
		return bad("id_key_digest", errors.New("an ID block was used but the record has no ID key digest"))
	}
	ak, err := hexN("author_key_digest", rec.AuthorKeyDigest, 48)
	if err != nil {
		return bad("author_key_digest", err)
	}
	if rec.AuthorKey && ak == nil {
		return bad("author_key_digest", errors.New("an author key was used but the record has no author key digest"))
	}
	// The product line is the one the launch read from the host's CPUID, never a guess
	// from the guest's vCPU model: a record without it (platform none, or made before
	// snpd recorded it) exports none, and the verifier must determine it.
	ref := snp.Reference{Name: rec.Name, Measurement: m, Policy: rec.Policy, HostData: hd, IDKeyDigest: idk, AuthorKeyDigest: ak,
		MinimumTCB: a.MinTCB, ProductLine: rec.ProductLine}
	ref.SMTEnabled, ref.TSMEEnabled = a.PlatformSMT, a.PlatformTSME
	ref.NotConfidential = notConfidential(rec)
	return ref, nil
}

// notConfidential says why rec is not the record of a confidential launch; empty when it
// is (platform sev-snp, marked confidential).
func notConfidential(rec *api.LaunchRecord) string {
	if rec.Platform == "sev-snp" && rec.Confidential {
		return ""
	}
	if rec.Platform == "sev-snp" {
		return "the launch record is not marked confidential"
	}
	return fmt.Sprintf("the launch record is not confidential (platform %s)", rec.Platform)
}

// lookupLibvirt is LookupLibvirt, or api.ErrNotFound when libvirt domains are not served.
func (a *Attestor) lookupLibvirt(name string) (*AttestTarget, error) {
	if a.LookupLibvirt == nil {
		return nil, fmt.Errorf("libvirt domain %q is not registered: %w", name, api.ErrNotFound)
	}
	return a.LookupLibvirt(name)
}

// Reference exports VM name's reference values in format (snp.ReferenceFormats). The
// launch-log format re-measures the definition's files with logging and refuses when the
// result is not the recorded digest (files changed since launch).
func (a *Attestor) Reference(name, format string) ([]byte, error) {
	t, err := a.Lookup(name)
	if err != nil {
		return nil, err
	}
	return a.export("vm", name, t, format)
}

// LibvirtReference is Reference for a libvirt domain registered with snpd: the values
// of its registration's record (a domain without sev-snp launch security has none).
func (a *Attestor) LibvirtReference(name, format string) ([]byte, error) {
	t, err := a.lookupLibvirt(name)
	if err != nil {
		return nil, err
	}
	return a.export("libvirt domain", name, t, format)
}

// export renders target t's reference values; what and name name it in errors.
func (a *Attestor) export(what, name string, t *AttestTarget, format string) ([]byte, error) {
	if t.Record == nil {
		return nil, fmt.Errorf("%s %s has no launch record (never started): %w", what, name, api.ErrConflict)
	}
	ref, err := a.reference(t.Record)
	if err != nil {
		return nil, err
	}
	switch format {
	case snp.FormatJSON, snp.FormatTrustee, snp.FormatSevGuestCheck:
	case snp.FormatLaunchLog:
		if t.Definition == nil {
			return nil, fmt.Errorf("%s %s: definition unavailable for the launch log: %w", what, name, api.ErrConflict)
		}
		ups, err := remeasure(t.Definition, ref.Measurement)
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w: %w", what, name, err, api.ErrConflict)
		}
		ref.Updates = ups
	default:
		return nil, fmt.Errorf("unknown reference format %q (want %s): %w", format, strings.Join(snp.ReferenceFormats, ", "), api.ErrInvalid)
	}
	b, err := snp.ExportReference(ref, format)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", err, api.ErrInternal)
	}
	return b, nil
}

// remeasure recomputes the launch digest of vm from its files with page logging and
// checks it against the recorded digest.
func remeasure(vm *config.VM, want []byte) ([]launch.PageUpdate, error) {
	sig, err := launch.CPUSignature(vm.CPUModel)
	if err != nil {
		return nil, fmt.Errorf("cpu model: %w", err)
	}
	vmm, err := launch.ParseVMMType(vm.SNP.VMMType)
	if err != nil {
		return nil, fmt.Errorf("vmm type: %w", err)
	}
	fw, st, err := dlaunch.OpenBootFile("firmware", vm.Firmware)
	if err != nil {
		return nil, fmt.Errorf("opening firmware for the launch log: %w", err)
	}
	defer fw.Close()
	in := launch.MeasureInput{Mode: launch.ModeSNP, Firmware: fw, FirmwareSize: st.Size(), Cmdline: vm.Cmdline,
		VCPUs: vm.VCPUs, VCPUSig: sig, VMM: vmm, GuestFeatures: vm.SNP.GuestFeatures, Log: true}
	for _, f := range []struct {
		path string
		dst  *io.Reader
		name string
	}{{vm.Kernel, &in.Kernel, "kernel"}, {vm.Initrd, &in.Initrd, "initrd"}} {
		if f.path == "" {
			continue
		}
		h, _, err := dlaunch.OpenBootFile(f.name, f.path)
		if err != nil {
			return nil, fmt.Errorf("opening %s for the launch log: %w", f.path, err)
		}
		defer h.Close()
		*f.dst = h
	}
	m, err := launch.Measure(in)
	if err != nil {
		return nil, fmt.Errorf("measuring for the launch log: %w", err)
	}
	if !bytes.Equal(m.Digest, want) {
		return nil, errors.New("the definition's files no longer measure to the recorded digest (changed since launch)")
	}
	return m.Updates, nil
}
