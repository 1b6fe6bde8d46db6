package config

import (
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
)

// Metrics configures snpd's Prometheus endpoint (snpd.toml [metrics]): off unless Listen
// is set. It is served on a listener of its own that answers GET /metrics and nothing
// else, never on the API socket.
type Metrics struct {
	// Listen is where GET /metrics is served: "unix:/path" (a unix socket, mode 0660, in
	// the API socket's group) or "IP:port" (TCP; the IP must be loopback, 127.0.0.0/8 or
	// ::1, unless AllowNonLoopback). A relative unix path is resolved against the config
	// file's directory. Empty (the default): no metrics endpoint at all.
	Listen string `toml:"listen"`
	// AllowNonLoopback lets Listen name a TCP address that is not loopback (another
	// interface, or all of them with ":port"). Metrics are unauthenticated and name VM
	// states, policy rules and attestation outcomes: off by default, so a typo cannot
	// publish them to the network.
	AllowNonLoopback bool `toml:"allow_non_loopback"`
	// PerVM adds series labelled with VM names (snpd_vm_state). Off by default: every
	// other series has a bounded set of labels whatever the number of VMs.
	PerVM bool `toml:"per_vm"`
}

// MetricsEndpoint is a parsed metrics.listen.
type MetricsEndpoint struct {
	// Network is "unix" or "tcp".
	Network string
	// Address is the socket's absolute path (unix) or "IP:port" (tcp).
	Address string
}

// maxUnixPath is the longest path a unix socket address holds (sun_path is 108 bytes
// with the terminating NUL).
const maxUnixPath = 107

// ParseMetricsListen parses a metrics.listen value: "unix:" followed by an absolute path,
// or a TCP "IP:port" ("127.0.0.1:9477", "[::1]:9477"). Host names are refused (a name
// may resolve to anything); so is a TCP address that is not loopback (an empty host
// means every interface) unless allowNonLoopback. Errors are one line naming the value.
func ParseMetricsListen(s string, allowNonLoopback bool) (MetricsEndpoint, error) {
	bad := func(format string, a ...any) (MetricsEndpoint, error) {
		return MetricsEndpoint{}, fmt.Errorf("metrics.listen %q: %s", s, fmt.Sprintf(format, a...))
	}
	if s == "" {
		return bad("empty (leave the key out to serve no metrics)")
	}
	if strings.ContainsAny(s, "\x00\n") {
		return bad("contains a NUL or newline")
	}
	if p, ok := strings.CutPrefix(s, "unix:"); ok {
		switch {
		case !filepath.IsAbs(p):
			return bad("the socket path must be absolute")
		case filepath.Clean(p) != p:
			return bad("the socket path must be clean (no //, . or .. elements, no trailing /)")
		case len(p) > maxUnixPath:
			return bad("the socket path is %d bytes, longer than a unix socket allows (%d)", len(p), maxUnixPath)
		}
		return MetricsEndpoint{Network: "unix", Address: p}, nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return bad("want unix:/path or IP:port (%v)", err)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || strconv.FormatUint(n, 10) != port {
		return bad("port %q: want a number from 0 to 65535", port)
	}
	if host == "" {
		if !allowNonLoopback {
			return bad("no host means every interface; use 127.0.0.1:%s or [::1]:%s, or set metrics.allow_non_loopback = true", port, port)
		}
		return MetricsEndpoint{Network: "tcp", Address: ":" + port}, nil
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return bad("host %q is not an IP address (a name may resolve anywhere); use 127.0.0.1 or [::1]", host)
	}
	if ip.Zone() != "" {
		return bad("host %q: zoned addresses are not supported", host)
	}
	if !ip.Unmap().IsLoopback() && !allowNonLoopback {
		return bad("%s is not a loopback address; metrics are unauthenticated: set metrics.allow_non_loopback = true to serve them beyond this host", ip)
	}
	return MetricsEndpoint{Network: "tcp", Address: net.JoinHostPort(ip.String(), port)}, nil
}

// Endpoint parses m.Listen (ParseMetricsListen); ok is false when metrics are off.
func (m Metrics) Endpoint() (ep MetricsEndpoint, ok bool, err error) {
	if m.Listen == "" {
		return MetricsEndpoint{}, false, nil
	}
	ep, err = ParseMetricsListen(m.Listen, m.AllowNonLoopback)
	return ep, err == nil, err
}

// resolvePath makes a relative unix socket path absolute against dir.
func (m *Metrics) resolvePath(dir string) {
	if p, ok := strings.CutPrefix(m.Listen, "unix:"); ok && p != "" && !filepath.IsAbs(p) {
		m.Listen = "unix:" + filepath.Join(dir, p)
	}
}

// validate reports the problems of m; apiSocket is the API socket's path, which the
// metrics socket must not be.
func (m *Metrics) validate(apiSocket string) []error {
	ep, ok, err := m.Endpoint()
	if err != nil {
		return []error{err}
	}
	if ok && ep.Network == "unix" && apiSocket != "" && filepath.Clean(apiSocket) == ep.Address {
		return []error{fmt.Errorf("metrics.listen %q: is the API socket; the metrics endpoint needs a socket of its own", m.Listen)}
	}
	return nil
}
