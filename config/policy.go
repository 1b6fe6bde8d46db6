package config

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/google/go-sev-guest/abi"
)

// DefaultPolicyPath is where snpctl and snpd look for the host policy by default.
const DefaultPolicyPath = "/etc/snpd/policy.toml"

// Policy is the host policy (policy.toml): what the host operator allows a VM
// definition, a libvirt domain or a running QEMU to be. Decode it with DecodePolicy or
// LoadPolicy (strict, defaults, Validate); evaluate it with Check.
//
// Lists of allowed values that are left out of the file get the defaults documented on
// each field; an empty list written in the file ("[]") allows nothing.
type Policy struct {
	Firmware  FirmwarePolicy `toml:"firmware" json:"firmware"`
	SNP       SNPPolicy      `toml:"snp" json:"snp"`
	VCPU      VCPUPolicy     `toml:"vcpu" json:"vcpu"`
	Memory    MemoryPolicy   `toml:"memory" json:"memory"`
	IDBlock   IDBlockPolicy  `toml:"id_block" json:"id_block"`
	HostData  HostDataPolicy `toml:"host_data" json:"host_data"`
	Devices   DevicePolicy   `toml:"devices" json:"devices"`
	QEMU      QEMUPolicy     `toml:"qemu" json:"qemu"`
	Resources ResourcePolicy `toml:"resources" json:"resources"`
	Libvirt   LibvirtPolicy  `toml:"libvirt" json:"libvirt"`
}

// FirmwarePolicy allowlists firmware images by digest of the whole file.
type FirmwarePolicy struct {
	// SHA256 and SHA384 list allowed firmware digests (hex, 64 and 96 digits). A firmware
	// is allowed when its digest appears in either list.
	SHA256 []string `toml:"sha256" json:"sha256,omitempty"`
	SHA384 []string `toml:"sha384" json:"sha384,omitempty"`
	// AllowAny allows every firmware; both lists must then be empty. Without it, empty
	// lists allow no firmware (fail closed).
	AllowAny bool `toml:"allow_any" json:"allow_any,omitempty"`
	// AllowUnmeasuredKernel allows a kernel (-kernel/-initrd/-append) with a firmware
	// that has no SNP kernel-hashes section (not an OvmfPkg/AmdSev build), i.e. a boot
	// path the launch digest does not cover. Default false.
	AllowUnmeasuredKernel bool `toml:"allow_unmeasured_kernel" json:"allow_unmeasured_kernel,omitempty"`
}

// SNPPolicy constrains the 64-bit guest policy (SEV-SNP ABI spec, GUEST_POLICY) and the
// VMSA SEV_FEATURES.
type SNPPolicy struct {
	// Forbid and Require name guest-policy bits that must be clear, or set: "smt",
	// "migrate_ma", "debug", "single_socket", "cxl_allowed", "mem_aes_256_xts",
	// "rapl_dis", "ciphertext_hiding", "page_swap_disable".
	Forbid  []string `toml:"forbid" json:"forbid,omitempty"`
	Require []string `toml:"require" json:"require,omitempty"`
	// MinABI is the least "major.minor" the guest policy's ABI_MAJOR.ABI_MINOR fields may
	// request (empty: no minimum).
	MinABI string `toml:"min_abi" json:"min_abi,omitempty"`
	// AllowedGuestFeatures is a mask of the SEV_FEATURES bits a VM may use. Default 0x1
	// (SNPActive only, what QEMU >= 10.0 with KVM_SEV_INIT2 uses).
	AllowedGuestFeatures uint64 `toml:"allowed_guest_features" json:"allowed_guest_features"`
}

// VCPUPolicy bounds the vCPUs.
type VCPUPolicy struct {
	// Models lists the allowed QEMU/libvirt CPU model names (required, non-empty).
	Models []string `toml:"models" json:"models"`
	// Min and Max bound the vCPU count. Defaults 1 and MaxVCPUs.
	Min int `toml:"min" json:"min"`
	Max int `toml:"max" json:"max"`
}

// MemoryPolicy bounds guest RAM.
type MemoryPolicy struct {
	// MinMiB and MaxMiB bound guest RAM in MiB. Defaults 1 and MaxMemoryMiB.
	MinMiB uint64 `toml:"min_mib" json:"min_mib"`
	MaxMiB uint64 `toml:"max_mib" json:"max_mib"`
}

// IDBlockPolicy constrains the ID block (SNP_LAUNCH_FINISH ID_BLOCK and ID_AUTH).
type IDBlockPolicy struct {
	// Required rejects VMs launched without an ID block.
	Required bool `toml:"required" json:"required,omitempty"`
	// IDKeys and AuthorKeys list allowed key digests: hex SHA-384 (96 digits) of the
	// public key structure, as in the report's ID_KEY_DIGEST and AUTHOR_KEY_DIGEST.
	// Empty: any key. A VM with an ID block (or author key) whose digest is unknown is
	// rejected when the list is not empty.
	IDKeys     []string `toml:"id_keys" json:"id_keys,omitempty"`
	AuthorKeys []string `toml:"author_keys" json:"author_keys,omitempty"`
}

// HostDataPolicy constrains HOST_DATA.
type HostDataPolicy struct {
	// Required is "" (any host data or none), "derived" (the VM must use the SHA-256 of
	// its canonical definition) or the base64 of the exact 32 bytes required.
	Required string `toml:"required" json:"required,omitempty"`
}

// Device classes a VM can use. Devices libvirt can describe beyond these are mapped to
// their libvirt element name (e.g. "watchdog", "hostdev"), which a policy only allows by
// listing it.
const (
	DeviceDisk    = "disk"
	DeviceNetwork = "network"
	DeviceConsole = "console"
	DeviceChannel = "channel"
)

// DevicePolicy allowlists device classes and their backends.
type DevicePolicy struct {
	// Classes lists allowed device classes. Default: disk, network, console, channel.
	Classes []string `toml:"classes" json:"classes"`
	// DiskFormats lists allowed disk formats. Default: raw, qcow2.
	DiskFormats []string `toml:"disk_formats" json:"disk_formats"`
	// DiskDirs lists absolute directories disk images may lie in, besides snpd's own
	// image directory (snpd.toml's image_dir), which is always allowed. A disk is checked
	// by its real path (symlinks resolved). Default: none, so a disk must lie in the
	// image directory.
	DiskDirs []string `toml:"disk_dirs" json:"disk_dirs,omitempty"`
	// NetworkTypes lists allowed network backends. Default: user, tap.
	NetworkTypes []string `toml:"network_types" json:"network_types"`
	// ChannelTypes lists allowed guest-channel backends. Default: vsock, serial.
	ChannelTypes []string `toml:"channel_types" json:"channel_types"`
}

// QEMUPolicy allowlists QEMU binaries.
type QEMUPolicy struct {
	// Binaries lists allowed QEMU binaries by absolute path. Default:
	// /usr/bin/qemu-system-x86_64.
	Binaries []string `toml:"binaries" json:"binaries"`
	// MinVersion is the least QEMU version, "major.minor.micro". Default "9.1.0" (the
	// first with sev-snp-guest).
	MinVersion string `toml:"min_version" json:"min_version"`
}

// ResourcePolicy bounds the per-VM cgroup settings (vm.toml's cpu_weight,
// memory_max_mib, tasks_max).
type ResourcePolicy struct {
	// MaxCPUWeight is the largest cpu_weight a VM may ask for (1..10000). Default 10000.
	MaxCPUWeight uint64 `toml:"max_cpu_weight" json:"max_cpu_weight"`
	// MaxMemoryMaxMiB is the largest memory_max_mib (MiB); 0: no bound.
	MaxMemoryMaxMiB uint64 `toml:"max_memory_max_mib" json:"max_memory_max_mib,omitempty"`
	// MaxTasksMax is the largest tasks_max; 0: no bound.
	MaxTasksMax uint64 `toml:"max_tasks_max" json:"max_tasks_max,omitempty"`
	// RequireMemoryMax refuses VMs that set no memory_max_mib (whose QEMU could then use
	// any amount of host memory).
	RequireMemoryMax bool `toml:"require_memory_max" json:"require_memory_max,omitempty"`
}

// LibvirtPolicy holds rules only libvirt domains can break.
type LibvirtPolicy struct {
	// AllowNonConfidential accepts libvirt domains without launchSecurity on a sev-snp
	// host (checked against the vCPU, memory, device and QEMU rules only). On platform
	// "none" every domain is non-confidential and this is implied.
	AllowNonConfidential bool `toml:"allow_non_confidential" json:"allow_non_confidential,omitempty"`
	// HookFailOpen lets the libvirt hook start domains unchecked when snpd cannot be
	// reached (default false: refuse them). libvirt runs hooks with a cleared
	// environment, so this setting (read by the hook from the policy file) is how an
	// installed hook is made to fail open.
	HookFailOpen bool `toml:"hook_fail_open" json:"hook_fail_open,omitempty"`
}

// guestPolicyBits maps the policy's bit names to go-sev-guest's parsed guest policy.
var guestPolicyBits = []struct {
	name string
	bit  uint
	get  func(abi.SnpPolicy) bool
}{
	{"smt", 16, func(p abi.SnpPolicy) bool { return p.SMT }},
	{"migrate_ma", 18, func(p abi.SnpPolicy) bool { return p.MigrateMA }},
	{"debug", 19, func(p abi.SnpPolicy) bool { return p.Debug }},
	{"single_socket", 20, func(p abi.SnpPolicy) bool { return p.SingleSocket }},
	{"cxl_allowed", 21, func(p abi.SnpPolicy) bool { return p.CXLAllowed }},
	{"mem_aes_256_xts", 22, func(p abi.SnpPolicy) bool { return p.MemAES256XTS }},
	{"rapl_dis", 23, func(p abi.SnpPolicy) bool { return p.RAPLDis }},
	{"ciphertext_hiding", 24, func(p abi.SnpPolicy) bool { return p.CipherTextHidingDRAM }},
	{"page_swap_disable", 25, func(p abi.SnpPolicy) bool { return p.PageSwapDisable }},
}

// DecodePolicy decodes a host policy strictly (see DecodeStrict), applies defaults and
// validates it; name labels messages (usually the file path).
func DecodePolicy(name string, data []byte) (*Policy, error) {
	var p Policy
	if err := DecodeStrict(name, data, &p); err != nil {
		return nil, err
	}
	p.SetDefaults()
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &p, nil
}

// LoadPolicy reads a host policy file (at most MaxFileSize bytes) with DecodePolicy.
func LoadPolicy(path string) (*Policy, error) {
	var p Policy
	if err := ReadFileStrict(path, &p); err != nil {
		return nil, err
	}
	p.SetDefaults()
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &p, nil
}

// SetDefaults fills the settings left out with their documented defaults.
func (p *Policy) SetDefaults() {
	if p.SNP.AllowedGuestFeatures == 0 {
		p.SNP.AllowedGuestFeatures = DefaultGuestFeatures
	}
	if p.VCPU.Min == 0 {
		p.VCPU.Min = 1
	}
	if p.VCPU.Max == 0 {
		p.VCPU.Max = MaxVCPUs
	}
	if p.Memory.MinMiB == 0 {
		p.Memory.MinMiB = 1
	}
	if p.Memory.MaxMiB == 0 {
		p.Memory.MaxMiB = MaxMemoryMiB
	}
	if p.Devices.Classes == nil {
		p.Devices.Classes = []string{DeviceDisk, DeviceNetwork, DeviceConsole, DeviceChannel}
	}
	if p.Devices.DiskFormats == nil {
		p.Devices.DiskFormats = []string{"raw", "qcow2"}
	}
	if p.Devices.NetworkTypes == nil {
		p.Devices.NetworkTypes = []string{"user", "tap"}
	}
	if p.Devices.ChannelTypes == nil {
		p.Devices.ChannelTypes = []string{"vsock", "serial"}
	}
	if p.Resources.MaxCPUWeight == 0 {
		p.Resources.MaxCPUWeight = MaxCPUWeight
	}
	if p.QEMU.Binaries == nil {
		p.QEMU.Binaries = []string{DefaultQEMU}
	}
	if p.QEMU.MinVersion == "" {
		p.QEMU.MinVersion = "9.1.0"
	}
}

// Validate checks a defaulted policy and returns every problem, joined, or nil.
func (p *Policy) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	f := &p.Firmware
	if f.AllowAny && (len(f.SHA256) > 0 || len(f.SHA384) > 0) {
		bad("firmware.allow_any: conflicts with listed digests")
	}
	if !f.AllowAny && len(f.SHA256) == 0 && len(f.SHA384) == 0 {
		bad("firmware: no digest listed and allow_any is false: no firmware could be used")
	}
	for i, d := range f.SHA256 {
		if err := checkHexDigest(d, 32); err != nil {
			bad("firmware.sha256[%d]: %w", i, err)
		}
	}
	for i, d := range f.SHA384 {
		if err := checkHexDigest(d, 48); err != nil {
			bad("firmware.sha384[%d]: %w", i, err)
		}
	}
	if p.Resources.MaxCPUWeight > MaxCPUWeight {
		bad("resources.max_cpu_weight %d: want 1..%d", p.Resources.MaxCPUWeight, MaxCPUWeight)
	}
	for i, d := range p.Devices.DiskDirs {
		if !filepath.IsAbs(d) || filepath.Clean(d) == "/" {
			bad("devices.disk_dirs[%d] %q: want an absolute directory other than /", i, d)
		}
	}
	for _, l := range []struct {
		key   string
		names []string
	}{{"snp.forbid", p.SNP.Forbid}, {"snp.require", p.SNP.Require}} {
		for _, n := range l.names {
			if policyBit(n) < 0 {
				bad("%s: unknown guest-policy bit %q (want one of %s)", l.key, n, policyBitNames())
			}
		}
	}
	for _, n := range p.SNP.Forbid {
		if slices.Contains(p.SNP.Require, n) {
			bad("snp: bit %q is both forbidden and required", n)
		}
	}
	if p.SNP.MinABI != "" {
		if _, _, err := parseABI(p.SNP.MinABI); err != nil {
			bad("snp.min_abi: %w", err)
		}
	}
	if p.SNP.AllowedGuestFeatures&1 == 0 {
		bad("snp.allowed_guest_features %#x: must allow bit 0 (SNPActive)", p.SNP.AllowedGuestFeatures)
	}
	if len(p.VCPU.Models) == 0 {
		bad("vcpu.models: list the allowed CPU models")
	}
	for i, m := range p.VCPU.Models {
		if !cpuModelRE().MatchString(m) {
			bad("vcpu.models[%d] %q: not a CPU model name", i, m)
		}
	}
	if p.VCPU.Min < 1 || p.VCPU.Max > MaxVCPUs || p.VCPU.Min > p.VCPU.Max {
		bad("vcpu: min %d, max %d: want 1 <= min <= max <= %d", p.VCPU.Min, p.VCPU.Max, MaxVCPUs)
	}
	if p.Memory.MinMiB > p.Memory.MaxMiB || p.Memory.MaxMiB > MaxMemoryMiB {
		bad("memory: min_mib %d, max_mib %d: want min <= max <= %d", p.Memory.MinMiB, p.Memory.MaxMiB, uint64(MaxMemoryMiB))
	}
	for _, l := range []struct {
		key  string
		list []string
	}{{"id_block.id_keys", p.IDBlock.IDKeys}, {"id_block.author_keys", p.IDBlock.AuthorKeys}} {
		for i, d := range l.list {
			if err := checkHexDigest(d, 48); err != nil {
				bad("%s[%d]: %w", l.key, i, err)
			}
		}
	}
	if r := p.HostData.Required; r != "" && r != HostDataDerived {
		if _, err := decodeB64(r, HostDataSize); err != nil {
			bad("host_data.required: %w (or \"derived\", or empty)", err)
		}
	}
	for i, c := range p.Devices.Classes {
		if c == "" || strings.ContainsAny(c, " \t\n") {
			bad("devices.classes[%d] %q: not a class name", i, c)
		}
	}
	for _, b := range p.QEMU.Binaries {
		if err := checkPath(b); err != nil {
			bad("qemu.binaries: %w", err)
		}
	}
	if _, err := ParseVersion(p.QEMU.MinVersion); err != nil {
		bad("qemu.min_version: %w", err)
	}
	return errors.Join(errs...)
}

func policyBit(name string) int {
	for i, b := range guestPolicyBits {
		if b.name == name {
			return i
		}
	}
	return -1
}

func policyBitNames() string {
	names := make([]string, len(guestPolicyBits))
	for i, b := range guestPolicyBits {
		names[i] = b.name
	}
	return strings.Join(names, ", ")
}

func checkHexDigest(s string, size int) error {
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != size {
		return fmt.Errorf("%q: want %d hex digits", s, 2*size)
	}
	return nil
}

// GuestPolicyCeiling is the most permissive SNP guest policy this host policy allows,
// in go-sev-guest's ceiling semantics (validate.Options.GuestPolicy): the bits whose set
// value grants something (smt, migrate_ma, debug, cxl_allowed) are set unless forbidden;
// the restricting bits (single_socket, mem_aes_256_xts, rapl_dis, ciphertext_hiding,
// page_swap_disable) are set only when required; reserved bit 17 is set; ABI_MAJOR.
// ABI_MINOR come from min_abi. A bit name the policy does not know is an error.
func (p *Policy) GuestPolicyCeiling() (uint64, error) {
	bit := map[string]uint{}
	for _, b := range guestPolicyBits {
		bit[b.name] = b.bit
	}
	c := uint64(1)<<17 | 1<<bit["smt"] | 1<<bit["migrate_ma"] | 1<<bit["debug"] | 1<<bit["cxl_allowed"]
	for _, list := range []struct {
		names []string
		set   bool
	}{{p.SNP.Forbid, false}, {p.SNP.Require, true}} {
		for _, name := range list.names {
			b, ok := bit[name]
			if !ok {
				return 0, fmt.Errorf("host policy names unknown guest-policy bit %q", name)
			}
			if list.set {
				c |= 1 << b
			} else {
				c &^= 1 << b
			}
		}
	}
	if p.SNP.MinABI != "" {
		maj, mnr, err := parseABI(p.SNP.MinABI)
		if err != nil {
			return 0, fmt.Errorf("host policy min_abi: %w", err)
		}
		c |= uint64(maj)<<8 | uint64(mnr)
	}
	return c, nil
}

// parseABI parses "major.minor" (each 0..255).
func parseABI(s string) (major, minor uint8, err error) {
	a, b, ok := strings.Cut(s, ".")
	if ok {
		var x, y uint64
		x, err = strconv.ParseUint(a, 10, 8)
		if err == nil {
			y, err = strconv.ParseUint(b, 10, 8)
		}
		if err == nil {
			return uint8(x), uint8(y), nil
		}
	}
	return 0, 0, fmt.Errorf("%q: want major.minor, each 0..255", s)
}

// ParseVersion parses "major.minor[.micro]" (as in "QEMU emulator version 10.0.2") into
// its three numbers.
func ParseVersion(s string) ([3]int, error) {
	var v [3]int
	parts := strings.Split(s, ".")
	if len(parts) < 2 || len(parts) > 3 {
		return v, fmt.Errorf("version %q: want major.minor[.micro]", s)
	}
	for i, p := range parts {
		n, err := strconv.ParseUint(p, 10, 16)
		if err != nil {
			return v, fmt.Errorf("version %q: want major.minor[.micro] numbers", s)
		}
		v[i] = int(n)
	}
	return v, nil
}

// Facts are what the caller learned outside the definition: by reading files (the
// firmware, an ID auth) or asking the host. Zero values mean unknown, and a rule that
// needs an unknown fact is violated (fail closed). daemon/launch.VMFacts fills them.
type Facts struct {
	// Platform is PlatformSEVSNP or PlatformNone ("" means PlatformSEVSNP).
	Platform string
	// FirmwareSHA256 and FirmwareSHA384 are digests of the whole firmware file (32 and
	// 48 bytes; nil: unknown).
	FirmwareSHA256, FirmwareSHA384 []byte
	// FirmwareHasKernelHashes is true when the firmware's SEV metadata has an SNP
	// kernel-hashes section (OvmfPkg/AmdSev builds); false for OvmfPkgX64 builds, which
	// boot -kernel unmeasured and have a UEFI shell.
	FirmwareHasKernelHashes bool
	// IDKeyDigest and AuthorKeyDigest are SHA-384 of the ID and author public keys (48
	// bytes) from a verified ID auth; nil: unknown or none.
	IDKeyDigest, AuthorKeyDigest []byte
	// QEMUPath is the absolute path of the QEMU binary that would run the VM ("": unknown).
	QEMUPath string
	// QEMUVersion is its major, minor, micro version (zero: unknown).
	QEMUVersion [3]int
	// ImageDir is snpd's own image directory (snpd.toml's image_dir), where disks are
	// always allowed ("": none).
	ImageDir string
	// DiskRealPaths are the real paths (symlinks resolved) of vm's disks, in order; ""
	// where a disk's path could not be resolved (it then breaks devices.disk_dirs).
	DiskRealPaths []string
}

// Violation is one broken policy rule.
type Violation struct {
	// Rule names the rule, "<section>.<key>" as in policy.toml (e.g. "snp.forbid_debug").
	Rule string `json:"rule"`
	// Value is the offending value as found in the VM (e.g. "0x80000").
	Value string `json:"value"`
	// Message says what is wrong, naming the value.
	Message string `json:"message"`
}

// String renders the violation as one line: "rule <Rule>: <Message>".
func (v Violation) String() string { return "rule " + v.Rule + ": " + v.Message }

// Check compares vm (defaulted; see SetDefaults) and the facts about it with the policy
// and returns every violation, in a fixed order (firmware, libvirt, guest policy, ID
// block, host data, vCPUs, memory, devices, QEMU), or nil when vm conforms.
func (p *Policy) Check(vm *VM, f Facts) []Violation {
	var out []Violation
	add := func(rule, value, format string, args ...any) {
		out = append(out, Violation{Rule: rule, Value: value, Message: fmt.Sprintf(format, args...)})
	}
	platform := f.Platform
	if platform == "" {
		platform = PlatformSEVSNP
	}
	confidential := true
	if lv := vm.Libvirt; lv != nil {
		switch {
		case lv.LaunchSecurity == "sev-snp":
		case lv.LaunchSecurity != "":
			confidential = false
			add("libvirt.launch_security", lv.LaunchSecurity,
				"launchSecurity type %q is not allowed (only sev-snp)", lv.LaunchSecurity)
		case platform == PlatformNone:
			confidential = false
		case !p.Libvirt.AllowNonConfidential:
			confidential = false
			add("libvirt.launch_security", "none",
				"domain has no sev-snp launchSecurity on a sev-snp host (allow_non_confidential is false)")
		default:
			confidential = false
		}
		if lv.QEMUCommandline {
			add("libvirt.qemu_commandline", "qemu:commandline",
				"domain passes free-form QEMU arguments or overrides (qemu: namespace)")
		}
	}
	if confidential {
		out = append(out, p.checkFirmware(vm, f)...)
		out = append(out, p.checkSNP(vm, f)...)
	}
	if !slices.Contains(p.VCPU.Models, vm.CPUModel) {
		add("vcpu.models", vm.CPUModel, "CPU model %q is not allowed (allowed: %s)", vm.CPUModel, strings.Join(p.VCPU.Models, ", "))
	}
	if vm.VCPUs < p.VCPU.Min || vm.VCPUs > p.VCPU.Max {
		add("vcpu.count", strconv.Itoa(vm.VCPUs), "%d vCPUs is outside %d..%d", vm.VCPUs, p.VCPU.Min, p.VCPU.Max)
	}
	if vm.MemoryMiB < p.Memory.MinMiB || vm.MemoryMiB > p.Memory.MaxMiB {
		add("memory.size", strconv.FormatUint(vm.MemoryMiB, 10), "%d MiB of memory is outside %d..%d MiB",
			vm.MemoryMiB, p.Memory.MinMiB, p.Memory.MaxMiB)
	}
	out = append(out, p.checkDevices(vm)...)
	out = append(out, p.checkDiskDirs(vm, f)...)
	r := &p.Resources
	if vm.CPUWeight > r.MaxCPUWeight {
		add("resources.max_cpu_weight", strconv.FormatUint(vm.CPUWeight, 10), "cpu_weight %d is above %d", vm.CPUWeight, r.MaxCPUWeight)
	}
	if r.MaxMemoryMaxMiB != 0 && vm.MemoryMaxMiB > r.MaxMemoryMaxMiB {
		add("resources.max_memory_max_mib", strconv.FormatUint(vm.MemoryMaxMiB, 10), "memory_max_mib %d is above %d", vm.MemoryMaxMiB, r.MaxMemoryMaxMiB)
	}
	if r.MaxTasksMax != 0 && vm.TasksMax > r.MaxTasksMax {
		add("resources.max_tasks_max", strconv.FormatUint(vm.TasksMax, 10), "tasks_max %d is above %d", vm.TasksMax, r.MaxTasksMax)
	}
	if r.RequireMemoryMax && vm.MemoryMaxMiB == 0 {
		add("resources.require_memory_max", "0", "memory_max_mib is not set: the host requires a memory limit per guest")
	}
	switch {
	case f.QEMUPath == "":
		add("qemu.binaries", "unknown", "QEMU binary is unknown")
	case !slices.Contains(p.QEMU.Binaries, f.QEMUPath):
		add("qemu.binaries", f.QEMUPath, "QEMU binary %s is not allowed (allowed: %s)", f.QEMUPath, strings.Join(p.QEMU.Binaries, ", "))
	}
	min, _ := ParseVersion(p.QEMU.MinVersion)
	switch {
	case f.QEMUVersion == [3]int{}:
		add("qemu.min_version", "unknown", "QEMU version is unknown (need >= %s)", p.QEMU.MinVersion)
	case versionLess(f.QEMUVersion, min):
		v := fmt.Sprintf("%d.%d.%d", f.QEMUVersion[0], f.QEMUVersion[1], f.QEMUVersion[2])
		add("qemu.min_version", v, "QEMU %s is older than %s", v, p.QEMU.MinVersion)
	}
	return out
}

func versionLess(a, b [3]int) bool {
	for i := range a {
		if a[i] != b[i] {
			return a[i] < b[i]
		}
	}
	return false
}

func (p *Policy) checkFirmware(vm *VM, f Facts) []Violation {
	var out []Violation
	add := func(rule, value, format string, args ...any) {
		out = append(out, Violation{Rule: rule, Value: value, Message: fmt.Sprintf(format, args...)})
	}
	if lv := vm.Libvirt; lv != nil && lv.LoaderType != "rom" {
		t := lv.LoaderType
		if t == "" {
			t = "unspecified"
		}
		add("firmware.loader", t,
			"loader type %s: SEV-SNP firmware must be loaded with -bios (<loader type='rom'>), not pflash", t)
	}
	if !p.Firmware.AllowAny {
		switch {
		case f.FirmwareSHA256 == nil && f.FirmwareSHA384 == nil:
			name := vm.Firmware
			if name == "" {
				name = "(none given)"
			}
			add("firmware.allowlist", name, "firmware %s: digest unknown, cannot match the allowlist", name)
		case !digestListed(p.Firmware.SHA256, f.FirmwareSHA256) && !digestListed(p.Firmware.SHA384, f.FirmwareSHA384):
			add("firmware.allowlist", "sha256:"+hexDigest(f.FirmwareSHA256),
				"firmware %s (sha256 %s, sha384 %s) is not in the allowlist", vm.Firmware,
				hexDigest(f.FirmwareSHA256), hexDigest(f.FirmwareSHA384))
		}
	}
	if vm.Kernel != "" && !p.Firmware.AllowUnmeasuredKernel {
		if !f.FirmwareHasKernelHashes {
			add("firmware.allow_unmeasured_kernel", vm.Firmware,
				"kernel %s given but firmware %s has no SNP kernel-hashes section: kernel, initrd and cmdline would not be measured",
				vm.Kernel, vm.Firmware)
		}
		if lv := vm.Libvirt; lv != nil && !lv.KernelHashes {
			add("firmware.allow_unmeasured_kernel", "kernelHashes=no",
				"kernel %s given but launchSecurity has no kernelHashes='yes': kernel, initrd and cmdline would not be measured", vm.Kernel)
		}
	}
	return out
}

func digestListed(list []string, d []byte) bool {
	if d == nil {
		return false
	}
	for _, s := range list {
		if b, err := hex.DecodeString(s); err == nil && bytes.Equal(b, d) {
			return true
		}
	}
	return false
}

func (p *Policy) checkSNP(vm *VM, f Facts) []Violation {
	var out []Violation
	add := func(rule, value, format string, args ...any) {
		out = append(out, Violation{Rule: rule, Value: value, Message: fmt.Sprintf(format, args...)})
	}
	s := &vm.SNP
	pv := fmt.Sprintf("%#x", s.Policy)
	gp, err := abi.ParseSnpPolicy(s.Policy)
	if err != nil {
		add("snp.policy", pv, "guest policy %s is invalid: %v", pv, err)
	} else {
		for _, b := range guestPolicyBits {
			set := b.get(gp)
			if set && slices.Contains(p.SNP.Forbid, b.name) {
				add("snp.forbid_"+b.name, pv, "policy %s has %s set (bit %d)", pv, b.name, b.bit)
			}
			if !set && slices.Contains(p.SNP.Require, b.name) {
				add("snp.require_"+b.name, pv, "policy %s has %s clear (bit %d)", pv, b.name, b.bit)
			}
		}
		if p.SNP.MinABI != "" {
			maj, mnr, _ := parseABI(p.SNP.MinABI)
			if gp.ABIMajor < maj || (gp.ABIMajor == maj && gp.ABIMinor < mnr) {
				add("snp.min_abi", fmt.Sprintf("%d.%d", gp.ABIMajor, gp.ABIMinor),
					"policy %s requests ABI %d.%d, below the minimum %s", pv, gp.ABIMajor, gp.ABIMinor, p.SNP.MinABI)
			}
		}
	}
	if extra := s.GuestFeatures &^ p.SNP.AllowedGuestFeatures; extra != 0 {
		fv := fmt.Sprintf("%#x", s.GuestFeatures)
		add("snp.allowed_guest_features", fv, "guest features %s use bits %#x outside the allowed mask %#x",
			fv, extra, p.SNP.AllowedGuestFeatures)
	}
	hasIDBlock := s.IDBlock != "" || s.IDKeyFile != ""
	if p.IDBlock.Required && !hasIDBlock {
		add("id_block.required", "none", "no ID block: the host requires one")
	}
	if hasIDBlock && len(p.IDBlock.IDKeys) > 0 && !digestListed(p.IDBlock.IDKeys, f.IDKeyDigest) {
		d := hexDigest(f.IDKeyDigest)
		add("id_block.id_keys", d, "ID key digest %s is not allowed", d)
	}
	hasAuthor := s.AuthorKeyEnabled || s.AuthorKeyFile != "" || f.AuthorKeyDigest != nil
	if hasAuthor && len(p.IDBlock.AuthorKeys) > 0 && !digestListed(p.IDBlock.AuthorKeys, f.AuthorKeyDigest) {
		d := hexDigest(f.AuthorKeyDigest)
		add("id_block.author_keys", d, "author key digest %s is not allowed", d)
	}
	switch r := p.HostData.Required; {
	case r == "":
	case r == HostDataDerived:
		if s.HostData != HostDataDerived {
			if !hostDataIsDerived(vm) {
				add("host_data.required", valueOrNone(s.HostData),
					"host data %s is not the derived digest of the definition (host_data = \"derived\")", valueOrNone(s.HostData))
			}
		}
	default:
		want, _ := base64.StdEncoding.DecodeString(r)
		got, err := vm.HostDataBytes()
		if err != nil || !bytes.Equal(got, want) {
			add("host_data.required", valueOrNone(s.HostData), "host data %s is not the required %s", valueOrNone(s.HostData), r)
		}
	}
	return out
}

// hostDataIsDerived reports whether vm's explicit host data equals what "derived" would
// give (the canonical form then uses the placeholder).
func hostDataIsDerived(vm *VM) bool {
	got, err := vm.HostDataBytes()
	if err != nil || got == nil {
		return false
	}
	c := vm.clone()
	c.SNP.HostData = HostDataDerived
	d, err := c.DerivedHostData()
	return err == nil && bytes.Equal(d[:], got)
}

func valueOrNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func (p *Policy) checkDevices(vm *VM) []Violation {
	var out []Violation
	for _, d := range vm.Devices() {
		if !slices.Contains(p.Devices.Classes, d.Class) {
			out = append(out, Violation{Rule: "devices.classes", Value: d.Class,
				Message: fmt.Sprintf("device class %s (%s) is not allowed (allowed: %s)", d.Class, d.Backend, strings.Join(p.Devices.Classes, ", "))})
			continue
		}
		var key string
		var list []string
		switch d.Class {
		case DeviceDisk:
			key, list = "devices.disk_formats", p.Devices.DiskFormats
		case DeviceNetwork:
			key, list = "devices.network_types", p.Devices.NetworkTypes
		case DeviceChannel:
			key, list = "devices.channel_types", p.Devices.ChannelTypes
		default:
			continue
		}
		if !slices.Contains(list, d.Backend) {
			out = append(out, Violation{Rule: key, Value: d.Backend,
				Message: fmt.Sprintf("%s backend %s is not allowed (allowed: %s)", d.Class, d.Backend, strings.Join(list, ", "))})
		}
	}
	return out
}

// checkDiskDirs checks that every disk's real path lies in the image directory or one
// of the allowed disk directories (unknown real paths fail).
func (p *Policy) checkDiskDirs(vm *VM, f Facts) []Violation {
	var out []Violation
	dirs := slices.Clone(p.Devices.DiskDirs)
	if f.ImageDir != "" {
		dirs = append(dirs, f.ImageDir)
	}
	for i, d := range vm.Disks {
		real := ""
		if i < len(f.DiskRealPaths) {
			real = f.DiskRealPaths[i]
		}
		switch {
		case real == "":
			out = append(out, Violation{Rule: "devices.disk_dirs", Value: d.Path,
				Message: fmt.Sprintf("disk %s: its real path is unknown (it does not exist or cannot be resolved)", d.Path)})
		case !slices.ContainsFunc(dirs, func(dir string) bool { return pathUnder(real, dir) }):
			allowed := strings.Join(dirs, ", ")
			if allowed == "" {
				allowed = "none"
			}
			shown := d.Path
			if real != d.Path {
				shown += " (" + real + ")"
			}
			out = append(out, Violation{Rule: "devices.disk_dirs", Value: real,
				Message: fmt.Sprintf("disk %s is outside the allowed disk directories (%s)", shown, allowed)})
		}
	}
	return out
}

// pathUnder tells whether the clean absolute path p lies inside directory dir.
func pathUnder(p, dir string) bool {
	dir = filepath.Clean(dir)
	return dir != "" && dir != "." && strings.HasPrefix(p, strings.TrimSuffix(dir, "/")+"/")
}

// Device is one guest device as the host policy sees it.
type Device struct {
	// Class is DeviceDisk, DeviceNetwork, DeviceConsole, DeviceChannel, or for other
	// libvirt devices their element name ("watchdog", "hostdev", "input", "usb", ...).
	Class string `json:"class"`
	// Backend is the disk format, network type, channel type ("vsock", "serial", or a
	// libvirt channel type), console type, or a libvirt device model; may be empty.
	Backend string `json:"backend,omitempty"`
}

// Devices lists every device of vm, in a fixed order: disks, networks, console, channel
// (vsock, then serial), then devices only a libvirt domain can have.
func (vm *VM) Devices() []Device {
	var ds []Device
	for _, d := range vm.Disks {
		ds = append(ds, Device{Class: DeviceDisk, Backend: d.Format})
	}
	for _, n := range vm.Networks {
		ds = append(ds, Device{Class: DeviceNetwork, Backend: n.Type})
	}
	if vm.Console == "serial" {
		ds = append(ds, Device{Class: DeviceConsole, Backend: "serial"})
	}
	if c := vm.Channel; c != nil {
		if c.VsockCID != 0 {
			ds = append(ds, Device{Class: DeviceChannel, Backend: "vsock"})
		}
		if c.Serial {
			ds = append(ds, Device{Class: DeviceChannel, Backend: "serial"})
		}
	}
	if vm.Libvirt != nil {
		ds = append(ds, vm.Libvirt.OtherDevices...)
	}
	return ds
}
