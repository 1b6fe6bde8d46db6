package daemon

import (
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/snpd/snpd/config"
	"github.com/snpd/snpd/daemon/api"
)

// validateDefinition applies a definition's defaults and validates it (every problem).
func validateDefinition(vm *config.VM) error {
	vm.SetDefaults()
	return vm.Validate()
}

// admitFunc is the Launcher's Admit hook: the host policy check.
type admitFunc = func(*config.VM, *Spec, *api.LaunchRecord) error

// loadAdmission loads the host policy named by cfg (nil hook when none is configured).
// A policy file that does not load is an error: snpd does not start without the policy
// it was told to enforce.
func loadAdmission(cfg *config.Daemon) (admitFunc, error) {
	if cfg.PolicyFile == "" {
		return nil, nil
	}
	p, err := config.LoadPolicy(cfg.PolicyFile)
	if err != nil {
		return nil, fmt.Errorf("loading host policy: %w", err)
	}
	return func(vm *config.VM, spec *Spec, rec *api.LaunchRecord) error {
		v := p.Check(vm, factsFromRecord(rec, spec))
		if len(v) == 0 {
			return nil
		}
		lines := make([]string, len(v))
		for i := range v {
			lines[i] = v[i].String()
		}
		return fmt.Errorf("host policy refuses vm %q: %s: %w", vm.Name, strings.Join(lines, "; "), api.ErrPolicy)
	}, nil
}

// factsFromRecord fills the policy facts from what the launch measured (the sealed
// bytes QEMU will load).
func factsFromRecord(rec *api.LaunchRecord, spec *Spec) config.Facts {
	f := config.Facts{Platform: rec.Platform, QEMUPath: rec.QEMUPath}
	f.FirmwareSHA256, _ = hex.DecodeString(rec.FirmwareSHA256)
	f.FirmwareSHA384, _ = hex.DecodeString(rec.FirmwareSHA384)
	if v, err := config.ParseVersion(strings.Fields(rec.QEMUVersion + " ")[0]); err == nil {
		f.QEMUVersion = v
	}
	f.FirmwareHasKernelHashes = spec != nil && rec.KernelHashes
	return f
}
