package launch

import (
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
)

// Mode is the kind of launch to measure.
type Mode int

// Launch modes, spelled as the reference tool's --mode values.
const (
	ModeSNP         Mode = iota // "snp": SEV-SNP launch digest (the zero value)
	ModeSNPOVMFHash             // "snp:ovmf-hash": the digest after the firmware pages only
	ModeSNPSVSM                 // "snp:svsm": SEV-SNP with COCONUT-SVSM below the firmware
	ModeSEVES                   // "seves": SEV-ES launch measurement (SHA-256)
	ModeSEV                     // "sev": SEV launch measurement (SHA-256)
)

// String returns the --mode spelling.
func (m Mode) String() string {
	switch m {
	case ModeSNP:
		return "snp"
	case ModeSNPOVMFHash:
		return "snp:ovmf-hash"
	case ModeSNPSVSM:
		return "snp:svsm"
	case ModeSEVES:
		return "seves"
	case ModeSEV:
		return "sev"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// Name returns the reference tool's SevMode name (SEV, SEV_ES, SEV_SNP, SEV_SNP_SVSM),
// used in its --verbose output.
func (m Mode) Name() string {
	switch m {
	case ModeSEV:
		return "SEV"
	case ModeSEVES:
		return "SEV_ES"
	case ModeSNPSVSM:
		return "SEV_SNP_SVSM"
	}
	return "SEV_SNP"
}

// ParseMode parses a --mode value.
func ParseMode(s string) (Mode, error) {
	for _, m := range []Mode{ModeSNP, ModeSNPOVMFHash, ModeSNPSVSM, ModeSEVES, ModeSEV} {
		if s == m.String() {
			return m, nil
		}
	}
	return 0, fmt.Errorf("unknown mode %q (want sev, seves, snp, snp:ovmf-hash or snp:svsm)", s)
}

// PageType is the PAGE_TYPE of an SNP_LAUNCH_UPDATE (SNP firmware ABI, table 67).
type PageType uint8

// Page types.
const (
	PageNormal     PageType = 1
	PageVMSA       PageType = 2
	PageZero       PageType = 3
	PageUnmeasured PageType = 4
	PageSecrets    PageType = 5
	PageCPUID      PageType = 6
)

// String names the page type as the launch traces do.
func (t PageType) String() string {
	switch t {
	case PageNormal:
		return "NORMAL"
	case PageVMSA:
		return "VMSA"
	case PageZero:
		return "ZERO"
	case PageUnmeasured:
		return "UNMEASURED"
	case PageSecrets:
		return "SECRETS"
	case PageCPUID:
		return "CPUID"
	}
	return fmt.Sprintf("PageType(%d)", uint8(t))
}

// MeasureInput is everything that determines a launch measurement.
type MeasureInput struct {
	Mode Mode

	// Firmware is the OVMF image (the daemon passes a sealed memfd). It is streamed in
	// bounded chunks, never read whole. FirmwareSize is its length in bytes, a
	// non-zero multiple of 4096.
	Firmware     io.ReaderAt
	FirmwareSize int64

	// Kernel, Initrd are the direct-boot files; nil means absent. A nil Kernel means
	// no kernel hashes (Initrd and Cmdline must then be empty). A nil Initrd with a
	// kernel is hashed as the empty string, as QEMU does.
	Kernel, Initrd io.Reader
	// Cmdline is the kernel command line (-append) without its NUL terminator; ""
	// and absent are the same to QEMU and to the measurement.
	Cmdline string

	// VCPUs is the number of vCPUs (VMSA pages); at least 1 except in ModeSEV and
	// ModeSNPOVMFHash.
	VCPUs int
	// VCPUSig is the guest CPUID signature (see CPUSignature, CPUSig); it goes into the
	// VMSA's rdx for QEMU and SVSM.
	VCPUSig uint32
	// VMM selects the VMM's initial register conventions (QEMU, EC2, GCE).
	VMM VMMType
	// GuestFeatures is the VMSA SEV_FEATURES value for SNP. No default is applied
	// here: callers that mimic the reference pass 0x1 when the user gives none.
	GuestFeatures uint64
	// VMSAGPA is the GPA recorded for VMSA pages; 0 means DefaultVMSAGPA.
	VMSAGPA uint64
	// VMSAVariant selects an older initial VMSA (EC2 rdx=0, QEMU pre-INIT2).
	VMSAVariant VMSAVariant

	// OVMFHash, when 48 bytes, is a precomputed ModeSNPOVMFHash result used instead of
	// hashing the firmware pages (reference --snp-ovmf-hash); nil means hash them.
	OVMFHash []byte

	// SVSM is the SVSM image for ModeSNPSVSM (SVSMSize bytes, a multiple of 4096);
	// VarsSize is the size in bytes of the OVMF_VARS flash that sits between them.
	SVSM     io.ReaderAt
	SVSMSize int64
	VarsSize int64

	// SkipFileDigests leaves out the SHA-256 and SHA-384 of the firmware file bytes
	// (Measurement.FirmwareSHA256/384). By default they are computed in the same
	// read pass, beside the page hashing; they cost one full sequential SHA-384 and
	// SHA-256 of the file, which dominates on large mostly-zero images.
	SkipFileDigests bool
	// Log records every page update in Measurement.Updates.
	Log bool
	// Workers is the number of page-hashing goroutines; 0 means GOMAXPROCS.
	Workers int
}

// PageUpdate is one SNP_LAUNCH_UPDATE step of the PAGE_INFO chain.
type PageUpdate struct {
	Type        PageType
	GPA         uint64   // guest physical address of the page
	Contents    [48]byte // SHA-384 of the page for NORMAL and VMSA pages; zero otherwise
	DigestAfter [48]byte // the launch digest after this update
}

// Measurement is the result of Measure.
type Measurement struct {
	Mode Mode
	// Digest is the launch digest: 48 bytes (SHA-384) for SNP modes, 32 (SHA-256)
	// for SEV and SEV-ES.
	Digest []byte
	// OVMFDigest is the SNP digest after the firmware pages only (what
	// ModeSNPOVMFHash prints and --snp-ovmf-hash takes); nil for SEV/SEV-ES.
	OVMFDigest []byte
	// FirmwareSHA256, FirmwareSHA384 are digests of the firmware file bytes (the
	// bytes measured, read in the same pass); nil with MeasureInput.SkipFileDigests.
	FirmwareSHA256, FirmwareSHA384 []byte
	// KernelSHA256, InitrdSHA256, CmdlineSHA256 are the hashes placed in the SEV
	// hashes table; nil when no kernel was given.
	KernelSHA256, InitrdSHA256, CmdlineSHA256 []byte
	// BSPVMSA, APVMSA are the measured VMSA pages (4096 bytes each); APVMSA is nil
	// with one vCPU. In ModeSNPSVSM every vCPU uses BSPVMSA. Nil for SEV and
	// ModeSNPOVMFHash.
	BSPVMSA, APVMSA []byte
	// Sections are the firmware's SEV metadata sections as measured.
	Sections []MetadataSection
	// Updates lists every page update in order when MeasureInput.Log; else nil.
	Updates []PageUpdate
}

// VMSAPage returns the VMSA page of vCPU i.
func (m *Measurement) VMSAPage(i int) []byte {
	if i == 0 || m.APVMSA == nil {
		return m.BSPVMSA
	}
	return m.APVMSA
}

// Measurement errors users act on.
var (
	// ErrNoKernelHashes: a kernel was given but the firmware cannot measure it.
	//lint:ignore ST1005 the reference tool's exact wording, which scripts match
	ErrNoKernelHashes = errors.New("Kernel specified but OVMF metadata doesn't include SNP_KERNEL_HASHES section")
	// ErrNoSEVHashTable: SEV/SEV-ES kernel measurement needs the hashes table.
	//lint:ignore ST1005 the reference tool's exact wording, which scripts match
	ErrNoSEVHashTable = errors.New("Kernel specified but OVMF doesn't support kernel/initrd/cmdline measurement")
)

// kernelHashesHint follows ErrNoKernelHashes and says which of the two firmwares users
// hit this with fw is: an OvmfPkg/AmdSev build too old for SNP (it has the SEV hashes
// table that SEV and SEV-ES direct boot use, but no SNP_KERNEL_HASHES section: edk2
// 2022.11, Debian bookworm's source, is such a build; 2025.02 has the section), or not
// an AmdSev build at all (no hashes table: OvmfPkgX64, which Debian's OVMF.fd is).
func kernelHashesHint(fw *Firmware) string {
	if fw.SEVHashesTableSupported() {
		return "this firmware has the SEV hashes table (SEV and SEV-ES direct boot) but no SNP_KERNEL_HASHES " +
			"metadata section (like an OvmfPkg/AmdSev build of edk2 2022.11); use an AmdSev build of an edk2 " +
			"that has the section (2025.02 does), or boot without a kernel"
	}
	return "this firmware is not an OvmfPkg/AmdSev build (no SEV hashes table; Debian's OVMF.fd is OvmfPkgX64); " +
		"use an OVMF built from OvmfPkg/AmdSev/AmdSevX64.dsc, or boot without a kernel"
}

// Why hand-written: the Go ports do not fit. virtee/sev-snp-measure-go holds the
// whole image in memory (ovmf.OVMF.Data) and, in the versions read, does not cover
// all of the reference's modes (GCE, SVSM, SEV); its vectors follow v0.0.12 (EC2
// rdx=0). google/gce-tcb-verifier models GCE only. Either would also bring a
// firmware parser we would have to fuzz and bound anyway.

// Measure computes the launch digest of in, exactly as virtee/sev-snp-measure v0.0.13
// does. Firmware pages are hashed in parallel while the PAGE_INFO chain runs in
// order; memory use is bounded (a few MiB) whatever the image size.
func Measure(in MeasureInput) (*Measurement, error) {
	if err := in.check(); err != nil {
		return nil, err
	}
	switch in.Mode {
	case ModeSEV, ModeSEVES:
		return measureSEV(in)
	case ModeSNPOVMFHash, ModeSNP, ModeSNPSVSM:
		return measureSNP(in)
	}
	return nil, fmt.Errorf("unknown mode %d", int(in.Mode))
}

func (in *MeasureInput) check() error {
	if in.Firmware == nil {
		return errors.New("no firmware given")
	}
	if in.FirmwareSize <= 0 || in.FirmwareSize%PageSize != 0 {
		return fmt.Errorf("%w (got %d)", ErrFirmwareSize, in.FirmwareSize)
	}
	if in.Kernel == nil && (in.Initrd != nil || in.Cmdline != "") {
		return errors.New("an initrd or command line needs a kernel")
	}
	needVCPUs := in.Mode == ModeSNP || in.Mode == ModeSNPSVSM || in.Mode == ModeSEVES
	if needVCPUs && in.VCPUs < 1 {
		return fmt.Errorf("vcpus must be at least 1 in mode %s (got %d)", in.Mode, in.VCPUs)
	}
	if in.VCPUs > 4096 {
		return fmt.Errorf("vcpus %d is more than any VMM supports (4096)", in.VCPUs)
	}
	if in.OVMFHash != nil {
		if in.Mode != ModeSNP {
			return errors.New("SNP OVMF hash only works with SNP")
		}
		if len(in.OVMFHash) != sha512.Size384 {
			return fmt.Errorf("SNP OVMF hash must be 48 bytes (96 hex digits), got %d bytes", len(in.OVMFHash))
		}
	}
	if in.Mode == ModeSNPSVSM {
		if in.VMM != VMMQEMU {
			return errors.New("SVSM mode is only implemented for QEMU")
		}
		if in.SVSM == nil {
			return errors.New("snp:svsm mode requires an SVSM image")
		}
		if in.Kernel != nil {
			return errors.New("snp:svsm mode does not measure a kernel")
		}
		if in.VarsSize < 0 || in.VarsSize > FourGiB {
			return fmt.Errorf("OVMF_VARS size %d is out of range", in.VarsSize)
		}
	}
	return nil
}

func vmsaPages(in MeasureInput, resetEIP uint32, features uint64) (bsp, ap []byte, err error) {
	bsp = BuildVMSA(VMSAParams{EIP: bspEIP, SEVFeatures: features, VCPUSig: in.VCPUSig, VMM: in.VMM, Variant: in.VMSAVariant})
	if in.VCPUs > 1 {
		if resetEIP == 0 {
			return nil, nil, errors.New("firmware's SEV-ES reset block gives AP reset address 0: cannot start more than one vCPU")
		}
		ap = BuildVMSA(VMSAParams{EIP: resetEIP, SEVFeatures: features, VCPUSig: in.VCPUSig, VMM: in.VMM, Variant: in.VMSAVariant})
	}
	return bsp, ap, nil
}

// measureSEV computes SHA-256(firmware || [hashes table] || [VMSA per vCPU]).
func measureSEV(in MeasureInput) (*Measurement, error) {
	m := &Measurement{Mode: in.Mode}
	var fw *Firmware
	var err error
	if in.Mode == ModeSEVES || in.Kernel != nil {
		if fw, err = ParseFirmware(in.Firmware, in.FirmwareSize); err != nil {
			return nil, fmt.Errorf("parsing firmware: %w", err)
		}
		m.Sections = fw.Sections()
	}
	var table []byte
	if in.Kernel != nil {
		if !fw.SEVHashesTableSupported() {
			return nil, ErrNoSEVHashTable
		}
		if table, err = m.hashDirectBoot(in); err != nil {
			return nil, err
		}
	}
	if in.Mode == ModeSEVES {
		eip, err := fw.SEVESResetEIP()
		if err != nil {
			return nil, err
		}
		if m.BSPVMSA, m.APVMSA, err = vmsaPages(in, eip, 0); err != nil {
			return nil, err
		}
	}
	launch := sha256.New()
	extra := []hash.Hash{launch}
	var f256, f384 hash.Hash
	if !in.SkipFileDigests {
		f256, f384 = sha256.New(), sha512.New384()
		extra = append(extra, f256, f384)
	}
	if err := streamSequential(in.Firmware, in.FirmwareSize, extra); err != nil {
		return nil, fmt.Errorf("reading firmware: %w", err)
	}
	if !in.SkipFileDigests {
		m.FirmwareSHA256, m.FirmwareSHA384 = f256.Sum(nil), f384.Sum(nil)
	}
	launch.Write(table)
	for i := 0; i < in.VCPUs && in.Mode == ModeSEVES; i++ {
		launch.Write(m.VMSAPage(i))
	}
	m.Digest = launch.Sum(nil)
	return m, nil
}

func (m *Measurement) hashDirectBoot(in MeasureInput) ([]byte, error) {
	h, err := HashDirectBoot(in.Kernel, in.Initrd, in.Cmdline)
	if err != nil {
		return nil, err
	}
	m.KernelSHA256, m.InitrdSHA256, m.CmdlineSHA256 = h.Kernel[:], h.Initrd[:], h.Cmdline[:]
	return h.Table(), nil
}

// streamSequential feeds the whole of r to every hash in order, through one bounded
// buffer.
func streamSequential(r io.ReaderAt, size int64, hs []hash.Hash) error {
	buf := make([]byte, 1<<20)
	for off := int64(0); off < size; {
		n := int64(len(buf))
		if size-off < n {
			n = size - off
		}
		if err := readFull(r, buf[:n], off); err != nil {
			return err
		}
		for _, h := range hs {
			h.Write(buf[:n])
		}
		off += n
	}
	return nil
}

// readFull reads exactly len(p) bytes at off, accepting io.EOF with a full read.
func readFull(r io.ReaderAt, p []byte, off int64) error {
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		return fmt.Errorf("short read at offset %d: got %d of %d bytes (file shorter than its stated size?)", off, n, len(p))
	}
	return err
}

// gctx is the SNP guest context: the running launch digest.
type gctx struct {
	ld      [48]byte
	log     bool
	updates []PageUpdate
}

var zeroDigest [48]byte

// update extends the launch digest with one PAGE_INFO (SNP ABI table 67).
func (g *gctx) update(t PageType, gpa uint64, contents *[48]byte) {
	var pi [112]byte
	copy(pi[0:48], g.ld[:])
	copy(pi[48:96], contents[:])
	binary.LittleEndian.PutUint16(pi[96:98], 0x70) // length
	pi[98] = byte(t)
	// is_imi, vmpl3/2/1 perms and reserved stay 0.
	binary.LittleEndian.PutUint64(pi[104:112], gpa)
	g.ld = sha512.Sum384(pi[:])
	if g.log {
		g.updates = append(g.updates, PageUpdate{Type: t, GPA: gpa, Contents: *contents, DigestAfter: g.ld})
	}
}

func (g *gctx) updateEach(t PageType, gpa, size uint64) {
	for off := uint64(0); off < size; off += PageSize {
		g.update(t, gpa+off, &zeroDigest)
	}
}

func (g *gctx) updateNormalPage(gpa uint64, page []byte) {
	d := sha512.Sum384(page)
	g.update(PageNormal, gpa, &d)
}

func measureSNP(in MeasureInput) (*Measurement, error) {
	fw, err := ParseFirmware(in.Firmware, in.FirmwareSize)
	if err != nil {
		return nil, fmt.Errorf("parsing firmware: %w", err)
	}
	m := &Measurement{Mode: in.Mode, Sections: fw.Sections()}
	var svsm *Firmware
	if in.Mode == ModeSNPSVSM {
		if svsm, err = ParseFirmware(in.SVSM, in.SVSMSize); err != nil {
			return nil, fmt.Errorf("parsing SVSM image: %w", err)
		}
		m.Sections = svsm.Sections()
	}
	g := &gctx{log: in.Log}

	// Everything that can be refused is checked before the long hashing pass.
	var hashesPage []byte
	if in.Mode == ModeSNP && in.Kernel != nil {
		if !fw.HasKernelHashes() {
			return nil, fmt.Errorf("%w: %s", ErrNoKernelHashes, kernelHashesHint(fw))
		}
		tgpa, err := fw.SEVHashesTableGPA()
		if err != nil {
			return nil, err
		}
		for _, s := range fw.sections {
			if s.Type == SectionSNPKernelHashes && s.Size != PageSize {
				return nil, fmt.Errorf("SNP_KERNEL_HASHES section at %#x is %#x bytes, want exactly one page", s.GPA, s.Size)
			}
		}
		if _, err := m.hashDirectBoot(in); err != nil {
			return nil, err
		}
		var h SEVHashes
		copy(h.Kernel[:], m.KernelSHA256)
		copy(h.Initrd[:], m.InitrdSHA256)
		copy(h.Cmdline[:], m.CmdlineSHA256)
		if hashesPage, err = h.Page(tgpa & (PageSize - 1)); err != nil {
			return nil, err
		}
	}
	var eip uint32
	if in.Mode == ModeSNP {
		if eip, err = fw.SEVESResetEIP(); err != nil {
			return nil, err
		}
	}
	var svsmGPA uint64
	if in.Mode == ModeSNPSVSM {
		end := int64(fw.GPA()) - in.VarsSize
		if end-in.SVSMSize < 0 {
			return nil, fmt.Errorf("SVSM image (%d bytes) and OVMF_VARS (%d bytes) do not fit below the firmware", in.SVSMSize, in.VarsSize)
		}
		svsmGPA = uint64(end - in.SVSMSize)
		off, err := svsm.SVSMInfoOffset()
		if err != nil {
			return nil, err
		}
		eip = uint32(svsmGPA + uint64(off))
	}

	var fileHashes []hash.Hash
	var f256, f384 hash.Hash
	if !in.SkipFileDigests {
		f256, f384 = sha256.New(), sha512.New384()
		fileHashes = []hash.Hash{f256, f384}
	}
	if in.OVMFHash != nil {
		copy(g.ld[:], in.OVMFHash)
		if !in.SkipFileDigests {
			if err := streamSequential(in.Firmware, in.FirmwareSize, fileHashes); err != nil {
				return nil, fmt.Errorf("reading firmware: %w", err)
			}
		}
	} else if err := g.updateNormalPagesFrom(in.Firmware, in.FirmwareSize, fw.GPA(), in.Workers, fileHashes); err != nil {
		return nil, fmt.Errorf("reading firmware: %w", err)
	}
	if !in.SkipFileDigests {
		m.FirmwareSHA256, m.FirmwareSHA384 = f256.Sum(nil), f384.Sum(nil)
	}
	m.OVMFDigest = append([]byte(nil), g.ld[:]...)
	if in.Mode == ModeSNPOVMFHash {
		m.Digest = m.OVMFDigest
		m.Updates = g.updates
		return m, nil
	}

	vmsaGPA := in.VMSAGPA
	if vmsaGPA == 0 {
		vmsaGPA = DefaultVMSAGPA
	}
	if in.Mode == ModeSNPSVSM {
		if err := g.updateNormalPagesFrom(in.SVSM, in.SVSMSize, svsmGPA, in.Workers, nil); err != nil {
			return nil, fmt.Errorf("reading SVSM image: %w", err)
		}
		g.updateMetadata(svsm.sections, VMMQEMU, nil)
		m.BSPVMSA = BuildVMSA(VMSAParams{EIP: eip, SEVFeatures: 0x1, VCPUSig: in.VCPUSig, SVSM: true})
	} else {
		g.updateMetadata(fw.sections, in.VMM, hashesPage)
		if m.BSPVMSA, m.APVMSA, err = vmsaPages(in, eip, in.GuestFeatures); err != nil {
			return nil, err
		}
	}
	bspDigest := sha512.Sum384(m.BSPVMSA)
	var apDigest [48]byte
	if m.APVMSA != nil {
		apDigest = sha512.Sum384(m.APVMSA)
	}
	for i := 0; i < in.VCPUs; i++ {
		if i == 0 || m.APVMSA == nil {
			g.update(PageVMSA, vmsaGPA, &bspDigest)
		} else {
			g.update(PageVMSA, vmsaGPA, &apDigest)
		}
	}
	m.Digest = append([]byte(nil), g.ld[:]...)
	m.Updates = g.updates
	return m, nil
}

// updateMetadata measures the metadata sections as the reference's
// snp_update_metadata_pages does. hashesPage is the kernel hashes page, nil without a
// kernel (the section is then measured as zero pages).
func (g *gctx) updateMetadata(secs []MetadataSection, vmm VMMType, hashesPage []byte) {
	for _, s := range secs {
		switch s.Type {
		case SectionSNPSecMem:
			if vmm == VMMGCE {
				g.updateEach(PageUnmeasured, s.GPA, s.Size)
			} else {
				g.updateEach(PageZero, s.GPA, s.Size)
			}
		case SectionSNPSecrets:
			g.update(PageSecrets, s.GPA, &zeroDigest)
		case SectionCPUID:
			if vmm != VMMEC2 {
				g.update(PageCPUID, s.GPA, &zeroDigest)
			}
		case SectionSNPKernelHashes:
			if hashesPage != nil {
				g.updateNormalPage(s.GPA, hashesPage)
			} else {
				g.updateEach(PageZero, s.GPA, s.Size)
			}
		case SectionSVSMCAA:
			g.updateEach(PageZero, s.GPA, s.Size)
		}
	}
	if vmm == VMMEC2 {
		// EC2 measures the CPUID page last.
		for _, s := range secs {
			if s.Type == SectionCPUID {
				g.update(PageCPUID, s.GPA, &zeroDigest)
			}
		}
	}
}

// UpdateGroup is a run of consecutive page updates of one type over contiguous
// addresses (VMSA updates group when they share an address).
type UpdateGroup struct {
	Type        PageType
	FirstGPA    uint64   // GPA of the first page
	LastGPA     uint64   // GPA of the last page
	Count       int      // number of updates
	DigestAfter [48]byte // launch digest after the last update of the group
}

// GroupUpdates collapses a Measurement's Updates into runs for display.
func GroupUpdates(ups []PageUpdate) []UpdateGroup {
	var out []UpdateGroup
	for _, u := range ups {
		if n := len(out); n > 0 {
			last := &out[n-1]
			contiguous := u.GPA == last.LastGPA+PageSize || (u.Type == PageVMSA && u.GPA == last.LastGPA)
			if last.Type == u.Type && contiguous {
				last.LastGPA, last.Count, last.DigestAfter = u.GPA, last.Count+1, u.DigestAfter
				continue
			}
		}
		out = append(out, UpdateGroup{Type: u.Type, FirstGPA: u.GPA, LastGPA: u.GPA, Count: 1, DigestAfter: u.DigestAfter})
	}
	return out
}
