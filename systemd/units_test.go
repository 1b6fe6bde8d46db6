package systemd

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/coreos/go-systemd/v22/unit"
)

// unitValues reads a unit file and returns section.Name -> values in order.
func unitValues(t *testing.T, file string) map[string][]string {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	opts, err := unit.DeserializeOptions(f)
	if err != nil {
		t.Fatalf("parsing %s: %v", file, err)
	}
	m := map[string][]string{}
	for _, o := range opts {
		m[o.Section+"."+o.Name] = append(m[o.Section+"."+o.Name], o.Value)
	}
	return m
}

func TestServiceUnitSettings(t *testing.T) {
	u := unitValues(t, "snpd.service")
	for key, want := range map[string]string{
		"Service.Type":                     "notify",
		"Service.NotifyAccess":             "main",
		"Service.WatchdogSec":              "30",
		"Service.ExecStart":                "/usr/local/bin/snpd --config /etc/snpd/snpd.toml",
		"Service.Restart":                  "on-failure",
		"Service.CPUWeight":                "200",
		"Service.OOMPolicy":                "continue",
		"Service.StateDirectory":           "snpd",
		"Service.RuntimeDirectory":         "snpd",
		"Service.RuntimeDirectoryPreserve": "yes",
		"Service.ProtectSystem":            "strict",
		"Service.ProtectHome":              "yes",
		"Service.PrivateTmp":               "yes",
		"Service.DevicePolicy":             "closed",
		"Service.NoNewPrivileges":          "yes",
		"Service.RestrictAddressFamilies":  "AF_UNIX AF_VSOCK AF_NETLINK",
		"Service.LockPersonality":          "yes",
		"Service.ProtectKernelTunables":    "yes",
		"Service.ProtectKernelModules":     "yes",
		"Service.ProtectControlGroups":     "yes",
		"Service.SystemCallArchitectures":  "native",
		"Service.CapabilityBoundingSet":    "CAP_NET_ADMIN CAP_CHOWN",
		"Install.Also":                     "snpd.socket",
	} {
		if got := u[key]; len(got) != 1 || got[0] != want {
			t.Errorf("%s = %q, want exactly %q", key, got, want)
		}
	}
	devices := strings.Join(u["Service.DeviceAllow"], ",")
	for _, d := range []string{"/dev/kvm rw", "/dev/sev rw", "/dev/net/tun rw"} {
		if !strings.Contains(devices, d) {
			t.Errorf("DeviceAllow lacks %q (have %s)", d, devices)
		}
	}
	// QEMU's TCG writes generated code to W+X memory and runs under this unit.
	if v, ok := u["Service.MemoryDenyWriteExecute"]; ok {
		t.Errorf("MemoryDenyWriteExecute=%v is set; it breaks QEMU TCG", v)
	}
	for _, key := range []string{"Service.User", "Service.AmbientCapabilities"} {
		if v := strings.Join(u[key], ""); v != "" {
			t.Errorf("%s=%q, want unset or empty", key, v)
		}
	}
}

func TestSocketUnitSettings(t *testing.T) {
	u := unitValues(t, "snpd.socket")
	for key, want := range map[string]string{
		"Socket.ListenStream":       "/run/snpd/snpd.sock",
		"Socket.SocketMode":         "0660",
		"Socket.SocketGroup":        "snpd",
		"Socket.FileDescriptorName": APIName,
		"Install.WantedBy":          "sockets.target",
	} {
		if got := u[key]; len(got) != 1 || got[0] != want {
			t.Errorf("%s = %q, want exactly %q", key, got, want)
		}
	}
	if err := checkFDName(APIName); err != nil {
		t.Errorf("APIName: %v", err)
	}
}

func TestSysusersCreatesSocketGroup(t *testing.T) {
	b, err := os.ReadFile("snpd.sysusers")
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^g\s+snpd\s+-\s*$`).Match(b) {
		t.Errorf("snpd.sysusers does not create group snpd (snpd.socket's SocketGroup):\n%s", b)
	}
	// Apply it for real to an empty root directory.
	p, err := exec.LookPath("systemd-sysusers")
	if err != nil {
		t.Skip("systemd-sysusers not installed (Debian package systemd): cannot apply snpd.sysusers")
	}
	root := t.TempDir()
	if err := os.Mkdir(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	abs, _ := filepath.Abs("snpd.sysusers")
	cmd := exec.Command(p, "--root="+root, abs)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, out)
	}
	group, err := os.ReadFile(filepath.Join(root, "etc", "group"))
	if err != nil || !regexp.MustCompile(`(?m)^snpd:x:[0-9]+:$`).Match(group) {
		t.Errorf("after systemd-sysusers, /etc/group = %q, %v; want group snpd", group, err)
	}
}

// analyzable copies the units to a temporary directory with ExecStart pointing at an
// existing executable (systemd-analyze checks that it exists; /usr/local/bin/snpd is
// not installed here), and returns the directory.
func analyzable(t *testing.T, extra string) string {
	t.Helper()
	dir := t.TempDir()
	svc, err := os.ReadFile("snpd.service")
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	svc = bytes.Replace(svc, []byte("ExecStart=/usr/local/bin/snpd "), []byte("ExecStart="+exe+" "), 1)
	svc = bytes.Replace(svc, []byte("[Service]\n"), []byte("[Service]\n"+extra), 1)
	sock, err := os.ReadFile("snpd.socket")
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"snpd.service": svc, "snpd.socket": sock} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func systemdAnalyze(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed (Debian package systemd): cannot verify the unit files")
	}
	return p
}

// TestUnitsVerify runs `systemd-analyze verify`, which prints a line for every
// unknown key, invalid value or unresolvable dependency (and still exits 0 for many of
// them): any output is a failure. A deliberately broken copy proves the check bites.
func TestUnitsVerify(t *testing.T) {
	sa := systemdAnalyze(t)
	run := func(dir string) (string, error) {
		cmd := exec.Command(sa, "verify", "--man=no", "./snpd.service", "./snpd.socket")
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		t.Logf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, out)
		return strings.TrimSpace(string(out)), err
	}
	if out, err := run(analyzable(t, "")); err != nil || out != "" {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
	out, _ := run(analyzable(t, "DeviceAllow=/dev/kvm rwz\nNoSuchSetting=1\n"))
	if !strings.Contains(out, "rwz") || !strings.Contains(out, "NoSuchSetting") {
		t.Errorf("systemd-analyze verify did not report a broken unit:\n%s", out)
	}
}

// TestServiceExposure reports systemd's own sandboxing score for the service
// (0 = fully locked down, 10 = unprotected) and keeps it from regressing.
func TestServiceExposure(t *testing.T) {
	sa := systemdAnalyze(t)
	cmd := exec.Command(sa, "security", "--offline=yes", "--no-pager", "./snpd.service")
	cmd.Dir = analyzable(t, "")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, out)
	}
	m := regexp.MustCompile(`Overall exposure level for snpd.service: ([0-9.]+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("no exposure level in:\n%s", out)
	}
	score, _ := strconv.ParseFloat(string(m[1]), 64)
	t.Logf("systemd-analyze security exposure: %.1f (unsandboxed services score 9.6)", score)
	// Runs as root with a tap-capable capability set and host devices; 2.2 today.
	if score > 2.5 {
		t.Errorf("exposure %.1f, want <= 2.5; a sandboxing setting was lost\n%s", score, out)
	}
}
