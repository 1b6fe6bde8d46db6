package config

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"

	"github.com/google/go-sev-guest/abi"
)

// Defaults applied by (*VM).SetDefaults to zero values.
const (
	DefaultVCPUs         = 1
	DefaultCPUModel      = "EPYC-v4"
	DefaultMemoryMiB     = 512
	DefaultGuestPolicy   = 0x30000
	DefaultGuestFeatures = 0x1
	DefaultVMMType       = "QEMU"
	DefaultRestart       = "never"
	DefaultConsole       = "serial"
	DefaultDiskFormat    = "raw"
	// HostDataDerived is the SNP.HostData value asking for the SHA-256 of the canonical
	// definition (see DerivedHostData).
	HostDataDerived = "derived"
)

// Limits checked by (*VM).Validate.
const (
	MaxVCPUs     = 512
	MaxMemoryMiB = 4 << 20 // 4 TiB
	// MaxCPUWeight is the largest cgroup CPU weight (cpu.weight, systemd's CPUWeight=).
	MaxCPUWeight  = 10000
	MaxCmdlineLen = 4096 // bytes, without the terminating NUL
	// Sizes fixed by the SEV-SNP ABI (SNP_LAUNCH_FINISH) and QEMU's sev-snp-guest object.
	IDBlockSize                 = 96
	IDAuthSize                  = 4096
	HostDataSize                = 32
	GuestVisibleWorkaroundsSize = 16
)

var (
	nameRE     = lazyRegexp(`^[A-Za-z0-9_][A-Za-z0-9._-]{0,62}$`)
	cpuModelRE = lazyRegexp(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
	tapRE      = lazyRegexp(`^[A-Za-z0-9_][A-Za-z0-9._-]{0,14}$`)
	hex16RE    = lazyRegexp(`^[0-9a-fA-F]{32}$`)
)

// DecodeVM decodes a VM definition strictly (see DecodeStrict), applies defaults and
// validates it; name labels messages (usually the file path). Errors list every problem.
func DecodeVM(name string, data []byte) (*VM, error) {
	var vm VM
	if err := DecodeStrict(name, data, &vm); err != nil {
		return nil, err
	}
	vm.SetDefaults()
	if err := vm.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &vm, nil
}

// LoadVM reads a VM definition file (at most MaxFileSize bytes) with DecodeVM.
// Relative paths in the definition are resolved against the file's directory.
func LoadVM(path string) (*VM, error) {
	var vm VM
	if err := ReadFileStrict(path, &vm); err != nil {
		return nil, err
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("resolving definition path: %w", err)
	}
	vm.ResolvePaths(filepath.Dir(abs))
	vm.SetDefaults()
	if err := vm.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &vm, nil
}

// ResolvePaths makes every relative host path of vm absolute against dir ("keyless" in
// IDKeyFile is not a path and is kept).
func (vm *VM) ResolvePaths(dir string) {
	ps := []*string{&vm.Firmware, &vm.Kernel, &vm.Initrd, &vm.SNP.AuthorKeyFile}
	if vm.SNP.IDKeyFile != "keyless" {
		ps = append(ps, &vm.SNP.IDKeyFile)
	}
	for i := range vm.Disks {
		ps = append(ps, &vm.Disks[i].Path)
	}
	for _, p := range ps {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
}

// SetDefaults fills zero values with their documented defaults (see the Default*
// constants). It is idempotent.
func (vm *VM) SetDefaults() {
	if vm.VCPUs == 0 {
		vm.VCPUs = DefaultVCPUs
	}
	if vm.CPUModel == "" {
		vm.CPUModel = DefaultCPUModel
	}
	if vm.MemoryMiB == 0 {
		vm.MemoryMiB = DefaultMemoryMiB
	}
	if vm.SNP.Policy == 0 {
		vm.SNP.Policy = DefaultGuestPolicy
	}
	if vm.SNP.GuestFeatures == 0 {
		vm.SNP.GuestFeatures = DefaultGuestFeatures
	}
	if vm.SNP.VMMType == "" {
		vm.SNP.VMMType = DefaultVMMType
	}
	if vm.SNP.AuthorKeyFile != "" {
		vm.SNP.AuthorKeyEnabled = true
	}
	if vm.Restart == "" {
		vm.Restart = DefaultRestart
	}
	if vm.Console == "" {
		vm.Console = DefaultConsole
	}
	for i := range vm.Disks {
		if vm.Disks[i].Format == "" {
			vm.Disks[i].Format = DefaultDiskFormat
		}
	}
}

// Validate checks a defaulted VM (call SetDefaults first) and returns every problem
// found, joined with errors.Join, or nil. It checks the definition on its own; what the
// host allows is the host policy's business (Policy.Check).
func (vm *VM) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	if !nameRE().MatchString(vm.Name) {
		bad("name %q: want 1..63 characters of [A-Za-z0-9._-], not starting with '.' or '-'", vm.Name)
	}
	if vm.VCPUs < 1 || vm.VCPUs > MaxVCPUs {
		bad("vcpus %d: want 1..%d", vm.VCPUs, MaxVCPUs)
	}
	if !cpuModelRE().MatchString(vm.CPUModel) {
		bad("cpu_model %q: want a QEMU CPU model name ([A-Za-z0-9._-], at most 64 characters)", vm.CPUModel)
	}
	if vm.MemoryMiB < 1 || vm.MemoryMiB > MaxMemoryMiB {
		bad("memory_mib %d: want 1..%d", vm.MemoryMiB, MaxMemoryMiB)
	}
	if vm.CPUWeight > MaxCPUWeight {
		bad("cpu_weight %d: want 1..%d (0: not set)", vm.CPUWeight, MaxCPUWeight)
	}
	if vm.MemoryMaxMiB != 0 && (vm.MemoryMaxMiB < vm.MemoryMiB || vm.MemoryMaxMiB > 2*MaxMemoryMiB) {
		bad("memory_max_mib %d: want at least memory_mib (%d): QEMU needs the guest's RAM and its own", vm.MemoryMaxMiB, vm.MemoryMiB)
	}
	if vm.TasksMax != 0 && vm.TasksMax < uint64(vm.VCPUs)+16 {
		bad("tasks_max %d: want at least vcpus + 16 (%d): QEMU runs a thread per vCPU and its own", vm.TasksMax, vm.VCPUs+16)
	}
	if vm.Firmware == "" {
		bad("firmware: required (path of the OVMF image loaded with -bios)")
	} else if err := checkPath(vm.Firmware); err != nil {
		bad("firmware: %w", err)
	}
	if vm.Kernel != "" {
		if err := checkPath(vm.Kernel); err != nil {
			bad("kernel: %w", err)
		}
	} else {
		if vm.Initrd != "" {
			bad("initrd: given without a kernel")
		}
		if vm.Cmdline != "" {
			bad("cmdline: given without a kernel")
		}
	}
	if vm.Initrd != "" {
		if err := checkPath(vm.Initrd); err != nil {
			bad("initrd: %w", err)
		}
	}
	if len(vm.Cmdline) > MaxCmdlineLen {
		bad("cmdline: %d bytes, more than %d", len(vm.Cmdline), MaxCmdlineLen)
	}
	if strings.ContainsRune(vm.Cmdline, 0) {
		bad("cmdline: contains a NUL byte")
	}
	errs = append(errs, vm.SNP.validate()...)
	for i, d := range vm.Disks {
		if err := checkPath(d.Path); err != nil {
			bad("disk[%d].path: %w", i, err)
		}
		if d.Format != "raw" && d.Format != "qcow2" {
			bad("disk[%d].format %q: want \"raw\" or \"qcow2\"", i, d.Format)
		}
	}
	for i, n := range vm.Networks {
		switch n.Type {
		case "user":
			if n.Tap != "" {
				bad("network[%d].tap: only for type \"tap\"", i)
			}
		case "tap":
			if !tapRE().MatchString(n.Tap) {
				bad("network[%d].tap %q: want an interface name of 1..15 characters [A-Za-z0-9._-]", i, n.Tap)
			}
		default:
			bad("network[%d].type %q: want \"user\" or \"tap\"", i, n.Type)
		}
		if n.MAC != "" {
			hw, err := net.ParseMAC(n.MAC)
			switch {
			case err != nil || len(hw) != 6:
				bad("network[%d].mac %q: want six hex octets like 52:54:00:12:34:56", i, n.MAC)
			case hw[0]&1 != 0:
				bad("network[%d].mac %q: is a multicast address", i, n.MAC)
			}
		}
	}
	if c := vm.Channel; c != nil {
		if c.VsockCID == 0 && !c.Serial {
			bad("channel: neither vsock_cid nor serial is set")
		}
		if c.VsockCID != 0 && (c.VsockCID < 3 || c.VsockCID == 0xffffffff) {
			bad("channel.vsock_cid %d: want 3..4294967294", c.VsockCID)
		}
	}
	if vm.Restart != "never" && vm.Restart != "on-crash" {
		bad("restart %q: want \"never\" or \"on-crash\"", vm.Restart)
	}
	if vm.Console != "serial" && vm.Console != "none" {
		bad("console %q: want \"serial\" or \"none\"", vm.Console)
	}
	return errors.Join(errs...)
}

func (s *SNP) validate() []error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if _, err := abi.ParseSnpPolicy(s.Policy); err != nil {
		bad("snp.policy %#x: %w", s.Policy, err)
	}
	if s.GuestFeatures&1 == 0 {
		bad("snp.guest_features %#x: bit 0 (SNPActive) must be set", s.GuestFeatures)
	}
	if s.HostData != "" && s.HostData != HostDataDerived {
		if _, err := decodeB64(s.HostData, HostDataSize); err != nil {
			bad("snp.host_data: %w (or \"derived\")", err)
		}
	}
	if s.GuestVisibleWorkarounds != "" {
		if _, err := decodeB64(s.GuestVisibleWorkarounds, GuestVisibleWorkaroundsSize); err != nil {
			bad("snp.guest_visible_workarounds: %w", err)
		}
	}
	if s.IDBlock != "" {
		if _, err := decodeB64(s.IDBlock, IDBlockSize); err != nil {
			bad("snp.id_block: %w", err)
		}
	}
	if s.IDAuth != "" {
		if _, err := decodeB64(s.IDAuth, IDAuthSize); err != nil {
			bad("snp.id_auth: %w", err)
		}
	}
	if (s.IDBlock == "") != (s.IDAuth == "") {
		bad("snp.id_block and snp.id_auth: give both or neither")
	}
	if s.IDKeyFile != "" {
		if s.IDBlock != "" {
			bad("snp.id_key_file: conflicts with a given snp.id_block")
		}
		if s.IDKeyFile != "keyless" {
			if err := checkPath(s.IDKeyFile); err != nil {
				bad("snp.id_key_file: %w", err)
			}
		}
	} else {
		if s.AuthorKeyFile != "" {
			bad("snp.author_key_file: needs snp.id_key_file")
		}
		if s.FamilyID != "" || s.ImageID != "" || s.GuestSVN != 0 {
			bad("snp.family_id, image_id and guest_svn: only for an ID block built from snp.id_key_file")
		}
	}
	if s.AuthorKeyFile != "" {
		if err := checkPath(s.AuthorKeyFile); err != nil {
			bad("snp.author_key_file: %w", err)
		}
	}
	if s.AuthorKeyEnabled && s.IDBlock == "" && s.IDKeyFile == "" {
		bad("snp.author_key_enabled: needs an ID block")
	}
	for _, f := range []struct{ key, v string }{{"family_id", s.FamilyID}, {"image_id", s.ImageID}} {
		if f.v != "" && !hex16RE().MatchString(f.v) {
			bad("snp.%s %q: want 32 hex digits (16 bytes)", f.key, f.v)
		}
	}
	if s.CBitPos != 0 && (s.CBitPos < 32 || s.CBitPos > 63) {
		bad("snp.cbitpos %d: want 32..63 (or 0: from the host)", s.CBitPos)
	}
	if s.ReducedPhysBits > 63 {
		bad("snp.reduced_phys_bits %d: want 0..63", s.ReducedPhysBits)
	}
	if s.VMMType != "QEMU" {
		bad("snp.vmm_type %q: want \"QEMU\"", s.VMMType)
	}
	return errs
}

// checkPath accepts a clean absolute path without NUL bytes.
func checkPath(p string) error {
	switch {
	case p == "":
		return errors.New("empty path")
	case !filepath.IsAbs(p):
		return fmt.Errorf("path %q is not absolute", p)
	case strings.ContainsRune(p, 0):
		return errors.New("path contains a NUL byte")
	case filepath.Clean(p) != p:
		return fmt.Errorf("path %q is not clean (want %q)", p, filepath.Clean(p))
	}
	return nil
}

// decodeB64 decodes standard base64 (with padding) of exactly size bytes.
func decodeB64(s string, size int) ([]byte, error) {
	b, err := base64.StdEncoding.Strict().DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("decoding base64: %w", err)
	}
	if len(b) != size {
		return nil, fmt.Errorf("decodes to %d bytes, want %d", len(b), size)
	}
	return b, nil
}

// Canonical returns the canonical form of vm: the JSON encoding (fields in declaration
// order, no insignificant space) of a copy with defaults applied. Two definitions that
// launch the same VM have the same canonical form whatever their TOML spelling. The
// "derived" host-data placeholder is part of it, so DerivedHostData is not circular.
func (vm *VM) Canonical() ([]byte, error) {
	c := vm.clone()
	c.SetDefaults()
	b, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("encoding canonical definition: %w", err)
	}
	return b, nil
}

// clone returns a deep copy of vm.
func (vm *VM) clone() *VM {
	c := *vm
	c.Disks = append([]Disk(nil), vm.Disks...)
	c.Networks = append([]Network(nil), vm.Networks...)
	if vm.Channel != nil {
		ch := *vm.Channel
		c.Channel = &ch
	}
	if vm.Libvirt != nil {
		l := *vm.Libvirt
		l.OtherDevices = append([]Device(nil), vm.Libvirt.OtherDevices...)
		c.Libvirt = &l
	}
	return &c
}

// DerivedHostData is the SHA-256 of the canonical definition: the 32 bytes given to the
// guest as HOST_DATA when SNP.HostData is "derived", so the guest (and a verifier) can
// tell which definition launched it.
func (vm *VM) DerivedHostData() ([HostDataSize]byte, error) {
	b, err := vm.Canonical()
	if err != nil {
		return [HostDataSize]byte{}, err
	}
	return sha256.Sum256(b), nil
}

// HostDataBytes resolves SNP.HostData to the 32 bytes given to QEMU's host-data
// property: nil when empty (no host data), the derived digest for "derived", else the
// decoded base64.
func (vm *VM) HostDataBytes() ([]byte, error) {
	switch vm.SNP.HostData {
	case "":
		return nil, nil
	case HostDataDerived:
		d, err := vm.DerivedHostData()
		if err != nil {
			return nil, err
		}
		return d[:], nil
	}
	b, err := decodeB64(vm.SNP.HostData, HostDataSize)
	if err != nil {
		return nil, fmt.Errorf("decoding snp.host_data: %w", err)
	}
	return b, nil
}

// hexDigest renders a digest for messages; "unknown" when nil.
func hexDigest(b []byte) string {
	if b == nil {
		return "unknown"
	}
	return hex.EncodeToString(b)
}
