package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Platform names accepted in snpd.toml's platform setting.
const (
	// PlatformSEVSNP launches confidential guests (needs /dev/sev and an SNP host).
	PlatformSEVSNP = "sev-snp"
	// PlatformNone launches plain KVM guests with the same pinned argv and still computes
	// and records the expected launch digest (tests, demos, development hosts).
	PlatformNone = "none"
)

// Default locations used when snpd.toml leaves them empty.
const (
	DefaultConfigPath = "/etc/snpd/snpd.toml"
	DefaultStateDir   = "/var/lib/snpd"
	DefaultRuntimeDir = "/run/snpd"
	DefaultQEMU       = "/usr/bin/qemu-system-x86_64"
	// DefaultSocketName is the API socket's file name inside the runtime directory.
	DefaultSocketName = "snpd.sock"
	// DefaultVsockPort is the vsock port the guest agent listens on.
	DefaultVsockPort = 5000
	// DefaultStopTimeout is how long a graceful stop waits before killing QEMU.
	DefaultStopTimeout = 30 * time.Second
)

// Daemon is snpd's own configuration (snpd.toml). Relative paths in the file are resolved
// against the file's directory by LoadDaemon, so an example config works from any working
// directory.
type Daemon struct {
	// StateDir holds the durable store (state.db). Default /var/lib/snpd.
	StateDir string `toml:"state_dir"`
	// RuntimeDir holds the API socket and per-VM runtime directories
	// (<runtime_dir>/vms/<name>/: qmp.sock, agent.sock, console.log). Default /run/snpd.
	RuntimeDir string `toml:"runtime_dir"`
	// QEMU is the absolute path of qemu-system-x86_64. Reattach compares /proc/PID/exe
	// with it. Default /usr/bin/qemu-system-x86_64.
	QEMU string `toml:"qemu"`
	// Platform is "sev-snp" (default) or "none".
	Platform string `toml:"platform"`
	// Socket is the API socket path. Default <runtime_dir>/snpd.sock.
	Socket string `toml:"socket"`
	// OperateGroup names the group whose members may change VMs (define, start, stop...).
	// Empty: only root may. The socket file (mode 0660) belongs to ReadGroup when set,
	// else to OperateGroup: with both set, operators must be members of both groups to
	// reach the socket; the API then grants each caller its role from SO_PEERCRED.
	OperateGroup string `toml:"operate_group"`
	// ReadGroup names the group whose members may only read (list, show, log, events).
	// Empty: nobody besides root and OperateGroup.
	ReadGroup string `toml:"read_group"`
	// PolicyFile is the host policy (TOML) every definition, launch and libvirt domain is
	// checked against. Required unless RunWithoutPolicy is set.
	PolicyFile string `toml:"policy_file"`
	// RunWithoutPolicy lets snpd run with no host policy (policy_file unset): every
	// definition that passes the built-in validation, and every libvirt domain, is then
	// accepted. Default false: snpd refuses to start without policy_file, so that it never
	// runs unpolicied by accident. GET /v1/status (snpctl status) reports it.
	RunWithoutPolicy bool `toml:"run_without_policy"`
	// ImageDir is snpd's own directory for disk images: disks of VMs snpd launches must
	// lie in it or in one of the host policy's devices.disk_dirs. Default
	// <state_dir>/images.
	ImageDir string `toml:"image_dir"`
	// VMDir is a directory of *.toml VM definitions imported (defined) at start when no
	// VM of that name exists in the store yet. Empty: none.
	VMDir string `toml:"vm_dir"`
	// StopTimeout is how long "vm stop" waits for a guest to power off before killing
	// QEMU, as a Go duration ("30s"). Default 30s.
	StopTimeout Duration `toml:"stop_timeout"`
	// GuestChannel configures how snpd reaches guest agents.
	GuestChannel GuestChannel `toml:"guest_channel"`
	// Attestation configures report verification and the certificate cache.
	Attestation Attestation `toml:"attestation"`
	// Metrics configures the Prometheus endpoint (off unless metrics.listen is set).
	Metrics Metrics `toml:"metrics"`
}

// Attestation configures how snpd verifies guests' attestation reports.
type Attestation struct {
	// TrustedRootsFile replaces AMD's ARK/ASK/ASVK (embedded in go-sev-guest) with the
	// certificates (PEM) in this file, for VLEK deployments and tests. Empty: AMD's.
	TrustedRootsFile string `toml:"trusted_roots_file"`
	// CertCacheDir holds imported VCEK/VLEK/ASK/ARK certificates. Default <state_dir>/certs.
	CertCacheDir string `toml:"cert_cache_dir"`
	// FetchFromKDS lets snpd download a missing VCEK from AMD's key server. Default false:
	// verification is offline and fails closed without the certificate.
	FetchFromKDS bool `toml:"fetch_from_kds"`
	// MinTCB is the least acceptable REPORTED_TCB, a 64-bit TCB_VERSION in hex ("0x...",
	// compared part by part). Empty: no minimum.
	MinTCB string `toml:"min_tcb"`
	// PlatformSMTEnabled and PlatformTSMEEnabled say whether this host's platform runs
	// with SMT and with TSME (transparent memory encryption) enabled: the PLATFORM_INFO
	// bits SMT_EN and TSME_EN its reports carry. snpd passes them on in the trustee
	// reference export (snp_smt_enabled, snp_tsme_enabled), which Trustee's default policy
	// compares with each report. Nil (unset): left out of the export, and Trustee then
	// grades a matching report's configuration 3 ("no known vulnerabilities") instead of
	// 2 ("approved").
	PlatformSMTEnabled  *bool `toml:"platform_smt_enabled"`
	PlatformTSMEEnabled *bool `toml:"platform_tsme_enabled"`
}

// GuestChannel configures the guest channel used for attestation.
type GuestChannel struct {
	// VsockPort is the vsock port the guest agent listens on (1..0xFFFFFFFE). Default 5000.
	VsockPort uint32 `toml:"vsock_port"`
	// Timeout bounds one agent exchange, as a Go duration. Default 10s.
	Timeout Duration `toml:"timeout"`
}

// Duration is a time.Duration that decodes from and encodes to TOML/JSON text ("30s").
type Duration time.Duration

// UnmarshalText parses a Go duration string.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("parsing duration: %w", err)
	}
	*d = Duration(v)
	return nil
}

// MarshalText formats the duration as Go does ("1m30s").
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// LoadDaemon reads path strictly (unknown keys are errors with their line), resolves
// relative paths against path's directory, applies defaults and validates.
func LoadDaemon(path string) (*Daemon, error) {
	var d Daemon
	if err := ReadFileStrict(path, &d); err != nil {
		return nil, err
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("resolving config path: %w", err)
	}
	d.ResolvePaths(filepath.Dir(abs))
	return &d, nil
}

// ResolvePaths makes every relative path setting absolute against dir.
func (d *Daemon) ResolvePaths(dir string) {
	for _, p := range []*string{&d.StateDir, &d.RuntimeDir, &d.QEMU, &d.Socket, &d.PolicyFile, &d.ImageDir, &d.VMDir, &d.Attestation.TrustedRootsFile, &d.Attestation.CertCacheDir} {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	d.Metrics.resolvePath(dir)
}

// SetDefaults fills every empty setting with its documented default. Call it after
// command-line overrides (the socket default depends on the runtime directory).
func (d *Daemon) SetDefaults() {
	if d.StateDir == "" {
		d.StateDir = DefaultStateDir
	}
	if d.RuntimeDir == "" {
		d.RuntimeDir = DefaultRuntimeDir
	}
	if d.QEMU == "" {
		d.QEMU = DefaultQEMU
	}
	if d.Platform == "" {
		d.Platform = PlatformSEVSNP
	}
	if d.Socket == "" {
		d.Socket = filepath.Join(d.RuntimeDir, DefaultSocketName)
	}
	if d.StopTimeout == 0 {
		d.StopTimeout = Duration(DefaultStopTimeout)
	}
	if d.GuestChannel.VsockPort == 0 {
		d.GuestChannel.VsockPort = DefaultVsockPort
	}
	if d.GuestChannel.Timeout == 0 {
		d.GuestChannel.Timeout = Duration(10 * time.Second)
	}
	if d.Attestation.CertCacheDir == "" {
		d.Attestation.CertCacheDir = filepath.Join(d.StateDir, "certs")
	}
	if d.ImageDir == "" {
		d.ImageDir = filepath.Join(d.StateDir, "images")
	}
}

var groupNameRE = lazyRegexp(`^[a-z_][a-z0-9_-]{0,31}$`)

// lazyRegexp compiles pattern on first use. snpctl imports this package for every
// subcommand, and compiling the bounded repetitions ({0,62}) of these patterns at init
// was ~0.3 ms (2400 allocations) of every snpctl run.
func lazyRegexp(pattern string) func() *regexp.Regexp {
	return sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(pattern) })
}

// Validate reports every problem with the (defaulted) settings, joined.
func (d *Daemon) Validate() error {
	var errs []error
	abs := func(key, v string) {
		if v != "" && !filepath.IsAbs(v) {
			errs = append(errs, fmt.Errorf("%s %q: must be an absolute path", key, v))
		}
	}
	abs("state_dir", d.StateDir)
	abs("runtime_dir", d.RuntimeDir)
	abs("qemu", d.QEMU)
	abs("socket", d.Socket)
	abs("policy_file", d.PolicyFile)
	abs("vm_dir", d.VMDir)
	abs("image_dir", d.ImageDir)
	abs("attestation.trusted_roots_file", d.Attestation.TrustedRootsFile)
	abs("attestation.cert_cache_dir", d.Attestation.CertCacheDir)
	if d.Attestation.MinTCB != "" {
		if _, err := strconv.ParseUint(strings.TrimPrefix(d.Attestation.MinTCB, "0x"), 16, 64); err != nil || !strings.HasPrefix(d.Attestation.MinTCB, "0x") {
			errs = append(errs, fmt.Errorf("attestation.min_tcb %q: must be a 64-bit hex TCB_VERSION like 0x7300000000000003", d.Attestation.MinTCB))
		}
	}
	switch {
	case d.PolicyFile == "" && !d.RunWithoutPolicy:
		errs = append(errs, errors.New("policy_file: not set; snpd does not run without a host policy (set policy_file, or run_without_policy = true to accept every definition and libvirt domain)"))
	case d.PolicyFile != "" && d.RunWithoutPolicy:
		errs = append(errs, fmt.Errorf("run_without_policy = true and policy_file %q: set one of them", d.PolicyFile))
	}
	switch d.Platform {
	case PlatformSEVSNP, PlatformNone:
	default:
		errs = append(errs, fmt.Errorf("platform %q: must be %q or %q", d.Platform, PlatformSEVSNP, PlatformNone))
	}
	for key, g := range map[string]string{"operate_group": d.OperateGroup, "read_group": d.ReadGroup} {
		if g != "" && !groupNameRE().MatchString(g) && !isNumeric(g) {
			errs = append(errs, fmt.Errorf("%s %q: not a group name or numeric gid", key, g))
		}
	}
	if d.StopTimeout < 0 || time.Duration(d.StopTimeout) > time.Hour {
		errs = append(errs, fmt.Errorf("stop_timeout %s: must be between 0 and 1h", time.Duration(d.StopTimeout)))
	}
	if d.GuestChannel.VsockPort == 0xFFFFFFFF {
		errs = append(errs, errors.New("guest_channel.vsock_port: 0xFFFFFFFF is VMADDR_PORT_ANY"))
	}
	if d.GuestChannel.Timeout < 0 {
		errs = append(errs, errors.New("guest_channel.timeout: must not be negative"))
	}
	errs = append(errs, d.Metrics.validate(d.Socket)...)
	if d.QEMU != "" && filepath.IsAbs(d.QEMU) {
		if st, err := os.Stat(d.QEMU); err != nil {
			errs = append(errs, fmt.Errorf("qemu: %w", err))
		} else if st.IsDir() || st.Mode()&0o111 == 0 {
			errs = append(errs, fmt.Errorf("qemu %q: not an executable file", d.QEMU))
		}
	}
	return errors.Join(errs...)
}

func isNumeric(s string) bool {
	if s == "" || len(s) > 10 {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}
