package config

import (
	"errors"
	"fmt"
	"math/bits"
	"strconv"
	"strings"

	"libvirt.org/go/libvirtxml"
)

// MaxLibvirtXMLSize bounds the domain XML FromLibvirtXML accepts (1 MiB; a domain with a
// 4 KiB ID auth is about 10 KiB).
const MaxLibvirtXMLSize = 1 << 20

// LibvirtSource is what a libvirt domain asks for beyond the VM spec, kept so the host
// policy can name it (VM.Libvirt).
type LibvirtSource struct {
	// DomainType is the domain's type attribute ("kvm", "qemu").
	DomainType string `json:"domain_type,omitempty"`
	// UUID is the domain UUID as libvirt wrote it (may be empty before define).
	UUID string `json:"uuid,omitempty"`
	// Machine is the machine type (os/type machine=), e.g. "pc-q35-8.2".
	Machine string `json:"machine,omitempty"`
	// LaunchSecurity is the launchSecurity type: "sev-snp", "sev", "tdx", "s390-pv",
	// "unknown" for any other, or "" when the domain has none (not confidential).
	LaunchSecurity string `json:"launch_security,omitempty"`
	// KernelHashes is launchSecurity kernelHashes='yes' (the firmware measures -kernel,
	// -initrd and -append).
	KernelHashes bool `json:"kernel_hashes,omitempty"`
	// LoaderType is os/loader type=: "rom" (-bios, what SEV-SNP needs), "pflash", or ""
	// when unspecified (libvirt then picks pflash for UEFI).
	LoaderType string `json:"loader_type,omitempty"`
	// FirmwareAutoselect is os firmware= ("efi", "bios"; "" when not used).
	FirmwareAutoselect string `json:"firmware_autoselect,omitempty"`
	// Emulator is devices/emulator, the QEMU binary libvirt would run ("" if absent).
	Emulator string `json:"emulator,omitempty"`
	// QEMUCommandline is true when the domain uses the qemu: XML namespace (free-form
	// arguments, capability or property overrides).
	QEMUCommandline bool `json:"qemu_commandline,omitempty"`
	// OtherDevices are devices outside the VM spec's disks, networks, console and channel
	// (class named after the libvirt element, backend after its model or type), and disks,
	// NICs and channels the spec cannot express. Devices every x86 machine has anyway
	// (PCI roots and ports, SATA/IDE controllers, PS/2 input, q35's iTCO watchdog) and
	// devices disabled with model='none' are not listed.
	OtherDevices []Device `json:"other_devices,omitempty"`
}

// FromLibvirtXML maps a libvirt domain XML document onto the VM spec (defaults applied;
// not validated: the host policy judges what it finds, so a domain libvirt accepts is
// not refused for form). Every device is accounted for: what the spec cannot express is
// listed in VM.Libvirt.OtherDevices, never dropped. Malformed XML, an unparsable memory
// size or launchSecurity blob gives an error.
func FromLibvirtXML(data []byte) (*VM, error) {
	if len(data) > MaxLibvirtXMLSize {
		return nil, fmt.Errorf("parsing domain XML: %d bytes, more than the %d allowed", len(data), MaxLibvirtXMLSize)
	}
	var d libvirtxml.Domain
	if err := d.Unmarshal(string(data)); err != nil {
		return nil, fmt.Errorf("parsing domain XML: %w", err)
	}
	lv := &LibvirtSource{DomainType: d.Type, UUID: d.UUID}
	vm := &VM{Name: d.Name, Libvirt: lv, Console: "none"}
	var errs []error

	// vCPUs: the boot vCPUs (current) each get a VMSA.
	vm.VCPUs = 1
	if d.VCPU != nil {
		n := d.VCPU.Value
		if d.VCPU.Current != 0 {
			n = d.VCPU.Current
		}
		if n > MaxVCPUs {
			n = MaxVCPUs + 1 // out of any policy's bounds, without overflowing int
		}
		vm.VCPUs = int(n)
	}
	// CPU model: QEMU's x86 default is qemu64; host-passthrough and host-model are named
	// "host-passthrough"/"host-model" so the policy can refuse them.
	vm.CPUModel = "qemu64"
	if c := d.CPU; c != nil {
		switch c.Mode {
		case "host-passthrough", "host-model", "maximum":
			vm.CPUModel = c.Mode
		default:
			if c.Model != nil && c.Model.Value != "" {
				vm.CPUModel = strings.TrimSpace(c.Model.Value)
			}
		}
	}
	if d.Memory == nil {
		errs = append(errs, errors.New("memory: missing"))
	} else {
		mib, err := memoryMiB(d.Memory.Value, d.Memory.Unit)
		if err != nil {
			errs = append(errs, fmt.Errorf("memory: %w", err))
		}
		vm.MemoryMiB = mib
	}

	if os := d.OS; os != nil {
		if os.Type != nil {
			lv.Machine = os.Type.Machine
		}
		lv.FirmwareAutoselect = os.Firmware
		if os.Loader != nil {
			vm.Firmware = strings.TrimSpace(os.Loader.Path)
			lv.LoaderType = os.Loader.Type
		}
		vm.Kernel, vm.Initrd, vm.Cmdline = os.Kernel, os.Initrd, os.Cmdline
		if os.NVRam != nil || os.VarStore != nil {
			// A UEFI variable store: boot configuration the launch digest does not cover.
			lv.OtherDevices = append(lv.OtherDevices, Device{Class: "nvram", Backend: "uefi-vars"})
		}
	}

	if ls := d.LaunchSecurity; ls != nil {
		switch {
		case ls.SEVSNP != nil:
			lv.LaunchSecurity = "sev-snp"
			if err := mapSNP(&vm.SNP, lv, ls.SEVSNP); err != nil {
				errs = append(errs, err)
			}
		case ls.SEV != nil:
			lv.LaunchSecurity = "sev"
		case ls.TDX != nil:
			lv.LaunchSecurity = "tdx"
		case ls.S390PV != nil:
			lv.LaunchSecurity = "s390-pv"
		default:
			lv.LaunchSecurity = "unknown"
		}
	}
	lv.QEMUCommandline = d.QEMUCommandline != nil || d.QEMUCapabilities != nil ||
		d.QEMUOverride != nil || d.QEMUDeprecation != nil

	if dev := d.Devices; dev != nil {
		lv.Emulator = dev.Emulator
		mapDevices(vm, dev)
	}
	vm.SetDefaults()
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("mapping domain %q: %w", d.Name, err)
	}
	return vm, nil
}

func mapSNP(s *SNP, lv *LibvirtSource, x *libvirtxml.DomainLaunchSecuritySEVSNP) error {
	var errs []error
	lv.KernelHashes = x.KernelHashes == "yes"
	s.AuthorKeyEnabled = x.AuthorKey == "yes"
	s.VCEKDisabled = x.VCEK == "no"
	if x.Policy != nil {
		s.Policy = *x.Policy
	} else {
		s.Policy = DefaultGuestPolicy // libvirt's and QEMU's default
	}
	if x.CBitPos != nil {
		if *x.CBitPos > 63 {
			errs = append(errs, fmt.Errorf("cbitpos %d: want 0..63", *x.CBitPos))
		}
		s.CBitPos = uint32(min(*x.CBitPos, 64))
	}
	if x.ReducedPhysBits != nil {
		if *x.ReducedPhysBits > 63 {
			errs = append(errs, fmt.Errorf("reducedPhysBits %d: want 0..63", *x.ReducedPhysBits))
		}
		s.ReducedPhysBits = uint32(min(*x.ReducedPhysBits, 64))
	}
	for _, f := range []struct {
		elem string
		v    string
		size int
		dst  *string
	}{
		{"guestVisibleWorkarounds", x.GuestVisibleWorkarounds, GuestVisibleWorkaroundsSize, &s.GuestVisibleWorkarounds},
		{"idBlock", x.IDBlock, IDBlockSize, &s.IDBlock},
		{"idAuth", x.IDAuth, IDAuthSize, &s.IDAuth},
		{"hostData", x.HostData, HostDataSize, &s.HostData},
	} {
		v := strings.TrimSpace(f.v)
		if v == "" {
			continue
		}
		if _, err := decodeB64(v, f.size); err != nil {
			errs = append(errs, fmt.Errorf("launchSecurity %s: %w", f.elem, err))
			continue
		}
		*f.dst = v
	}
	if (s.IDBlock == "") != (s.IDAuth == "") {
		errs = append(errs, errors.New("launchSecurity: idBlock and idAuth must be given together"))
	}
	return errors.Join(errs...)
}

// memoryMiB converts a libvirt memory size (unit default KiB) to MiB, rounding up as
// libvirt does when it builds QEMU's -m.
func memoryMiB(v uint, unit string) (uint64, error) {
	var mul uint64
	switch unit {
	case "b", "bytes":
		mul = 1
	case "KB":
		mul = 1000
	case "", "k", "K", "KiB":
		mul = 1 << 10
	case "MB":
		mul = 1000 * 1000
	case "M", "m", "MiB":
		mul = 1 << 20
	case "GB":
		mul = 1000 * 1000 * 1000
	case "G", "g", "GiB":
		mul = 1 << 30
	case "TB":
		mul = 1000 * 1000 * 1000 * 1000
	case "T", "t", "TiB":
		mul = 1 << 40
	default:
		return 0, fmt.Errorf("unknown unit %q", unit)
	}
	hi, b := bits.Mul64(uint64(v), mul)
	if hi != 0 || b > uint64(MaxMemoryMiB)<<20 {
		return MaxMemoryMiB + 1, fmt.Errorf("%d %s is more than %d MiB", v, unit, uint64(MaxMemoryMiB))
	}
	if b == 0 {
		return 0, errors.New("size is zero")
	}
	return (b + 1<<20 - 1) >> 20, nil
}

// mapDevices fills vm's disks, networks, console and channel from dev, and lists every
// other device in vm.Libvirt.OtherDevices.
func mapDevices(vm *VM, dev *libvirtxml.DomainDeviceList) {
	lv := vm.Libvirt
	other := func(class, backend string) {
		lv.OtherDevices = append(lv.OtherDevices, Device{Class: class, Backend: backend})
	}
	for _, d := range dev.Disks {
		kind := d.Device
		if kind == "" {
			kind = "disk"
		}
		var path string
		if s := d.Source; s != nil {
			switch {
			case s.File != nil:
				path = s.File.File
			case s.Block != nil:
				path = s.Block.Dev
			default:
				other("disk", "source-"+diskSourceType(s))
				continue
			}
		}
		if kind != "disk" { // cdrom, floppy, lun
			other(kind, path)
			continue
		}
		format := "raw"
		if d.Driver != nil && d.Driver.Type != "" {
			format = d.Driver.Type
		}
		vm.Disks = append(vm.Disks, Disk{Path: path, Format: format, ReadOnly: d.ReadOnly != nil})
	}
	for _, n := range dev.Interfaces {
		typ := "unknown"
		var tap string
		if s := n.Source; s != nil {
			switch {
			case s.User != nil:
				typ = "user"
			case s.Ethernet != nil, s.Network != nil, s.Bridge != nil:
				typ = "tap" // libvirt backs these with a tap device
			default:
				typ = ifaceSourceType(s)
			}
		}
		if n.Target != nil {
			tap = n.Target.Dev
		}
		net := Network{Type: typ}
		if typ == "tap" {
			net.Tap = tap
		}
		if n.MAC != nil {
			net.MAC = n.MAC.Address
		}
		vm.Networks = append(vm.Networks, net)
	}
	if len(dev.Serials) > 0 || len(dev.Consoles) > 0 {
		vm.Console = "serial"
	}
	for _, c := range dev.Channels {
		switch {
		case c.Target != nil && c.Target.VirtIO != nil && (c.Source == nil || c.Source.UNIX != nil || c.Source.Pty != nil):
			if vm.Channel == nil {
				vm.Channel = &Channel{}
			}
			vm.Channel.Serial = true
		default:
			other(DeviceChannel, chardevType(c.Source, c.Target))
		}
	}
	if v := dev.VSock; v != nil {
		var cid uint64
		if v.CID != nil && v.CID.Address != "" {
			cid, _ = strconv.ParseUint(v.CID.Address, 10, 32)
		}
		if cid == 0 { // auto-assigned: any CID; 0xffffffff never matches a real one
			cid = 0xffffffff
		}
		if vm.Channel == nil {
			vm.Channel = &Channel{}
		}
		vm.Channel.VsockCID = uint32(cid)
	}
	for _, c := range dev.Controllers {
		switch c.Type {
		case "pci", "sata", "ide", "virtio-serial", "scsi", "fdc":
			// Buses every machine or device above needs; no guest-visible function of
			// their own beyond what the policy already sees.
		case "usb":
			if c.Model != "none" {
				other("usb", c.Model)
			}
		default:
			other("controller", c.Type)
		}
	}
	for _, in := range dev.Inputs {
		if in.Bus == "ps2" || in.Bus == "" && (in.Type == "mouse" || in.Type == "keyboard") {
			continue // the i8042 every x86 machine has
		}
		other("input", in.Type+"/"+in.Bus)
	}
	for _, w := range dev.Watchdogs {
		if w.Model == "itco" {
			continue // part of q35's ICH9 LPC
		}
		other("watchdog", w.Model)
	}
	if b := dev.MemBalloon; b != nil && b.Model != "none" {
		other("memballoon", b.Model)
	}
	for _, a := range dev.Audios {
		if a.None == nil {
			other("audio", "")
		}
	}
	for _, v := range dev.Videos {
		if v.Model.Type != "none" {
			other("video", v.Model.Type)
		}
	}
	for range dev.Graphics {
		other("graphics", "")
	}
	for _, s := range dev.Sounds {
		other("sound", s.Model)
	}
	for range dev.Hostdevs {
		other("hostdev", "")
	}
	for range dev.Filesystems {
		other("filesystem", "")
	}
	for range dev.Smartcards {
		other("smartcard", "")
	}
	for range dev.Parallels {
		other("parallel", "")
	}
	for _, t := range dev.TPMs {
		other("tpm", t.Model)
	}
	for range dev.RedirDevs {
		other("redirdev", "")
	}
	for range dev.Hubs {
		other("hub", "")
	}
	for _, r := range dev.RNGs {
		other("rng", r.Model)
	}
	if dev.NVRAM != nil {
		other("nvram", "")
	}
	for _, p := range dev.Panics {
		other("panic", p.Model)
	}
	for _, s := range dev.Shmems {
		other("shmem", s.Name)
	}
	for range dev.Memorydevs {
		other("memory", "")
	}
	if dev.IOMMU != nil || len(dev.IOMMUs) > 0 {
		other("iommu", "")
	}
	for range dev.Crypto {
		other("crypto", "")
	}
	if dev.PStore != nil {
		other("pstore", "")
	}
	for range dev.Leases {
		other("lease", "")
	}
}

func diskSourceType(s *libvirtxml.DomainDiskSource) string {
	switch {
	case s.Dir != nil:
		return "dir"
	case s.Network != nil:
		return "network"
	case s.Volume != nil:
		return "volume"
	case s.NVME != nil:
		return "nvme"
	case s.VHostUser != nil:
		return "vhostuser"
	case s.VHostVDPA != nil:
		return "vhostvdpa"
	}
	return "unknown"
}

func ifaceSourceType(s *libvirtxml.DomainInterfaceSource) string {
	switch {
	case s.VHostUser != nil:
		return "vhostuser"
	case s.Server != nil:
		return "server"
	case s.Client != nil:
		return "client"
	case s.MCast != nil:
		return "mcast"
	case s.Internal != nil:
		return "internal"
	case s.Direct != nil:
		return "direct"
	case s.Hostdev != nil:
		return "hostdev"
	case s.UDP != nil:
		return "udp"
	case s.VDPA != nil:
		return "vdpa"
	case s.Null != nil:
		return "null"
	case s.VDS != nil:
		return "vds"
	}
	return "unknown"
}

func chardevType(s *libvirtxml.DomainChardevSource, t *libvirtxml.DomainChannelTarget) string {
	var src string
	switch {
	case s == nil:
		src = "none"
	case s.SpiceVMC != nil:
		src = "spicevmc"
	case s.SpicePort != nil:
		src = "spiceport"
	case s.TCP != nil:
		src = "tcp"
	case s.UDP != nil:
		src = "udp"
	case s.File != nil:
		src = "file"
	case s.Pipe != nil:
		src = "pipe"
	case s.Dev != nil:
		src = "dev"
	case s.UNIX != nil:
		src = "unix"
	case s.Pty != nil:
		src = "pty"
	default:
		src = "other"
	}
	tgt := "none"
	if t != nil {
		switch {
		case t.GuestFWD != nil:
			tgt = "guestfwd"
		case t.Xen != nil:
			tgt = "xen"
		case t.VirtIO != nil:
			tgt = "virtio"
		}
	}
	return tgt + "/" + src
}
