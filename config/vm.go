package config

// VM is one VM definition (a vm.toml file, or a libvirt domain mapped onto it). It is the
// one typed spec of a launch: the daemon derives both the QEMU argv and the expected
// launch digest from it, and the host policy is checked against it.
//
// Zero values mean "default" where a default is documented; Validate reports every
// problem. Paths are host paths, opened once by the daemon at start.
type VM struct {
	// Name identifies the VM: 1..63 characters of [A-Za-z0-9._-], not starting with '.' or '-'.
	Name string `toml:"name" json:"name"`
	// VCPUs is the number of vCPUs (one VMSA each in the launch digest). 1..512, default 1.
	VCPUs int `toml:"vcpus" json:"vcpus"`
	// CPUModel is the QEMU CPU model (-cpu), e.g. "EPYC-v4". Its CPUID signature is what
	// the VMSA carries, so it is part of the launch digest. Default "EPYC-v4".
	CPUModel string `toml:"cpu_model" json:"cpu_model"`
	// MemoryMiB is guest RAM in MiB (2^20 bytes). Default 512.
	MemoryMiB uint64 `toml:"memory_mib" json:"memory_mib"`

	// Firmware is the path of the OVMF image loaded with -bios (size a multiple of 4096).
	Firmware string `toml:"firmware" json:"firmware"`
	// Kernel, Initrd and Cmdline request measured direct boot (-kernel/-initrd/-append).
	// Empty Kernel means firmware boot; Initrd and Cmdline then must be empty too.
	Kernel  string `toml:"kernel,omitempty" json:"kernel,omitempty"`
	Initrd  string `toml:"initrd,omitempty" json:"initrd,omitempty"`
	Cmdline string `toml:"cmdline,omitempty" json:"cmdline,omitempty"`

	// SNP holds the SEV-SNP launch parameters (ignored on platform "none" except for
	// the expected digest, which is still computed and recorded).
	SNP SNP `toml:"snp" json:"snp"`

	Disks    []Disk    `toml:"disk,omitempty" json:"disks,omitempty"`
	Networks []Network `toml:"network,omitempty" json:"networks,omitempty"`
	// Channel configures the guest channel used for attestation (nil: none).
	Channel *Channel `toml:"channel,omitempty" json:"channel,omitempty"`
	// Restart is the restart policy when QEMU dies unexpectedly: "never" (default) or
	// "on-crash".
	Restart string `toml:"restart,omitempty" json:"restart,omitempty"`
	// Console is the guest console: "serial" (default: the first serial port, logged by
	// snpd) or "none".
	Console string `toml:"console,omitempty" json:"console,omitempty"`

	// CPUWeight, MemoryMaxMiB and TasksMax are applied to the guest's own cgroup (a
	// systemd scope in machine.slice, or snpd's delegated cgroup subtree): the CPU weight
	// against other guests and the host (1..10000; the cgroup default is 100), the most
	// memory QEMU may use in MiB (guest RAM plus QEMU's own; at least MemoryMiB), and the
	// most threads (at least VCPUs + 16). 0: not set (the default of the cgroup). The host
	// policy bounds them ([resources]).
	CPUWeight    uint64 `toml:"cpu_weight,omitempty" json:"cpu_weight,omitempty"`
	MemoryMaxMiB uint64 `toml:"memory_max_mib,omitempty" json:"memory_max_mib,omitempty"`
	TasksMax     uint64 `toml:"tasks_max,omitempty" json:"tasks_max,omitempty"`

	// Libvirt is set only for a VM mapped from a libvirt domain (FromLibvirtXML): what
	// libvirt would launch beyond this spec, for the host policy to judge. nil for
	// snpd's own definitions; never read from TOML.
	Libvirt *LibvirtSource `toml:"-" json:"libvirt,omitempty"`
}

// SNP are the sev-snp-guest object's settings and the measurement parameters.
type SNP struct {
	// Policy is the 64-bit SNP guest policy (SEV-SNP ABI spec, GUEST_POLICY), e.g.
	// 0x30000 (SMT allowed, reserved bit 17 set). Default 0x30000.
	Policy uint64 `toml:"policy" json:"policy"`
	// GuestFeatures is the VMSA SEV_FEATURES value KVM uses. Default 0x1 (SNPActive),
	// what QEMU >= 10.0 with KVM_SEV_INIT2 uses.
	GuestFeatures uint64 `toml:"guest_features" json:"guest_features"`
	// HostData is 32 bytes given to the guest in every report: base64, "derived" (SHA-256
	// of the canonical definition), or empty (none).
	HostData string `toml:"host_data,omitempty" json:"host_data,omitempty"`
	// IDBlock and IDAuth are base64 of the 96-byte ID block and 4096-byte ID auth
	// (empty: none). IDKeyFile instead makes snpd build and sign them at start with the
	// P-384 private key in that PEM file (AuthorKeyFile optional); IDKeyFile "keyless"
	// uses a recovered public key (enforces the digest, authenticates no author).
	IDBlock       string `toml:"id_block,omitempty" json:"id_block,omitempty"`
	IDAuth        string `toml:"id_auth,omitempty" json:"id_auth,omitempty"`
	IDKeyFile     string `toml:"id_key_file,omitempty" json:"id_key_file,omitempty"`
	AuthorKeyFile string `toml:"author_key_file,omitempty" json:"author_key_file,omitempty"`
	// FamilyID and ImageID are 16 bytes each, hex (32 hex digits), for a built ID block.
	FamilyID string `toml:"family_id,omitempty" json:"family_id,omitempty"`
	ImageID  string `toml:"image_id,omitempty" json:"image_id,omitempty"`
	// GuestSVN is the guest security version number placed in a built ID block.
	GuestSVN uint32 `toml:"guest_svn,omitempty" json:"guest_svn,omitempty"`
	// AuthorKeyEnabled sets the sev-snp-guest author-key-enabled property: the given
	// IDAuth carries an author key (set automatically when AuthorKeyFile is used).
	AuthorKeyEnabled bool `toml:"author_key_enabled,omitempty" json:"author_key_enabled,omitempty"`
	// GuestVisibleWorkarounds is base64 of the 16-byte guest-visible-workarounds
	// property (SNP_LAUNCH_START GOSVW); empty: all zero.
	GuestVisibleWorkarounds string `toml:"guest_visible_workarounds,omitempty" json:"guest_visible_workarounds,omitempty"`
	// VCEKDisabled sets the sev-snp-guest vcek-disabled property (reports must use VLEK).
	VCEKDisabled bool `toml:"vcek_disabled,omitempty" json:"vcek_disabled,omitempty"`
	// CBitPos and ReducedPhysBits: 0 means read from the host (CPUID 0x8000001F).
	CBitPos         uint32 `toml:"cbitpos,omitempty" json:"cbitpos,omitempty"`
	ReducedPhysBits uint32 `toml:"reduced_phys_bits,omitempty" json:"reduced_phys_bits,omitempty"`
	// VMMType selects the VMSA layout used for the expected digest: "QEMU" (default).
	VMMType string `toml:"vmm_type,omitempty" json:"vmm_type,omitempty"`
}

// Disk is a virtio-blk disk.
type Disk struct {
	// Path of the image file.
	Path string `toml:"path" json:"path"`
	// Format is "raw" (default) or "qcow2".
	Format string `toml:"format,omitempty" json:"format,omitempty"`
	// ReadOnly attaches the disk read-only.
	ReadOnly bool `toml:"read_only,omitempty" json:"read_only,omitempty"`
}

// Network is a virtio-net NIC.
type Network struct {
	// Type is "user" (QEMU user networking) or "tap".
	Type string `toml:"type" json:"type"`
	// Tap is the host tap interface name (Type "tap" only), 1..15 characters.
	Tap string `toml:"tap,omitempty" json:"tap,omitempty"`
	// MAC is the guest MAC address (empty: QEMU's default).
	MAC string `toml:"mac,omitempty" json:"mac,omitempty"`
}

// Channel is the guest channel for attestation: vsock, virtio-serial, or both.
type Channel struct {
	// VsockCID is the guest CID (>= 3; 0: no vsock device).
	VsockCID uint32 `toml:"vsock_cid,omitempty" json:"vsock_cid,omitempty"`
	// Serial adds a virtio-serial port named "org.snpd.agent.0" backed by a per-VM unix
	// socket in the runtime directory.
	Serial bool `toml:"serial,omitempty" json:"serial,omitempty"`
}
