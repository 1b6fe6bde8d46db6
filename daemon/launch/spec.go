package launch

import (
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"unicode/utf8"

	"github.com/google/go-sev-guest/abi"
	"github.com/snpd/snpd/config"
)

// Platform selects how guests are launched.
type Platform string

const (
	// PlatformSEVSNP launches SEV-SNP guests (the default).
	PlatformSEVSNP Platform = "sev-snp"
	// PlatformNone launches the same pinned machine without SEV-SNP (development, CI):
	// no sev-snp-guest object, no confidential-guest-support; not confidential.
	PlatformNone Platform = "none"
)

// ParsePlatform maps a configuration string to a Platform ("" means PlatformSEVSNP).
func ParsePlatform(s string) (Platform, error) {
	switch s {
	case "", string(PlatformSEVSNP):
		return PlatformSEVSNP, nil
	case string(PlatformNone):
		return PlatformNone, nil
	}
	return "", fmt.Errorf("unknown platform %q (want %q or %q)", s, PlatformSEVSNP, PlatformNone)
}

// Accel is QEMU's accelerator.
type Accel string

const (
	// AccelKVM uses /dev/kvm (required for SEV-SNP).
	AccelKVM Accel = "kvm"
	// AccelTCG is QEMU's emulator (platform "none" on hosts without usable KVM).
	AccelTCG Accel = "tcg"
)

// Sizes of the sev-snp-guest binary properties (bytes), SEV-SNP ABI spec 8.17 (SNP_LAUNCH_FINISH).
const (
	HostDataSize                = 32
	IDBlockSize                 = 96
	IDAuthSize                  = 4096
	GuestVisibleWorkaroundsSize = 16
)

// HostFacts are the properties of this host a Spec depends on.
type HostFacts struct {
	// CBitPos and ReducedPhysBits come from CPUID 0x8000001F (EBX[5:0], EBX[11:6]); 0 when
	// the CPU does not report SEV (then a VM definition must set them for platform sev-snp).
	CBitPos, ReducedPhysBits uint32
	// Accel is the accelerator to use: AccelKVM when /dev/kvm is usable, else AccelTCG.
	Accel Accel
	// ProductLine is the chip's SEV-SNP product line ("Milan", "Genoa", "Turin") from
	// CPUID 1 (snp.ProductLineFromCPUID); empty when the CPU does not report SEV-SNP or
	// names no known line.
	ProductLine string
}

// Spec is the one typed launch spec. BuildArgv (the QEMU argv), MeasureInput (the expected
// launch digest) and the pre-cont verification are all derived from it, so they cannot
// drift. Build it with NewSpec; the runtime fields are filled by the Launcher.
type Spec struct {
	// Name is the VM name ([A-Za-z0-9][A-Za-z0-9._-]{0,62}).
	Name string
	// Platform is PlatformSEVSNP or PlatformNone.
	Platform Platform
	// Accel is the accelerator.
	Accel Accel
	// VCPUs is the vCPU count (1..512); CPUModel the -cpu model (no options).
	VCPUs    int
	CPUModel string
	// MemoryMiB is guest RAM in MiB.
	MemoryMiB uint64

	// Firmware is the sealed OVMF image given to -bios (never nil in a launch).
	Firmware *SealedFile
	// Kernel and Initrd are the sealed direct-boot files (nil: none); Cmdline is -append
	// (only with Kernel).
	Kernel, Initrd *SealedFile
	Cmdline        string

	// SNP are the sev-snp-guest settings (emitted on PlatformSEVSNP only).
	SNP SNPSpec
	// ProductLine is the host chip's SEV-SNP product line (HostFacts.ProductLine; empty:
	// unknown), recorded on PlatformSEVSNP so verifiers pin the right AMD roots.
	ProductLine string

	// Disks are virtio-blk disks, in order.
	Disks []DiskSpec
	// Networks are virtio-net NICs, in order.
	Networks []NetSpec
	// VsockCID adds vhost-vsock-pci with this guest CID (0: none).
	VsockCID uint32
	// AgentSerial adds the virtio-serial port AgentPortName backed by Runtime.Agent.
	AgentSerial bool
	// Console logs the first serial port to <Runtime.Dir>/console.log (false: no serial
	// port at all).
	Console bool

	// Limits are applied to the guest's own cgroup (Launcher.Placer).
	Limits Limits

	// Runtime is what the Launcher creates per launch (zero in pure tests).
	Runtime Runtime
}

// Runtime are the per-launch host resources referenced by the argv.
type Runtime struct {
	// Dir is the per-VM runtime directory (<RuntimeDir>/vms/<name>); console.log is
	// written there by QEMU.
	Dir string
	// QMP is the listening unix socket (Dir/qmp.sock) QEMU inherits for its monitor
	// (nil in tests that never start QEMU).
	QMP *os.File
	// Agent is the listening unix socket (Dir/agent.sock) backing the virtio-serial agent
	// port (nil when AgentSerial is false or in tests).
	Agent *os.File
}

// SNPSpec are the sev-snp-guest object's properties and the digest parameters.
type SNPSpec struct {
	// Policy is the guest policy (SEV-SNP ABI spec, 4.3 GUEST_POLICY).
	Policy abi.SnpPolicy
	// GuestFeatures is the VMSA SEV_FEATURES value (measured; not a QEMU property).
	GuestFeatures uint64
	// HostData is HOST_DATA (32 bytes; nil: none).
	HostData []byte
	// GuestVisibleWorkarounds is SNP_LAUNCH_START's GOSVW (16 bytes; nil: all zero).
	GuestVisibleWorkarounds []byte
	// IDBlock (96 bytes) and IDAuth (4096 bytes); nil: none. Both or neither.
	IDBlock, IDAuth []byte
	// AuthorKey sets author-key-enabled (IDAuth carries an author key).
	AuthorKey bool
	// VCEKDisabled sets vcek-disabled.
	VCEKDisabled bool
	// KernelHashes sets kernel-hashes (true exactly when Spec.Kernel is set).
	KernelHashes bool
	// CBitPos and ReducedPhysBits are given to QEMU on PlatformSEVSNP.
	CBitPos, ReducedPhysBits uint32
	// VMMType is the VMSA layout used for the digest ("QEMU").
	VMMType string
	// IDKeyFile and AuthorKeyFile request an ID block built and signed at launch from
	// these PEM files ("keyless": no key file); FamilyID, ImageID (16 bytes each) and
	// GuestSVN go into it.
	IDKeyFile, AuthorKeyFile string
	FamilyID, ImageID        [16]byte
	GuestSVN                 uint32
}

// PolicyBits is the 64-bit guest policy value given to QEMU.
func (s *SNPSpec) PolicyBits() uint64 { return abi.SnpPolicyToBytes(s.Policy) }

// DiskSpec is one virtio-blk disk over -blockdev.
type DiskSpec struct {
	// Path is the absolute host path of the image, as the definition names it.
	Path string
	// Format is "raw" or "qcow2".
	Format string
	// ReadOnly attaches it read-only.
	ReadOnly bool
	// Files are the descriptors QEMU gets for it (an fdset: O_RDWR then O_RDONLY, or
	// only O_RDONLY for a read-only disk) and RealPath what they point at; both set by
	// OpenDisks (nil and "" in specs built by tests that never start QEMU).
	Files    []*os.File
	RealPath string
}

// NetSpec is one virtio-net NIC.
type NetSpec struct {
	// Type is "user" or "tap".
	Type string
	// Tap is the host interface name (Type "tap").
	Tap string
	// MAC is the canonical lowercase MAC ("" for QEMU's default).
	MAC string
}

var (
	nameRE     = lazyRegexp(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)
	cpuModelRE = lazyRegexp(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
	tapRE      = lazyRegexp(`^[A-Za-z0-9][A-Za-z0-9._-]{0,14}$`)
	hex16RE    = lazyRegexp(`^[0-9a-fA-F]{32}$`)
)

// NewSpec builds the launch spec from a VM definition, the platform, host facts and the
// sealed firmware/kernel/initrd (kernel and initrd nil when the definition has none). It
// applies config's defaults to a copy of vm (vm is not changed), runs its Validate, and
// returns every problem found, joined. It does not
// take ownership of the sealed files.
func NewSpec(vm *config.VM, platform Platform, host HostFacts, fw, kernel, initrd *SealedFile) (*Spec, error) {
	if vm == nil {
		return nil, errors.New("building launch spec: no VM definition")
	}
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }

	// Defaults and the definition's own validation are config's; a copy keeps vm as given.
	v := *vm
	v.Disks = append([]config.Disk(nil), vm.Disks...)
	v.Networks = append([]config.Network(nil), vm.Networks...)
	v.SetDefaults()
	if err := v.Validate(); err != nil {
		errs = append(errs, err)
	}
	vm = &v

	s := &Spec{
		Name:      vm.Name,
		Platform:  platform,
		Accel:     host.Accel,
		VCPUs:     vm.VCPUs,
		CPUModel:  vm.CPUModel,
		MemoryMiB: vm.MemoryMiB,
		Firmware:  fw,
		Kernel:    kernel,
		Initrd:    initrd,
		Cmdline:   vm.Cmdline,
		Console:   vm.Console != "none",
		Limits:    Limits{CPUWeight: vm.CPUWeight, MemoryMax: vm.MemoryMaxMiB << 20, TasksMax: vm.TasksMax},

		ProductLine: host.ProductLine,
	}
	if platform != PlatformSEVSNP && platform != PlatformNone {
		bad("platform %q: want %q or %q", platform, PlatformSEVSNP, PlatformNone)
	}
	if host.Accel != AccelKVM && host.Accel != AccelTCG {
		bad("accelerator %q: want %q or %q", host.Accel, AccelKVM, AccelTCG)
	}
	if platform == PlatformSEVSNP && host.Accel != AccelKVM {
		bad("platform sev-snp needs KVM (/dev/kvm is not usable)")
	}
	if !nameRE().MatchString(s.Name) {
		bad("name %q: want 1..63 of [A-Za-z0-9._-], starting with a letter or digit", s.Name)
	}
	if s.VCPUs < 1 || s.VCPUs > 512 {
		bad("vcpus %d: want 1..512", s.VCPUs)
	}
	if !cpuModelRE().MatchString(s.CPUModel) {
		bad("cpu_model %q: want a plain QEMU CPU model name (letters, digits, . _ -)", s.CPUModel)
	}
	if s.MemoryMiB < 16 || s.MemoryMiB > 4<<20 {
		bad("memory_mib %d: want 16..%d", s.MemoryMiB, 4<<20)
	}
	if fw == nil {
		bad("firmware: none given")
	} else if fw.Size%4096 != 0 {
		bad("firmware %s: size %d is not a multiple of 4096", fw.Path, fw.Size)
	}
	if (vm.Kernel == "") != (kernel == nil) {
		bad("kernel: definition and sealed file disagree")
	}
	if (vm.Initrd == "") != (initrd == nil) {
		bad("initrd: definition and sealed file disagree")
	}
	if kernel == nil && (initrd != nil || s.Cmdline != "") {
		bad("initrd and cmdline need a kernel")
	}
	if strings.ContainsRune(s.Cmdline, 0) || len(s.Cmdline) > 4096 {
		bad("cmdline: NUL byte or longer than 4096 bytes")
	}

	// SNP parameters (computed on both platforms: the expected digest is always recorded).
	sn := &s.SNP
	pol := vm.SNP.Policy
	if p, err := abi.ParseSnpPolicy(pol); err != nil {
		bad("snp.policy %#x: %w", pol, err)
	} else if abi.SnpPolicyToBytes(p) != pol {
		bad("snp.policy %#x: has bits go-sev-guest does not know (%#x round-trips)", pol, abi.SnpPolicyToBytes(p))
	} else {
		sn.Policy = p
	}
	sn.GuestFeatures = vm.SNP.GuestFeatures
	sn.VMMType = vm.SNP.VMMType
	if hd, err := vm.HostDataBytes(); err != nil {
		bad("snp.host_data: %w", err)
	} else {
		sn.HostData = hd
	}
	if w := vm.SNP.GuestVisibleWorkarounds; w != "" {
		if b, err := base64.StdEncoding.DecodeString(w); err != nil || len(b) != GuestVisibleWorkaroundsSize {
			bad("snp.guest_visible_workarounds: want base64 of %d bytes", GuestVisibleWorkaroundsSize)
		} else {
			sn.GuestVisibleWorkarounds = b
		}
	}
	if vm.SNP.IDKeyFile != "" && (vm.SNP.IDBlock != "" || vm.SNP.IDAuth != "") {
		bad("snp.id_key_file and snp.id_block/id_auth are mutually exclusive")
	}
	if (vm.SNP.IDBlock == "") != (vm.SNP.IDAuth == "") {
		bad("snp.id_block and snp.id_auth go together")
	}
	if vm.SNP.IDBlock != "" {
		if b, err := base64.StdEncoding.DecodeString(vm.SNP.IDBlock); err != nil || len(b) != IDBlockSize {
			bad("snp.id_block: want base64 of %d bytes", IDBlockSize)
		} else {
			sn.IDBlock = b
		}
	}
	if vm.SNP.IDAuth != "" {
		if b, err := base64.StdEncoding.DecodeString(vm.SNP.IDAuth); err != nil || len(b) != IDAuthSize {
			bad("snp.id_auth: want base64 of %d bytes", IDAuthSize)
		} else {
			sn.IDAuth = b
		}
	}
	sn.IDKeyFile, sn.AuthorKeyFile, sn.GuestSVN = vm.SNP.IDKeyFile, vm.SNP.AuthorKeyFile, vm.SNP.GuestSVN
	sn.AuthorKey = vm.SNP.AuthorKeyEnabled
	if sn.AuthorKeyFile != "" && sn.IDKeyFile == "" {
		bad("snp.author_key_file needs snp.id_key_file")
	}
	for _, f := range []struct {
		name, v string
		dst     *[16]byte
	}{{"snp.family_id", vm.SNP.FamilyID, &sn.FamilyID}, {"snp.image_id", vm.SNP.ImageID, &sn.ImageID}} {
		if f.v == "" {
			continue
		}
		if !hex16RE().MatchString(f.v) {
			bad("%s: want 32 hex digits", f.name)
			continue
		}
		b, _ := hex.DecodeString(f.v) // validated above
		copy(f.dst[:], b)
	}
	sn.VCEKDisabled = vm.SNP.VCEKDisabled
	sn.KernelHashes = kernel != nil
	sn.CBitPos, sn.ReducedPhysBits = vm.SNP.CBitPos, vm.SNP.ReducedPhysBits
	if sn.CBitPos == 0 {
		sn.CBitPos = host.CBitPos
	}
	if sn.ReducedPhysBits == 0 {
		sn.ReducedPhysBits = host.ReducedPhysBits
	}
	if platform == PlatformSEVSNP {
		if sn.CBitPos == 0 {
			bad("snp.cbitpos: the host does not report it (CPUID 0x8000001F); set it in the definition")
		} else if sn.CBitPos < 32 || sn.CBitPos > 63 {
			bad("snp.cbitpos %d: want 32..63", sn.CBitPos)
		}
		if sn.ReducedPhysBits == 0 || sn.ReducedPhysBits > 63 {
			bad("snp.reduced_phys_bits %d: want 1..63", sn.ReducedPhysBits)
		}
	}

	for i, d := range vm.Disks {
		ds := DiskSpec{Path: d.Path, Format: d.Format, ReadOnly: d.ReadOnly}
		if ds.Format == "" {
			ds.Format = "raw"
		}
		if ds.Format != "raw" && ds.Format != "qcow2" {
			bad("disk %d: format %q: want raw or qcow2", i, d.Format)
		}
		if !filepath.IsAbs(ds.Path) || filepath.Clean(ds.Path) != ds.Path || strings.ContainsAny(ds.Path, "\x00\n") {
			bad("disk %d: path %q: want a clean absolute path", i, d.Path)
		} else if !utf8.ValidString(ds.Path) {
			// JSON (-blockdev) would turn invalid UTF-8 into U+FFFD: another file.
			bad("disk %d: path %q: not valid UTF-8", i, d.Path)
		}
		s.Disks = append(s.Disks, ds)
	}
	for i, n := range vm.Networks {
		ns := NetSpec{Type: n.Type, Tap: n.Tap}
		switch n.Type {
		case "user":
			if n.Tap != "" {
				bad("network %d: tap is only for type tap", i)
			}
		case "tap":
			if !tapRE().MatchString(n.Tap) {
				bad("network %d: tap %q: want 1..15 of [A-Za-z0-9._-]", i, n.Tap)
			}
		default:
			bad("network %d: type %q: want user or tap", i, n.Type)
		}
		if n.MAC != "" {
			hw, err := net.ParseMAC(n.MAC)
			if err != nil || len(hw) != 6 {
				bad("network %d: mac %q: want six hex octets", i, n.MAC)
			} else {
				ns.MAC = hw.String()
			}
		}
		s.Networks = append(s.Networks, ns)
	}
	if c := vm.Channel; c != nil {
		if c.VsockCID != 0 && (c.VsockCID < 3 || c.VsockCID == 0xFFFFFFFF) {
			bad("channel.vsock_cid %d: want 3..4294967294", c.VsockCID)
		}
		s.VsockCID = c.VsockCID
		s.AgentSerial = c.Serial
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("building launch spec for %q: %w", vm.Name, errors.Join(errs...))
	}
	return s, nil
}
