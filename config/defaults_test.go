package config

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestInstalledDefaults: the snpd.toml and policy.toml `make install` puts in /etc/snpd
// decode strictly; the configuration names the installed policy, and the policy refuses
// to load until the operator lists a firmware (fail closed), saying which key to set.
func TestInstalledDefaults(t *testing.T) {
	d, err := LoadDaemon(filepath.Join("defaults", "snpd.toml"))
	if err != nil {
		t.Fatal(err)
	}
	if d.PolicyFile != "/etc/snpd/policy.toml" || d.RunWithoutPolicy || d.Platform != PlatformSEVSNP {
		t.Errorf("installed snpd.toml: policy_file %q, run_without_policy %v, platform %q", d.PolicyFile, d.RunWithoutPolicy, d.Platform)
	}
	_, err = LoadPolicy(filepath.Join("defaults", "policy.toml"))
	if err == nil || !strings.Contains(err.Error(), "firmware: no digest listed") {
		t.Errorf("installed policy.toml loads as is (%v); it must refuse until a firmware is listed", err)
	}
}
