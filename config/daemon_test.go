package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLoadDaemonExampleResolvesRelativePaths(t *testing.T) {
	d, err := LoadDaemon(filepath.Join("examples", "snpd.toml"))
	if err != nil {
		t.Fatal(err)
	}
	abs, _ := filepath.Abs("examples")
	if d.PolicyFile != filepath.Join(abs, "policy.toml") {
		t.Errorf("policy_file = %q, want it resolved against the config's directory", d.PolicyFile)
	}
	if d.Platform != PlatformNone {
		t.Errorf("platform = %q", d.Platform)
	}
	d.SetDefaults()
	if d.Socket != "/run/snpd/snpd.sock" {
		t.Errorf("socket default = %q", d.Socket)
	}
	if time.Duration(d.StopTimeout) != 30*time.Second {
		t.Errorf("stop_timeout = %v", time.Duration(d.StopTimeout))
	}
	if _, err := os.Stat(d.QEMU); err == nil {
		if err := d.Validate(); err != nil {
			t.Errorf("example does not validate: %v", err)
		}
	}
}

func TestDaemonDefaults(t *testing.T) {
	var d Daemon
	d.RuntimeDir = "/tmp/r"
	d.SetDefaults()
	if d.StateDir != DefaultStateDir || d.Socket != "/tmp/r/snpd.sock" || d.Platform != PlatformSEVSNP || d.GuestChannel.VsockPort != DefaultVsockPort {
		t.Fatalf("defaults: %+v", d)
	}
}

func TestDaemonStrictUnknownKeyAndEveryProblem(t *testing.T) {
	var d Daemon
	err := DecodeStrict("snpd.toml", []byte("platform = \"none\"\nstate_dirr = \"/x\"\n"), &d)
	if err == nil || !strings.Contains(err.Error(), `snpd.toml:2: unknown key "state_dirr"`) {
		t.Fatalf("got %v", err)
	}
	d = Daemon{Platform: "sev", StateDir: "rel", QEMU: "/nonexistent/qemu", OperateGroup: "bad group!", StopTimeout: Duration(-time.Second)}
	d.SetDefaults()
	err = d.Validate()
	if err == nil {
		t.Fatal("invalid config accepted")
	}
	for _, want := range []string{"platform \"sev\"", "state_dir \"rel\"", "qemu:", "operate_group", "stop_timeout"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
}

// TestDaemonPlatformFacts: attestation.platform_smt_enabled/platform_tsme_enabled are
// unset (nil) unless given, false when given false, and not booleans otherwise.
func TestDaemonPlatformFacts(t *testing.T) {
	var d Daemon
	if err := DecodeStrict("x", []byte("[attestation]\nmin_tcb = \"0x1\"\n"), &d); err != nil {
		t.Fatal(err)
	}
	d.SetDefaults()
	if d.Attestation.PlatformSMTEnabled != nil || d.Attestation.PlatformTSMEEnabled != nil {
		t.Fatal("platform facts set without being given")
	}
	d = Daemon{}
	if err := DecodeStrict("x", []byte("[attestation]\nplatform_smt_enabled = false\nplatform_tsme_enabled = true\n"), &d); err != nil {
		t.Fatal(err)
	}
	if s, m := d.Attestation.PlatformSMTEnabled, d.Attestation.PlatformTSMEEnabled; s == nil || *s || m == nil || !*m {
		t.Fatalf("smt %v tsme %v", s, m)
	}
	if err := DecodeStrict("x", []byte("[attestation]\nplatform_smt_enabled = \"yes\"\n"), &d); err == nil || !strings.HasPrefix(err.Error(), "x:2") {
		t.Fatalf("a string for a boolean: %v", err)
	}
}

func TestDaemonDurationText(t *testing.T) {
	var d Daemon
	if err := DecodeStrict("x", []byte("stop_timeout = \"1m30s\"\n"), &d); err != nil {
		t.Fatal(err)
	}
	if time.Duration(d.StopTimeout) != 90*time.Second {
		t.Fatalf("got %v", time.Duration(d.StopTimeout))
	}
	if err := DecodeStrict("x", []byte("stop_timeout = \"soon\"\n"), &d); err == nil || !strings.HasPrefix(err.Error(), "x:1") {
		t.Fatalf("bad duration: %v", err)
	}
	b, _ := d.StopTimeout.MarshalText()
	if string(b) != "1m30s" {
		t.Fatalf("MarshalText = %s", b)
	}
}

func FuzzDecodeDaemon(f *testing.F) {
	if b, err := os.ReadFile(filepath.Join("examples", "snpd.toml")); err == nil {
		f.Add(b)
	}
	f.Add([]byte("platform = \"none\"\n[guest_channel]\nvsock_port = 1\n"))
	f.Add([]byte("stop_timeout = \"-5s\"\nsocket = \"rel\"\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var d Daemon
		if err := DecodeStrict("f.toml", data, &d); err != nil {
			if strings.Contains(err.Error(), "\n") && !strings.Contains(err.Error(), "unknown key") {
				t.Fatalf("multi-line decode error: %q", err)
			}
			return
		}
		d.ResolvePaths("/etc/snpd")
		d.SetDefaults()
		_ = d.Validate()
		for _, p := range []string{d.StateDir, d.RuntimeDir, d.Socket} {
			if !filepath.IsAbs(p) {
				t.Fatalf("path %q not absolute after ResolvePaths", p)
			}
		}
	})
}
