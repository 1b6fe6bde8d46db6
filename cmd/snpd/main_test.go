package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/snpd/snpd/config"
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

// TestNoConfigNoStart: snpd refuses to start without a configuration file, at the
// default path too (it used to run on defaults, with no host policy), and says where it
// looked and where a default comes from.
func TestNoConfigNoStart(t *testing.T) {
	for _, path := range []string{filepath.Join(t.TempDir(), "absent.toml"), config.DefaultConfigPath} {
		if _, err := os.Stat(path); err == nil {
			t.Logf("%s exists on this host; not checking it", path)
			continue
		}
		_, err := buildConfig(path, "", "")
		if err == nil || !strings.Contains(err.Error(), "no configuration at "+path) || !strings.Contains(err.Error(), "make install") {
			t.Errorf("config %s missing: got %v, want a refusal naming the path and make install", path, err)
		}
	}
}

// TestNoPolicyNoStart: a configuration without policy_file does not validate unless it
// says run_without_policy = true, and saying both is an error too.
func TestNoPolicyNoStart(t *testing.T) {
	dir := t.TempDir()
	write := func(body string) string {
		p := filepath.Join(dir, "snpd.toml")
		if err := os.WriteFile(p, []byte("platform = \"none\"\nqemu = \"/bin/true\"\n"+body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, c := range []struct {
		body, want string
	}{
		{"", "policy_file: not set"},
		{"run_without_policy = true\npolicy_file = \"p.toml\"\n", "set one of them"},
		{"run_without_policy = true\n", ""},
		{"policy_file = \"p.toml\"\n", ""},
	} {
		cfg, err := buildConfig(write(c.body), dir, dir)
		if err != nil {
			t.Fatal(err)
		}
		err = cfg.Validate()
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%q: %v", c.body, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%q: got %v, want an error with %q", c.body, err, c.want)
		}
	}
	// And snpd itself exits 1 on the first.
	if code := run([]string{"--config", write(""), "--state-dir", dir, "--runtime-dir", dir}); code != 1 {
		t.Errorf("no policy: exit %d, want 1", code)
	}
}
