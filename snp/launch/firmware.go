package launch

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"
)

// PageSize is the size of a guest page measured by the AMD Secure Processor, in bytes.
const PageSize = 4096

// FourGiB is the guest physical address at which the firmware image ends: an image of
// size n bytes is mapped at FourGiB-n (QEMU's -bios placement).
const FourGiB = 0x1_0000_0000

// Limits applied while parsing outside input. They bound every allocation the parser
// makes, whatever a length field in the image says.
const (
	// maxFooterTable is the largest footer GUID table: its size field is a uint16.
	maxFooterTable = 0xffff
	// MaxMetadataSections is the most SEV metadata sections ParseFirmware accepts. edk2
	// builds have at most 7; the limit stops a forged count from driving allocation.
	MaxMetadataSections = 256
	// MaxMetadataBytes bounds the total size of the metadata sections (edk2 and
	// COCONUT-SVSM use well under 1 MiB), so a forged table cannot make a
	// measurement run for minutes.
	MaxMetadataBytes = 256 << 20
)

// GUIDs of the OVMF footer table entries (edk2 OvmfPkg/ResetVector), as the
// little-endian byte strings that appear in the image.
var (
	guidFooterTable   = mustGUID("96b582de-1fb2-45f7-baea-a366c55a082d")
	guidSEVHashTable  = mustGUID("7255371f-3a3b-4b04-927b-1da6efa8d454")
	guidSEVESReset    = mustGUID("00f771de-1a7e-4fcb-890e-68c77e2fb44e")
	guidSEVMetadata   = mustGUID("dc886566-984a-4798-a75e-5585a7bf67cc")
	guidSVSMInfo      = mustGUID("a789a612-0597-4c4b-a49f-cbb1fe9d1ddd")
	guidSEVHashHeader = mustGUID("9438d606-4f22-4cc9-b479-a793d411fd21")
	guidSEVKernel     = mustGUID("4de79437-abd2-427f-b835-d5b172d2045b")
	guidSEVInitrd     = mustGUID("44baf731-3a2f-4bd7-9af1-41e29169781d")
	guidSEVCmdline    = mustGUID("97d02dd8-bd20-4c94-aa78-e7714d36ab2a")
)

// GUID is a UEFI GUID in its on-disk (mixed-endian) byte order.
type GUID [16]byte

// String formats g in the canonical 8-4-4-4-12 form.
func (g GUID) String() string {
	return fmt.Sprintf("%08x-%04x-%04x-%x-%x",
		binary.LittleEndian.Uint32(g[0:4]), binary.LittleEndian.Uint16(g[4:6]),
		binary.LittleEndian.Uint16(g[6:8]), g[8:10], g[10:16])
}

// mustGUID converts a canonical GUID string to its on-disk byte order. It is only
// called on constants; a malformed constant is a programming error.
func mustGUID(s string) GUID {
	var raw [16]byte
	j := 0
	for i := 0; i < len(s); i++ {
		if s[i] == '-' {
			continue
		}
		var v byte
		for k := 0; k < 2; k++ {
			c := s[i+k]
			switch {
			case c >= '0' && c <= '9':
				v = v<<4 | (c - '0')
			case c >= 'a' && c <= 'f':
				v = v<<4 | (c - 'a' + 10)
			default:
				panic("snp: bad GUID constant " + s)
			}
		}
		raw[j] = v
		j++
		i++
	}
	var g GUID
	// First three groups are little-endian on disk.
	g[0], g[1], g[2], g[3] = raw[3], raw[2], raw[1], raw[0]
	g[4], g[5] = raw[5], raw[4]
	g[6], g[7] = raw[7], raw[6]
	copy(g[8:], raw[8:])
	return g
}

// SectionType is the type of an SEV metadata section (edk2
// OvmfPkg/ResetVector/X64/OvmfSevMetadata.asm).
type SectionType uint32

// Metadata section types.
const (
	SectionSNPSecMem       SectionType = 1    // pre-validated memory, measured as zero pages
	SectionSNPSecrets      SectionType = 2    // the SNP secrets page
	SectionCPUID           SectionType = 3    // the SNP CPUID page
	SectionSVSMCAA         SectionType = 4    // SVSM calling area, measured as zero pages
	SectionSNPKernelHashes SectionType = 0x10 // the kernel/initrd/cmdline hashes page
)

// String names the section type as the reference tool does.
func (t SectionType) String() string {
	switch t {
	case SectionSNPSecMem:
		return "SNP_SEC_MEM"
	case SectionSNPSecrets:
		return "SNP_SECRETS"
	case SectionCPUID:
		return "CPUID"
	case SectionSVSMCAA:
		return "SVSM_CAA"
	case SectionSNPKernelHashes:
		return "SNP_KERNEL_HASHES"
	}
	return fmt.Sprintf("unknown(%#x)", uint32(t))
}

// MetadataSection is one descriptor of the SEV metadata ("ASEV") table.
type MetadataSection struct {
	GPA  uint64      // guest physical address, page aligned
	Size uint64      // length in bytes, a non-zero multiple of PageSize
	Type SectionType // what the AMD-SP is asked to do with these pages
}

// Firmware is a parsed OVMF (or SVSM) image. It holds only the tables; the image
// bytes stay in the io.ReaderAt it was parsed from.
type Firmware struct {
	size        int64
	footerStart int64 // file offset of the footer table's first byte
	table       map[GUID][]byte
	sections    []MetadataSection
}

// Parse errors. They are wrapped with detail; test with errors.Is.
var (
	ErrFirmwareSize  = errors.New("firmware size must be a non-zero multiple of 4096 bytes")
	ErrNoFooterTable = errors.New("no OVMF footer table (GUID 96b582de-1fb2-45f7-baea-a366c55a082d) at the end of the image")
	ErrBadTable      = errors.New("malformed OVMF footer table")
	ErrBadMetadata   = errors.New("malformed SEV metadata")
)

// ParseFirmware parses an OVMF image of size bytes (a non-zero multiple of 4096) read
// through r: the footer GUID table in its last bytes and, when present, the SEV
// metadata table it points to. It reads at most about 64 KiB plus the metadata
// descriptors, whatever the image's length fields claim.
//
// An image without a footer table is an error (SNP and SEV-ES launches need one);
// images without SEV metadata parse fine and report no sections.
func ParseFirmware(r io.ReaderAt, size int64) (*Firmware, error) {
	if size <= 0 || size%PageSize != 0 {
		return nil, fmt.Errorf("%w (got %d)", ErrFirmwareSize, size)
	}
	if size > FourGiB {
		return nil, fmt.Errorf("%w (got %d, larger than 4 GiB)", ErrFirmwareSize, size)
	}
	fw := &Firmware{size: size, table: map[GUID][]byte{}}
	if err := fw.parseFooter(r); err != nil {
		return nil, fmt.Errorf("parsing footer table: %w", err)
	}
	if err := fw.parseMetadata(r); err != nil {
		return nil, fmt.Errorf("parsing SEV metadata: %w", err)
	}
	return fw, nil
}

// footerEntryHeader is the size of a footer entry's trailer: uint16 size + GUID.
const footerEntryHeader = 2 + 16

func (fw *Firmware) parseFooter(r io.ReaderAt) error {
	// The table ends 32 bytes before the end of the image; its last entry is the
	// footer entry itself, whose size covers the whole table.
	tailLen := int64(32 + maxFooterTable)
	if tailLen > fw.size {
		tailLen = fw.size
	}
	tail := make([]byte, tailLen)
	if _, err := r.ReadAt(tail, fw.size-tailLen); err != nil {
		return fmt.Errorf("reading image tail: %w", err)
	}
	end := len(tail) - 32 // end of the table within tail
	if end < footerEntryHeader {
		return ErrNoFooterTable
	}
	hdr := tail[end-footerEntryHeader : end]
	if GUID(hdr[2:18]) != guidFooterTable {
		return ErrNoFooterTable
	}
	full := int(binary.LittleEndian.Uint16(hdr[0:2]))
	if full < footerEntryHeader {
		return fmt.Errorf("%w: footer size %d is smaller than its own header", ErrBadTable, full)
	}
	tableLen := full - footerEntryHeader
	start := end - footerEntryHeader - tableLen
	if start < 0 {
		return fmt.Errorf("%w: footer size %d extends before the start of the image", ErrBadTable, full)
	}
	tb := tail[start : end-footerEntryHeader]
	fw.footerStart = fw.size - int64(len(tail)) + int64(start)
	for len(tb) > 0 {
		if len(tb) < footerEntryHeader {
			return fmt.Errorf("%w: %d stray bytes at the start of the table", ErrBadTable, len(tb))
		}
		n := len(tb)
		esize := int(binary.LittleEndian.Uint16(tb[n-18 : n-16]))
		g := GUID(tb[n-16:])
		if esize < footerEntryHeader {
			return fmt.Errorf("%w: entry %s has size %d, smaller than its header", ErrBadTable, g, esize)
		}
		if esize > n {
			return fmt.Errorf("%w: entry %s (size %d) is truncated: only %d bytes of table left", ErrBadTable, g, esize, n)
		}
		if _, dup := fw.table[g]; dup {
			return fmt.Errorf("%w: entry %s appears twice", ErrBadTable, g)
		}
		data := make([]byte, esize-footerEntryHeader)
		copy(data, tb[n-esize:n-footerEntryHeader])
		fw.table[g] = data
		tb = tb[:n-esize]
	}
	return nil
}

func (fw *Firmware) parseMetadata(r io.ReaderAt) error {
	entry, ok := fw.table[guidSEVMetadata]
	if !ok {
		return nil
	}
	if len(entry) < 4 {
		return fmt.Errorf("%w: metadata table entry has %d bytes, want at least 4", ErrBadMetadata, len(entry))
	}
	off := int64(binary.LittleEndian.Uint32(entry))
	if off < 16 || off > fw.size {
		return fmt.Errorf("%w: metadata offset %#x from the end is outside the %d-byte image", ErrBadMetadata, off, fw.size)
	}
	start := fw.size - off
	var hdr [16]byte
	if _, err := r.ReadAt(hdr[:], start); err != nil {
		return fmt.Errorf("reading metadata header: %w", err)
	}
	if string(hdr[0:4]) != "ASEV" {
		return fmt.Errorf("%w: wrong signature %q (want \"ASEV\")", ErrBadMetadata, hdr[0:4])
	}
	length := int64(binary.LittleEndian.Uint32(hdr[4:8]))
	version := binary.LittleEndian.Uint32(hdr[8:12])
	count := int64(binary.LittleEndian.Uint32(hdr[12:16]))
	if version != 1 {
		return fmt.Errorf("%w: version %d (want 1)", ErrBadMetadata, version)
	}
	if count > MaxMetadataSections {
		return fmt.Errorf("%w: %d sections (at most %d supported)", ErrBadMetadata, count, MaxMetadataSections)
	}
	if length < 16+12*count {
		return fmt.Errorf("%w: length %d is too small for %d sections", ErrBadMetadata, length, count)
	}
	if start+length > fw.size {
		return fmt.Errorf("%w: table (%d bytes at %#x) runs past the end of the image", ErrBadMetadata, length, start)
	}
	if start+length > fw.footerStart {
		return fmt.Errorf("%w: table (%d bytes at %#x) overlaps the footer table at %#x", ErrBadMetadata, length, start, fw.footerStart)
	}
	descs := make([]byte, 12*count)
	if _, err := r.ReadAt(descs, start+16); err != nil {
		return fmt.Errorf("reading metadata sections: %w", err)
	}
	var total uint64
	for i := int64(0); i < count; i++ {
		d := descs[12*i:]
		s := MetadataSection{
			GPA:  uint64(binary.LittleEndian.Uint32(d[0:4])),
			Size: uint64(binary.LittleEndian.Uint32(d[4:8])),
			Type: SectionType(binary.LittleEndian.Uint32(d[8:12])),
		}
		if err := s.validate(); err != nil {
			return fmt.Errorf("%w: section %d: %w", ErrBadMetadata, i, err)
		}
		total += s.Size
		if total > MaxMetadataBytes {
			return fmt.Errorf("%w: sections cover more than %d MiB", ErrBadMetadata, MaxMetadataBytes>>20)
		}
		fw.sections = append(fw.sections, s)
	}
	return checkOverlaps(fw.sections, FourGiB-uint64(fw.size), uint64(fw.size))
}

func (s MetadataSection) validate() error {
	switch s.Type {
	case SectionSNPSecMem, SectionSVSMCAA, SectionSNPKernelHashes:
	case SectionSNPSecrets, SectionCPUID:
		if s.Size != PageSize {
			return fmt.Errorf("%s section at %#x is %#x bytes, want exactly one page", s.Type, s.GPA, s.Size)
		}
	default:
		return fmt.Errorf("unknown OVMF metadata section type %#x at %#x", uint32(s.Type), s.GPA)
	}
	if s.GPA%PageSize != 0 || s.Size == 0 || s.Size%PageSize != 0 {
		return fmt.Errorf("%s section at %#x size %#x is not whole pages", s.Type, s.GPA, s.Size)
	}
	return nil
}

// checkOverlaps rejects sections that overlap each other or the firmware image (the
// AMD-SP refuses to measure a page twice).
func checkOverlaps(secs []MetadataSection, fwGPA, fwSize uint64) error {
	type span struct {
		lo, hi uint64
		what   string
	}
	spans := []span{{fwGPA, fwGPA + fwSize, "the firmware image"}}
	for _, s := range secs {
		spans = append(spans, span{s.GPA, s.GPA + s.Size, fmt.Sprintf("%s section at %#x", s.Type, s.GPA)})
	}
	sort.Slice(spans, func(i, j int) bool { return spans[i].lo < spans[j].lo })
	for i := 1; i < len(spans); i++ {
		if spans[i].lo < spans[i-1].hi {
			return fmt.Errorf("%w: %s overlaps %s", ErrBadMetadata, spans[i].what, spans[i-1].what)
		}
	}
	return nil
}

// Size returns the image size in bytes.
func (fw *Firmware) Size() int64 { return fw.size }

// GPA returns the guest physical address of the image's first byte when it ends at
// 4 GiB.
func (fw *Firmware) GPA() uint64 { return FourGiB - uint64(fw.size) }

// Sections returns a copy of the SEV metadata sections in table order; nil when the
// image has no SEV metadata.
func (fw *Firmware) Sections() []MetadataSection {
	if fw.sections == nil {
		return nil
	}
	return append([]MetadataSection(nil), fw.sections...)
}

// HasSection reports whether the metadata declares a section of type t.
func (fw *Firmware) HasSection(t SectionType) bool {
	for _, s := range fw.sections {
		if s.Type == t {
			return true
		}
	}
	return false
}

// HasMetadata reports whether the image has an SEV metadata table (needed for SNP).
func (fw *Firmware) HasMetadata() bool {
	_, ok := fw.table[guidSEVMetadata]
	return ok
}

// HasKernelHashes reports whether the image has an SNP_KERNEL_HASHES section, i.e.
// whether it is an OvmfPkg/AmdSev build that verifies -kernel/-initrd/-append under
// SNP. Debian's OVMF.fd is not.
func (fw *Firmware) HasKernelHashes() bool { return fw.HasSection(SectionSNPKernelHashes) }

// tableUint32 returns the first 4 bytes of the footer entry g as a little-endian
// integer.
func (fw *Firmware) tableUint32(g GUID) (uint32, bool) {
	e, ok := fw.table[g]
	if !ok || len(e) < 4 {
		return 0, false
	}
	return binary.LittleEndian.Uint32(e), true
}

// SEVESResetEIP returns the AP reset address from the SEV-ES reset block entry.
func (fw *Firmware) SEVESResetEIP() (uint32, error) {
	v, ok := fw.tableUint32(guidSEVESReset)
	if !ok {
		return 0, errors.New("can't find SEV_ES_RESET_BLOCK_GUID entry in OVMF table")
	}
	return v, nil
}

// SEVHashesTableGPA returns the guest physical address of the SEV hashes table (where
// QEMU writes the kernel/initrd/cmdline hashes), or an error when the firmware has
// none.
func (fw *Firmware) SEVHashesTableGPA() (uint32, error) {
	v, ok := fw.tableUint32(guidSEVHashTable)
	if !ok {
		return 0, errors.New("can't find SEV_HASH_TABLE_RV_GUID entry in OVMF table")
	}
	return v, nil
}

// SEVHashesTableSupported reports whether the firmware reserves a (non-zero) SEV
// hashes table address, needed for SEV and SEV-ES kernel measurement.
func (fw *Firmware) SEVHashesTableSupported() bool {
	v, ok := fw.tableUint32(guidSEVHashTable)
	return ok && v != 0
}

// SVSMInfoOffset returns the SVSM entry point as an offset from the start of an SVSM
// image (the SVSM_INFO footer entry).
func (fw *Firmware) SVSMInfoOffset() (uint32, error) {
	v, ok := fw.tableUint32(guidSVSMInfo)
	if !ok {
		return 0, errors.New("can't find SVSM_INFO_GUID entry in SVSM table")
	}
	return v, nil
}

// TableGUIDs lists the GUIDs present in the footer table, in string form, sorted.
func (fw *Firmware) TableGUIDs() []string {
	out := make([]string, 0, len(fw.table))
	for g := range fw.table {
		out = append(out, g.String())
	}
	sort.Strings(out)
	return out
}
