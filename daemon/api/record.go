package api

import "time"

// NotConfidential is the status note shown wherever a VM launched on platform "none" is
// displayed: it runs without SEV-SNP, so none of its memory is protected from the host.
const NotConfidential = "no SEV-SNP: not confidential"

// LaunchRecord is the durable record of one launch: what was measured, what QEMU was told,
// and how to find the process again. snpd writes it before the guest's first `cont` and
// serves it to verifiers. Digests are lowercase hex; an empty string means "not present".
type LaunchRecord struct {
	// Name is the VM name.
	Name string `json:"name"`
	// Platform is "sev-snp" or "none".
	Platform string `json:"platform"`
	// Confidential is true only on platform "sev-snp".
	Confidential bool `json:"confidential"`
	// Note is NotConfidential on platform "none", empty otherwise.
	Note string `json:"note,omitempty"`
	// ProductLine is the host chip's SEV-SNP product line ("Milan", "Genoa", "Turin"),
	// read from its CPUID at launch, on platform "sev-snp" only; empty on platform "none"
	// and in records made before snpd recorded it (exports then name no product line).
	ProductLine string `json:"product_line,omitempty"`

	// ExpectedDigest is the SEV-SNP launch digest (48 bytes, hex) the AMD-SP will compute
	// for this launch (computed on platform "none" too, for reference).
	ExpectedDigest string `json:"expected_digest"`
	// FirmwareSHA256 and FirmwareSHA384 are digests of the exact firmware bytes QEMU loads.
	FirmwareSHA256 string `json:"firmware_sha256"`
	FirmwareSHA384 string `json:"firmware_sha384,omitempty"`
	// FirmwareSize is the firmware image size in bytes.
	FirmwareSize int64 `json:"firmware_size"`
	// KernelSHA256 and InitrdSHA256 are digests of the exact direct-boot files (empty: none).
	KernelSHA256 string `json:"kernel_sha256,omitempty"`
	InitrdSHA256 string `json:"initrd_sha256,omitempty"`
	// Cmdline is the kernel command line (direct boot only).
	Cmdline string `json:"cmdline,omitempty"`
	// KernelUKI describes the kernel when it is a unified kernel image (systemd-stub
	// with .linux, .initrd, .cmdline, ...), read by snpd from its PE section table; nil
	// for any other kernel and without one.
	KernelUKI *UKIInfo `json:"kernel_uki,omitempty"`

	// VCPUs is the vCPU count; CPUModel the QEMU CPU model; VCPUSig its CPUID signature
	// as placed in every VMSA.
	VCPUs    int    `json:"vcpus"`
	CPUModel string `json:"cpu_model"`
	VCPUSig  uint32 `json:"vcpu_sig"`
	// MemoryMiB is guest RAM in MiB.
	MemoryMiB uint64 `json:"memory_mib"`
	// VMMType is the VMSA layout used for the expected digest ("QEMU").
	VMMType string `json:"vmm_type"`

	// Policy is the SNP guest policy (GUEST_POLICY); GuestFeatures the VMSA SEV_FEATURES.
	Policy        uint64 `json:"policy"`
	GuestFeatures uint64 `json:"guest_features"`
	// HostData is the 32-byte HOST_DATA (hex; empty: none).
	HostData string `json:"host_data,omitempty"`
	// IDBlockSHA256 and IDAuthSHA256 are digests of the ID block (96 bytes) and ID auth
	// (4096 bytes) given to QEMU (empty: none); AuthorKey tells whether an author key was used.
	IDBlockSHA256 string `json:"id_block_sha256,omitempty"`
	IDAuthSHA256  string `json:"id_auth_sha256,omitempty"`
	AuthorKey     bool   `json:"author_key,omitempty"`
	// IDKeyDigest and AuthorKeyDigest are the SHA-384 digests (48 bytes, hex) of the ID and
	// author public keys, which the AMD-SP reports as ID_KEY_DIGEST and AUTHOR_KEY_DIGEST
	// (empty: no ID block / no author key). Attestation fails closed when an ID block was
	// used but IDKeyDigest is empty.
	IDKeyDigest     string `json:"id_key_digest,omitempty"`
	AuthorKeyDigest string `json:"author_key_digest,omitempty"`
	// KernelHashes tells whether QEMU placed the kernel/initrd/cmdline hashes page.
	KernelHashes bool `json:"kernel_hashes,omitempty"`
	// CBitPos and ReducedPhysBits are the values given to sev-snp-guest (0 on "none").
	CBitPos         uint32 `json:"cbitpos,omitempty"`
	ReducedPhysBits uint32 `json:"reduced_phys_bits,omitempty"`

	// QEMUPath and QEMUVersion identify the binary; Argv is its exact argument vector
	// (Argv[0] is the binary path).
	QEMUPath    string   `json:"qemu_path"`
	QEMUVersion string   `json:"qemu_version"`
	Argv        []string `json:"argv"`
	// Cgroup is where the QEMU process runs: its systemd unit ("machine-snpd-web.scope")
	// or cgroup path, or "snpd's own: <why>" when snpd has no cgroup to give guests
	// (their limits are then not applied).
	Cgroup string `json:"cgroup,omitempty"`
	// QEMUExe is the executable the QEMU process runs (/proc/PID/exe once its monitor
	// answered): QEMUPath itself, or the binary a wrapper script named as qemu exec'd.
	// Reattach checks the process against it.
	QEMUExe string `json:"qemu_exe,omitempty"`
	// Accel is "kvm" or "tcg"; AccelNote says why TCG was chosen on a host with KVM.
	Accel     string `json:"accel"`
	AccelNote string `json:"accel_note,omitempty"`
	// RuntimeDir is the per-VM runtime directory holding qmp.sock, agent.sock,
	// console.log and qemu.stderr.
	RuntimeDir string `json:"runtime_dir"`

	// PID is QEMU's process id; StartTicks is field 22 of /proc/PID/stat (clock ticks
	// after boot) at launch, which with PID and the executable identifies the process
	// again after snpd restarts.
	PID        int    `json:"pid"`
	StartTicks uint64 `json:"start_ticks"`
	// StartedAt is when QEMU was started (wall clock).
	StartedAt time.Time `json:"started_at"`
}

// UKIInfo describes a unified kernel image given as the kernel. Its initrd and command
// line are inside the kernel file, so KernelSHA256 covers them.
type UKIInfo struct {
	// Sections lists every PE section in file order.
	Sections []UKISection `json:"sections"`
	// Cmdline is the UKI's .cmdline section: what the kernel boots with when the
	// record's Cmdline is empty (systemd-stub without Secure Boot boots a non-empty
	// -append instead).
	Cmdline string `json:"cmdline,omitempty"`
	// Uname is the .uname section (the kernel release); OSRelease is PRETTY_NAME from
	// .osrel; Stub is the stub's LoaderInfo from .sdmagic ("systemd-stub 252.39-1~deb12u2").
	Uname     string `json:"uname,omitempty"`
	OSRelease string `json:"os_release,omitempty"`
	Stub      string `json:"stub,omitempty"`
}

// UKISection is one PE section of a UKI.
type UKISection struct {
	// Name is the section name (".linux"), quoted when not printable ASCII.
	Name string `json:"name"`
	// Size is the content size in bytes (the raw data trimmed to VirtualSize).
	Size uint32 `json:"size"`
	// SHA256 is the lowercase hex SHA-256 of the content.
	SHA256 string `json:"sha256"`
}
