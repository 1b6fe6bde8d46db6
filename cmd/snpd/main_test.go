package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestBuildConfigOverrides(t *testing.T) {
	cfg, err := buildConfig("../../config/examples/snpd.toml", "st", "/tmp/snpd-rt")
	if err != nil {
		t.Fatal(err)
	}
	cwd, _ := os.Getwd()
	if cfg.StateDir != filepath.Join(cwd, "st") {
		t.Errorf("state dir %q: a relative flag resolves against the working directory", cfg.StateDir)
	}
	if cfg.RuntimeDir != "/tmp/snpd-rt" || cfg.Socket != "/tmp/snpd-rt/snpd.sock" {
		t.Errorf("runtime dir %q, socket %q: the socket must follow --runtime-dir", cfg.RuntimeDir, cfg.Socket)
	}
	abs, _ := filepath.Abs("../../config/examples/policy.toml")
	if cfg.PolicyFile != abs {
		t.Errorf("policy file %q, want %q (relative to the config file)", cfg.PolicyFile, abs)
	}
	if err := cfg.Validate(); err != nil && !strings.Contains(err.Error(), "qemu") {
		t.Errorf("example config with overrides does not validate: %v", err)
	}
}

func TestRunRejectsBadInvocations(t *testing.T) {
	if code := run([]string{"--nope"}); code != 2 {
		t.Errorf("unknown flag: exit %d, want 2", code)
	}
	if code := run([]string{"extra"}); code != 2 {
		t.Errorf("stray argument: exit %d, want 2", code)
	}
	dir := t.TempDir()
	bad := filepath.Join(dir, "snpd.toml")
	if err := os.WriteFile(bad, []byte("platform = \"none\"\nbogus = 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if code := run([]string{"--config", bad, "--state-dir", dir, "--runtime-dir", dir}); code != 1 {
		t.Errorf("unknown key: exit %d, want 1", code)
	}
	if code := run([]string{"--config", filepath.Join(dir, "missing.toml")}); code != 1 {
		t.Errorf("missing explicit config: exit %d, want 1", code)
	}
}
