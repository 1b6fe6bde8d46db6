package daemon

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/snpd/snpd/config"
	"github.com/snpd/snpd/daemon/api"
	"github.com/snpd/snpd/daemon/launch"
	"github.com/snpd/snpd/daemon/store"
)

// validateDefinition applies a definition's defaults and validates it (every problem),
// refusing boot files that exist but are not regular files (launch.CheckBootFiles).
func validateDefinition(vm *config.VM) error {
	vm.SetDefaults()
	return errors.Join(vm.Validate(), launch.CheckBootFiles(vm))
}

// admitFunc is the Launcher's Admit hook: the host policy check.
type admitFunc = func(*config.VM, *launch.Spec, *api.LaunchRecord) error

// PolicyError lists every host-policy rule a VM or libvirt domain breaks. It wraps
// api.ErrPolicy; the server answers it with 422 and api.PolicyViolations.
type PolicyError struct {
	VM         string
	Violations []config.Violation
}

func (e *PolicyError) Error() string {
	lines := make([]string, len(e.Violations))
	for i := range e.Violations {
		lines[i] = e.Violations[i].String()
	}
	return fmt.Sprintf("host policy refuses %q (%d violations): %s", e.VM, len(lines), strings.Join(lines, "; "))
}

// Unwrap makes errors.Is(err, api.ErrPolicy) true.
func (e *PolicyError) Unwrap() error { return api.ErrPolicy }

// wire converts the violations to their API form.
func (e *PolicyError) wire() api.PolicyViolations {
	return api.PolicyViolations{Kind: api.KindPolicy, Message: e.Error(), Violations: APIViolations(e.Violations)}
}

// loadPolicy loads the host policy named by cfg (nil when none is configured). A policy
// file that does not load is an error: snpd does not start without the policy it was
// told to enforce.
func loadPolicy(cfg *config.Daemon) (*config.Policy, error) {
	if cfg.PolicyFile == "" {
		return nil, nil
	}
	p, err := config.LoadPolicy(cfg.PolicyFile)
	if err != nil {
		return nil, fmt.Errorf("loading host policy: %w", err)
	}
	return p, nil
}

// admission returns the Admit hook checking p (nil hook for a nil policy). The firmware
// facts come from the sealed memfd QEMU will load, the disks' real paths from the
// descriptors QEMU will get (imageDir is snpd's image_dir), the QEMU facts from the
// probed binary.
func admission(p *config.Policy, imageDir string) admitFunc {
	if p == nil {
		return nil
	}
	return func(vm *config.VM, spec *launch.Spec, rec *api.LaunchRecord) error {
		f := config.Facts{Platform: rec.Platform, QEMUPath: rec.QEMUPath, ImageDir: imageDir}
		if spec != nil {
			// The real paths of the descriptors QEMU will get (launch.OpenDisks).
			for _, d := range spec.Disks {
				f.DiskRealPaths = append(f.DiskRealPaths, d.RealPath)
			}
		}
		if v, err := config.ParseVersion(strings.Fields(rec.QEMUVersion + " ")[0]); err == nil {
			f.QEMUVersion = v
		}
		if spec != nil && spec.Firmware != nil {
			launch.SealedFirmwareFacts(spec.Firmware, &f)
		}
		_ = launch.IDAuthFacts(vm, &f)
		if v := p.Check(vm, f); len(v) > 0 {
			return &PolicyError{VM: vm.Name, Violations: v}
		}
		return nil
	}
}

// RegisterLibvirt maps a libvirt domain onto the VM spec, checks the host policy (every
// violation, as a *PolicyError), computes the expected launch digest of a sev-snp domain
// (a domain without sev-snp launchSecurity has none: its record says it is not
// confidential, see nonConfidentialRecord) and stores the registration, replacing an
// earlier one of the same name.
func (m *Manager) RegisterLibvirt(ctx context.Context, req api.LibvirtDomainRequest) (*store.LibvirtRegistration, error) {
	if err := api.ValidName(req.Name); err != nil {
		return nil, err
	}
	if len(req.XML) > config.MaxLibvirtXMLSize {
		return nil, fmt.Errorf("domain XML is %d bytes, more than the %d allowed: %w", len(req.XML), config.MaxLibvirtXMLSize, api.ErrTooLarge)
	}
	var vm *config.VM
	var violations []config.Violation
	var err error
	if m.policy != nil {
		vm, violations, err = launch.CheckLibvirtDomain(ctx, m.policy, []byte(req.XML), m.platform, m.qemu, m.imageDir)
	} else {
		vm, err = config.FromLibvirtXML([]byte(req.XML))
	}
	if err != nil {
		return nil, fmt.Errorf("mapping libvirt domain %q: %w: %w", req.Name, err, api.ErrInvalid)
	}
	if vm.Name != req.Name {
		return nil, fmt.Errorf("domain XML names %q, the hook was called for %q: %w", vm.Name, req.Name, api.ErrInvalid)
	}
	// The domain's own ID block, as far as it can be checked before measuring (with or
	// without a policy: the AMD-SP refuses a launch with a block that does not match).
	violations = append(violations, launch.CheckIDBlock(vm, nil)...)
	if len(violations) > 0 {
		return nil, &PolicyError{VM: vm.Name, Violations: violations}
	}
	var rec *api.LaunchRecord
	if vm.Libvirt != nil && vm.Libvirt.LaunchSecurity == "sev-snp" {
		if m.prepare == nil {
			return nil, fmt.Errorf("no launcher to measure libvirt domains: %w", api.ErrUnavailable)
		}
		// The error keeps prepare's kind: a definition problem (its files, its values)
		// is api.ErrInvalid (400), a host failure has none (500).
		if rec, err = m.prepare(ctx, vm); err != nil {
			return nil, fmt.Errorf("computing the expected digest of %q: %w", vm.Name, err)
		}
		digest, err := hex.DecodeString(rec.ExpectedDigest)
		if err != nil || len(digest) != 48 {
			return nil, fmt.Errorf("computing the expected digest of %q: got %q: %w", vm.Name, rec.ExpectedDigest, api.ErrInternal)
		}
		if v := launch.CheckIDBlock(vm, digest); len(v) > 0 {
			return nil, &PolicyError{VM: vm.Name, Violations: v}
		}
	} else if rec, err = nonConfidentialRecord(vm, m.platform); err != nil {
		// Only reached when the policy allowed the domain (or there is none).
		return nil, fmt.Errorf("recording libvirt domain %q: %w", vm.Name, err)
	}
	def, err := json.Marshal(vm)
	if err != nil {
		return nil, fmt.Errorf("encoding domain %q: %w", vm.Name, err)
	}
	reg := &store.LibvirtRegistration{Name: vm.Name, XML: req.XML, Definition: def, Record: rec, RegisteredAt: time.Now().UTC()}
	if err := m.store.PutLibvirt(reg); err != nil {
		return nil, err
	}
	m.log.Info("libvirt domain registered", "vm", vm.Name, "expected_digest", rec.ExpectedDigest)
	return reg, nil
}

// LibvirtDomains lists the registered libvirt domains, in name order.
func (m *Manager) LibvirtDomains() ([]api.LibvirtDomainSummary, error) {
	regs, err := m.store.ListLibvirt()
	if err != nil {
		return nil, err
	}
	out := make([]api.LibvirtDomainSummary, 0, len(regs))
	for i := range regs {
		out = append(out, libvirtSummary(&regs[i]))
	}
	return out, nil
}

// LibvirtDomain returns one registered libvirt domain (api.ErrNotFound if none).
func (m *Manager) LibvirtDomain(name string) (*api.LibvirtDomain, error) {
	if err := api.ValidName(name); err != nil {
		return nil, err
	}
	reg, err := m.store.LibvirtDomain(name)
	if err != nil {
		return nil, err
	}
	return &api.LibvirtDomain{LibvirtDomainSummary: libvirtSummary(reg), XML: reg.XML, Definition: reg.Definition, Record: reg.Record}, nil
}

func libvirtSummary(reg *store.LibvirtRegistration) api.LibvirtDomainSummary {
	s := api.LibvirtDomainSummary{Name: reg.Name, RegisteredAt: reg.RegisteredAt}
	if r := reg.Record; r != nil {
		s.Platform, s.Confidential, s.Note, s.ExpectedDigest = r.Platform, r.Confidential, r.Note, r.ExpectedDigest
		s.VCPUs, s.CPUModel, s.MemoryMiB = r.VCPUs, r.CPUModel, r.MemoryMiB
	}
	return s
}

// UnregisterLibvirt drops a libvirt domain's registration (api.ErrNotFound if none).
func (m *Manager) UnregisterLibvirt(name string) error {
	if err := api.ValidName(name); err != nil {
		return err
	}
	return m.store.DeleteLibvirt(name)
}

// nonConfidentialRecord is the record of a libvirt domain without sev-snp launchSecurity
// (allowed by the policy's allow_non_confidential, or on platform "none"). Such a guest
// has no SNP launch digest, policy, guest features or VMSA, so the record carries none
// and says it is not confidential; it keeps what is true of it: the digests of the boot
// files libvirt names, vCPUs, CPU model, memory, cmdline. Nothing is measured, so a
// firmware no SNP launch could use (SeaBIOS, a pflash OVMF) is no error.
func nonConfidentialRecord(vm *config.VM, platform string) (*api.LaunchRecord, error) {
	r := &api.LaunchRecord{
		Name: vm.Name, Platform: platform, Note: api.NotConfidential,
		Cmdline: vm.Cmdline, VCPUs: vm.VCPUs, CPUModel: vm.CPUModel, MemoryMiB: vm.MemoryMiB,
	}
	// SealFile rather than a plain hash: the same regular-file check and size bounds as
	// a launch; the memfd is dropped right away.
	digest := func(name, path string, max int64) (*launch.SealedFile, error) {
		if path == "" {
			return nil, nil
		}
		return launch.SealFile(name, path, max)
	}
	fw, err := digest("firmware", vm.Firmware, launch.MaxFirmwareSize)
	if err != nil {
		return nil, fmt.Errorf("hashing boot files: %w", err)
	}
	if fw != nil {
		r.FirmwareSHA256, r.FirmwareSHA384, r.FirmwareSize = hex.EncodeToString(fw.SHA256[:]), hex.EncodeToString(fw.SHA384[:]), fw.Size
		fw.Close()
	}
	k, err := digest("kernel", vm.Kernel, launch.MaxKernelSize)
	if err != nil {
		return nil, fmt.Errorf("hashing boot files: %w", err)
	}
	if k != nil {
		r.KernelSHA256 = hex.EncodeToString(k.SHA256[:])
		k.Close()
	}
	i, err := digest("initrd", vm.Initrd, launch.MaxInitrdSize)
	if err != nil {
		return nil, fmt.Errorf("hashing boot files: %w", err)
	}
	if i != nil {
		r.InitrdSHA256 = hex.EncodeToString(i.SHA256[:])
		i.Close()
	}
	return r, nil
}

// launcherPrepare adapts Launcher.Prepare: measure without starting anything.
func launcherPrepare(l *launch.Launcher) func(context.Context, *config.VM) (*api.LaunchRecord, error) {
	return func(ctx context.Context, vm *config.VM) (*api.LaunchRecord, error) {
		spec, rec, err := l.Prepare(ctx, vm)
		if err != nil {
			return nil, err
		}
		spec.Close()
		return rec, nil
	}
}

// APIViolations converts policy violations to their wire form.
func APIViolations(vs []config.Violation) []api.Violation {
	out := make([]api.Violation, len(vs))
	for i, v := range vs {
		out[i] = api.Violation{Rule: v.Rule, Value: v.Value, Message: v.Message}
	}
	return out
}
