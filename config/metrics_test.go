package config

import (
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseMetricsListen(t *testing.T) {
	for _, c := range []struct {
		in      string
		allow   bool
		network string // "" : an error containing err
		addr    string
		err     string
	}{
		{in: "unix:/run/snpd/metrics.sock", network: "unix", addr: "/run/snpd/metrics.sock"},
		{in: "127.0.0.1:9477", network: "tcp", addr: "127.0.0.1:9477"},
		{in: "127.3.4.5:9477", network: "tcp", addr: "127.3.4.5:9477"},
		{in: "[::1]:9477", network: "tcp", addr: "[::1]:9477"},
		{in: "[::ffff:127.0.0.1]:9477", network: "tcp", addr: "[::ffff:127.0.0.1]:9477"},
		{in: "127.0.0.1:0", network: "tcp", addr: "127.0.0.1:0"},
		{in: "10.0.0.5:9477", allow: true, network: "tcp", addr: "10.0.0.5:9477"},
		{in: ":9477", allow: true, network: "tcp", addr: ":9477"},

		// Fail closed: nothing beyond loopback unless the operator says so.
		{in: "10.0.0.5:9477", err: "not a loopback address"},
		{in: "0.0.0.0:9477", err: "not a loopback address"},
		{in: "[::]:9477", err: "not a loopback address"},
		{in: ":9477", err: "every interface"},
		{in: "localhost:9477", err: "not an IP address"},
		{in: "localhost:9477", allow: true, err: "not an IP address"},
		{in: "[fe80::1%eth0]:9477", allow: true, err: "zoned"},
		{in: "127.0.0.1", err: "want unix:/path or IP:port"},
		{in: "127.0.0.1:http", err: "port"},
		{in: "127.0.0.1:65536", err: "port"},
		{in: "127.0.0.1:09477", err: "port"},
		{in: "unix:metrics.sock", err: "absolute"},
		{in: "unix:", err: "absolute"},
		{in: "unix:@abstract", err: "absolute"},
		{in: "unix:/run/../run/m.sock", err: "clean"},
		{in: "unix:/" + strings.Repeat("a", 120), err: "longer than a unix socket allows"},
		{in: "unix:/run/m\x00.sock", err: "NUL"},
		{in: "", err: "empty"},
		{in: "http://127.0.0.1:9477/metrics", err: "want unix:/path or IP:port"},
	} {
		ep, err := ParseMetricsListen(c.in, c.allow)
		if c.network == "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("ParseMetricsListen(%q, %v) = %+v, %v; want an error containing %q", c.in, c.allow, ep, err, c.err)
			}
			if err != nil && strings.Contains(err.Error(), "\n") {
				t.Errorf("ParseMetricsListen(%q): error is not one line: %q", c.in, err)
			}
			continue
		}
		if err != nil || ep.Network != c.network || ep.Address != c.addr {
			t.Errorf("ParseMetricsListen(%q, %v) = %+v, %v; want %s %s", c.in, c.allow, ep, err, c.network, c.addr)
		}
	}
}

func TestDaemonMetricsConfig(t *testing.T) {
	var d Daemon
	if err := DecodeStrict("snpd.toml", []byte("[metrics]\nlisten = \"unix:run/metrics.sock\"\nper_vm = true\n"), &d); err != nil {
		t.Fatal(err)
	}
	d.ResolvePaths("/etc/snpd")
	if d.Metrics.Listen != "unix:/etc/snpd/run/metrics.sock" || !d.Metrics.PerVM {
		t.Fatalf("metrics = %+v; want the relative socket resolved against the config's directory", d.Metrics)
	}
	if err := DecodeStrict("snpd.toml", []byte("[metrics]\nlisen = \"127.0.0.1:9477\"\n"), &d); err == nil || !strings.Contains(err.Error(), `snpd.toml:2: unknown key "metrics.lisen"`) {
		t.Fatalf("unknown key in [metrics]: %v", err)
	}

	// Off by default: nothing to listen on.
	d = Daemon{}
	d.SetDefaults()
	if _, ok, err := d.Metrics.Endpoint(); ok || err != nil {
		t.Fatalf("default metrics endpoint: %v %v", ok, err)
	}

	// Validate reports a bad address with the other problems, and refuses the API socket.
	d = Daemon{Platform: "sev", Metrics: Metrics{Listen: "0.0.0.0:9477"}}
	d.SetDefaults()
	err := d.Validate()
	if err == nil || !strings.Contains(err.Error(), "not a loopback address") || !strings.Contains(err.Error(), `platform "sev"`) {
		t.Fatalf("validate: %v", err)
	}
	d = Daemon{RuntimeDir: "/tmp/r", Metrics: Metrics{Listen: "unix:/tmp/r/snpd.sock"}}
	d.SetDefaults()
	if err := d.Validate(); err == nil || !strings.Contains(err.Error(), "is the API socket") {
		t.Fatalf("metrics on the API socket: %v", err)
	}
}

// FuzzParseMetricsListen: whatever an operator writes, the result is an error or an
// endpoint that honours the rules: an absolute, clean unix path short enough for
// sun_path, or a TCP IP:port whose IP is loopback unless non-loopback was allowed.
func FuzzParseMetricsListen(f *testing.F) {
	for _, s := range []string{"unix:/run/snpd/metrics.sock", "127.0.0.1:9477", "[::1]:9477", ":9477",
		"0.0.0.0:1", "localhost:9477", "unix:rel", "[::ffff:127.0.0.1]:1", "[fe80::1%lo]:1", "1.2.3.4:99999"} {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, s string, allow bool) {
		ep, err := ParseMetricsListen(s, allow)
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error is not one line: %q", err)
			}
			return
		}
		switch ep.Network {
		case "unix":
			if !filepath.IsAbs(ep.Address) || filepath.Clean(ep.Address) != ep.Address || len(ep.Address) > maxUnixPath || strings.ContainsRune(ep.Address, 0) {
				t.Fatalf("%q: unix path %q accepted", s, ep.Address)
			}
		case "tcp":
			ap, err := netip.ParseAddrPort(ep.Address)
			if err != nil {
				if !allow || !strings.HasPrefix(ep.Address, ":") {
					t.Fatalf("%q: tcp address %q is not IP:port: %v", s, ep.Address, err)
				}
				return
			}
			if !allow && !ap.Addr().Unmap().IsLoopback() {
				t.Fatalf("%q: non-loopback %s accepted without allow_non_loopback", s, ap)
			}
		default:
			t.Fatalf("%q: network %q", s, ep.Network)
		}
	})
}
