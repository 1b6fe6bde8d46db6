// Package uki reads the section table of a PE/COFF image and tells whether it is a
// unified kernel image (UKI): systemd-stub, an EFI application, with the kernel in a
// .linux section and, usually, .initrd, .cmdline, .osrel and .uname beside it (UAPI
// Group "Unified Kernel Image" specification; systemd-stub(7)). It imports only the
// standard library.
//
// Why not debug/pe: it would do, but it reads more than a UKI needs and bounds less
// than this package wants for a file that comes from outside. NewFile loads the COFF
// symbol and string tables (up to the file's size) and every section header without
// checking that a section's bytes lie inside the file, so a truncated or forged image
// parses and fails later, at read time. This reader reads only the headers (at most
// about 4 KiB plus the DOS stub offset), checks every section against the file size
// up front, and never allocates from a length field.
package uki

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Limits applied to outside input.
const (
	// MaxSections is the most section headers Parse accepts. The PE format allows
	// 65535, Windows' loader 96; a systemd UKI has about a dozen.
	MaxSections = 96
	// MaxTextSection is the most bytes SectionText returns (the .cmdline, .osrel,
	// .uname and .sdmagic sections are short text; Linux's x86 command line is at
	// most 2048 bytes).
	MaxTextSection = 64 << 10
)

// PE machine types this package names (PE format, "Machine Types").
const (
	MachineAMD64 = 0x8664
	MachineI386  = 0x14c
	MachineARM64 = 0xaa64
)

// Optional header magics (PE format, "Optional Header Standard Fields").
const (
	magicPE32     = 0x10b
	magicPE32Plus = 0x20b
)

// Sizes of the fixed PE structures, in bytes.
const (
	dosHeaderSize     = 64 // IMAGE_DOS_HEADER; e_lfanew is its last field, at 0x3c
	coffHeaderSize    = 20 // IMAGE_FILE_HEADER, after the "PE\0\0" signature
	sectionHeaderSize = 40 // IMAGE_SECTION_HEADER
	// optFieldsSize covers the optional header fields read here (up to and including
	// SizeOfHeaders at offset 60).
	optFieldsSize = 64
)

// ErrNotPE is returned (wrapped) for a file that is not a PE/COFF image at all: no
// "MZ" DOS header or no "PE\0\0" signature where e_lfanew points. A raw or ELF kernel
// gives this error; test with errors.Is.
var ErrNotPE = errors.New("not a PE/COFF image")

// ErrBadPE is returned (wrapped) for a file that starts like a PE image but whose
// headers or section table are malformed or run past the end of the file.
var ErrBadPE = errors.New("malformed PE image")

// Section is one entry of the section table.
type Section struct {
	// Name is the 8-byte section name with trailing NULs removed. A name longer than
	// 8 bytes appears as "/N" (an offset into the COFF string table, which images
	// normally lack); it is not resolved. It may hold any bytes: print it with
	// DisplayName.
	Name string
	// VirtualAddress is the section's address relative to the image base (RVA).
	VirtualAddress uint32
	// VirtualSize is the section's size in memory, in bytes. For UKI payload
	// sections it is the length of the payload (objcopy and ukify set it so); the
	// raw data is that, padded to the file alignment.
	VirtualSize uint32
	// RawOffset and RawSize locate the section's bytes in the file (PointerToRawData,
	// SizeOfRawData). Parse checks that they lie inside the file.
	RawOffset, RawSize uint32
	// Characteristics are the section flags (IMAGE_SCN_*).
	Characteristics uint32
}

// ContentSize is the number of the section's file bytes that are its content: the raw
// data trimmed to VirtualSize (when VirtualSize is set and smaller), in bytes. It is
// what SectionReader reads and SHA256 hashes. Loaders zero-fill a VirtualSize beyond
// the raw data; those zeros are not counted.
func (s Section) ContentSize() uint32 {
	if s.VirtualSize != 0 && s.VirtualSize < s.RawSize {
		return s.VirtualSize
	}
	return s.RawSize
}

// DisplayName is Name safe to print: quoted when it holds anything but printable
// ASCII.
func (s Section) DisplayName() string {
	for i := 0; i < len(s.Name); i++ {
		if c := s.Name[i]; c <= ' ' || c > '~' {
			return strconv.QuoteToASCII(s.Name)
		}
	}
	if s.Name == "" {
		return `""`
	}
	return s.Name
}

// Image is the parsed header of a PE/COFF image.
type Image struct {
	// Size is the file size in bytes the image was parsed against.
	Size int64
	// Machine is the COFF machine type (MachineAMD64 for x86-64 UKIs).
	Machine uint16
	// PE32Plus is true for a PE32+ (64-bit) optional header, false for PE32.
	PE32Plus bool
	// Subsystem is the optional header's subsystem (10 = EFI application).
	Subsystem uint16
	// ImageBase is the preferred load address; SizeOfImage is the size in bytes of
	// the image in memory; SectionAlignment and FileAlignment are in bytes.
	ImageBase                       uint64
	SizeOfImage, SizeOfHeaders      uint32
	SectionAlignment, FileAlignment uint32
	// TimeDateStamp is the COFF header's timestamp (seconds since 1970; 0 in
	// reproducible builds).
	TimeDateStamp uint32
	// Sections is the section table in file order.
	Sections []Section
}

// SubsystemEFIApplication is the optional header subsystem of an EFI application such
// as systemd-stub and the Linux EFI stub.
const SubsystemEFIApplication = 10

// UKISections are the sections the UKI specification defines, in the order ukify
// writes them; a UKI is recognized by its .linux section.
var UKISections = []string{".osrel", ".cmdline", ".dtb", ".uname", ".splash", ".pcrsig", ".pcrpkey", ".initrd", ".ucode", ".sbat", ".linux"}

// Parse reads the DOS header, the PE signature, the COFF and optional headers and the
// section table of the size-byte image read through r. It reads at most about 4 KiB
// besides the DOS header, whatever the image's fields claim, and checks that every
// section's raw data lies within size.
//
// A file that is not a PE image gives an error wrapping ErrNotPE; a PE image with
// malformed headers one wrapping ErrBadPE. Errors are single lines.
func Parse(r io.ReaderAt, size int64) (*Image, error) {
	if size < dosHeaderSize {
		return nil, fmt.Errorf("%w: %d bytes, shorter than a DOS header", ErrNotPE, size)
	}
	var dos [dosHeaderSize]byte
	if err := readAt(r, dos[:], 0); err != nil {
		return nil, fmt.Errorf("reading DOS header: %w", err)
	}
	if dos[0] != 'M' || dos[1] != 'Z' {
		return nil, fmt.Errorf("%w: no MZ signature", ErrNotPE)
	}
	peOff := int64(binary.LittleEndian.Uint32(dos[0x3c:]))
	if peOff+4+coffHeaderSize > size {
		return nil, fmt.Errorf("%w: PE header offset %#x is past the end of the %d-byte file", ErrNotPE, peOff, size)
	}
	var hdr [4 + coffHeaderSize]byte
	if err := readAt(r, hdr[:], peOff); err != nil {
		return nil, fmt.Errorf("reading PE header: %w", err)
	}
	if string(hdr[0:4]) != "PE\x00\x00" {
		return nil, fmt.Errorf("%w: no PE signature at offset %#x", ErrNotPE, peOff)
	}
	coff := hdr[4:]
	im := &Image{
		Size:          size,
		Machine:       binary.LittleEndian.Uint16(coff[0:]),
		TimeDateStamp: binary.LittleEndian.Uint32(coff[4:]),
	}
	nsec := int(binary.LittleEndian.Uint16(coff[2:]))
	optSize := int64(binary.LittleEndian.Uint16(coff[16:]))
	if nsec > MaxSections {
		return nil, fmt.Errorf("%w: %d sections (at most %d supported)", ErrBadPE, nsec, MaxSections)
	}
	optOff := peOff + 4 + coffHeaderSize
	if optSize < optFieldsSize {
		return nil, fmt.Errorf("%w: optional header is %d bytes, want at least %d", ErrBadPE, optSize, optFieldsSize)
	}
	secOff := optOff + optSize
	if secOff+int64(nsec)*sectionHeaderSize > size {
		return nil, fmt.Errorf("%w: section table (%d entries at %#x) runs past the end of the %d-byte file", ErrBadPE, nsec, secOff, size)
	}
	var opt [optFieldsSize]byte
	if err := readAt(r, opt[:], optOff); err != nil {
		return nil, fmt.Errorf("reading optional header: %w", err)
	}
	switch magic := binary.LittleEndian.Uint16(opt[0:]); magic {
	case magicPE32Plus:
		im.PE32Plus = true
		im.ImageBase = binary.LittleEndian.Uint64(opt[24:])
	case magicPE32:
		im.ImageBase = uint64(binary.LittleEndian.Uint32(opt[28:]))
	default:
		return nil, fmt.Errorf("%w: optional header magic %#x (want %#x or %#x)", ErrBadPE, magic, magicPE32, magicPE32Plus)
	}
	im.SectionAlignment = binary.LittleEndian.Uint32(opt[32:])
	im.FileAlignment = binary.LittleEndian.Uint32(opt[36:])
	im.SizeOfImage = binary.LittleEndian.Uint32(opt[56:])
	im.SizeOfHeaders = binary.LittleEndian.Uint32(opt[60:])
	// Subsystem sits at offset 68 in both layouts, past the fields read above; read
	// it only when the optional header is long enough to hold it.
	if optSize >= 70 {
		var sub [2]byte
		if err := readAt(r, sub[:], optOff+68); err != nil {
			return nil, fmt.Errorf("reading optional header: %w", err)
		}
		im.Subsystem = binary.LittleEndian.Uint16(sub[:])
	}
	tbl := make([]byte, nsec*sectionHeaderSize) // at most 96*40 bytes
	if err := readAt(r, tbl, secOff); err != nil {
		return nil, fmt.Errorf("reading section table: %w", err)
	}
	im.Sections = make([]Section, 0, nsec)
	for i := 0; i < nsec; i++ {
		h := tbl[i*sectionHeaderSize:]
		s := Section{
			Name:            strings.TrimRight(string(h[0:8]), "\x00"),
			VirtualSize:     binary.LittleEndian.Uint32(h[8:]),
			VirtualAddress:  binary.LittleEndian.Uint32(h[12:]),
			RawSize:         binary.LittleEndian.Uint32(h[16:]),
			RawOffset:       binary.LittleEndian.Uint32(h[20:]),
			Characteristics: binary.LittleEndian.Uint32(h[36:]),
		}
		if s.RawSize != 0 && int64(s.RawOffset)+int64(s.RawSize) > size {
			return nil, fmt.Errorf("%w: section %d (%s): %d bytes at offset %#x run past the end of the %d-byte file",
				ErrBadPE, i, s.DisplayName(), s.RawSize, s.RawOffset, size)
		}
		im.Sections = append(im.Sections, s)
	}
	return im, nil
}

// readAt reads exactly len(p) bytes at off; a short read is an error.
func readAt(r io.ReaderAt, p []byte, off int64) error {
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		return fmt.Errorf("short read: %d of %d bytes at offset %#x", n, len(p), off)
	}
	return err
}

// Section returns the first section named name.
func (im *Image) Section(name string) (Section, bool) {
	for _, s := range im.Sections {
		if s.Name == name {
			return s, true
		}
	}
	return Section{}, false
}

// IsUKI reports whether the image is a unified kernel image: an EFI application with
// a .linux section (what systemd-stub boots). A Linux kernel with its own EFI stub
// (bzImage: .setup, .text, ...) is a PE image but not a UKI.
func (im *Image) IsUKI() bool {
	_, ok := im.Section(".linux")
	return ok
}

// SectionNames lists the section names in file order, each as DisplayName.
func (im *Image) SectionNames() []string {
	out := make([]string, len(im.Sections))
	for i, s := range im.Sections {
		out[i] = s.DisplayName()
	}
	return out
}

// SectionReader returns a reader over the section's content (ContentSize bytes of
// its raw data) in r.
func SectionReader(r io.ReaderAt, s Section) *io.SectionReader {
	return io.NewSectionReader(r, int64(s.RawOffset), int64(s.ContentSize()))
}

// SHA256 hashes the section's content (ContentSize bytes) read through r, streaming.
func SHA256(r io.ReaderAt, s Section) ([32]byte, error) {
	var sum [32]byte
	h := sha256.New()
	n, err := io.Copy(h, SectionReader(r, s))
	if err != nil {
		return sum, fmt.Errorf("hashing section %s: %w", s.DisplayName(), err)
	}
	if n != int64(s.ContentSize()) {
		return sum, fmt.Errorf("hashing section %s: read %d of %d bytes", s.DisplayName(), n, s.ContentSize())
	}
	copy(sum[:], h.Sum(nil))
	return sum, nil
}

// SectionText returns the content of a short text section (.cmdline, .osrel, .uname,
// .sdmagic) with trailing NULs removed. A section over MaxTextSection bytes is an
// error, so a forged size cannot drive allocation.
func SectionText(r io.ReaderAt, s Section) (string, error) {
	n := s.ContentSize()
	if n > MaxTextSection {
		return "", fmt.Errorf("reading section %s: %d bytes, more than the %d a text section may have", s.DisplayName(), n, MaxTextSection)
	}
	b := make([]byte, n)
	if err := readAt(r, b, int64(s.RawOffset)); err != nil {
		return "", fmt.Errorf("reading section %s: %w", s.DisplayName(), err)
	}
	return strings.TrimRight(string(b), "\x00"), nil
}

// SectionSummary is one section as Describe reports it.
type SectionSummary struct {
	// Name is the section name as DisplayName prints it.
	Name string `json:"name"`
	// Size is the content size in bytes (Section.ContentSize).
	Size uint32 `json:"size"`
	// SHA256 is the hex SHA-256 of the content.
	SHA256 string `json:"sha256"`
}

// Summary describes a kernel file: whether it is a UKI, its sections and the
// descriptive text a UKI carries. It is what snpctl prints and what a launch record
// can keep.
type Summary struct {
	// UKI is true for a unified kernel image (Image.IsUKI).
	UKI bool `json:"uki"`
	// Sections lists every section in file order.
	Sections []SectionSummary `json:"sections"`
	// Cmdline is the .cmdline section (the command line systemd-stub passes to the
	// kernel); empty when there is none.
	Cmdline string `json:"cmdline,omitempty"`
	// Uname is the .uname section (the kernel release, as uname -r prints it).
	Uname string `json:"uname,omitempty"`
	// OSRelease is PRETTY_NAME (else NAME) from the .osrel section (os-release(5)).
	OSRelease string `json:"os_release,omitempty"`
	// Stub is the stub's LoaderInfo from .sdmagic, e.g. "systemd-stub 252.39-1~deb12u2".
	Stub string `json:"stub,omitempty"`
}

// Describe parses the size-byte image read through r (Parse) and hashes every
// section. A file that is not a PE image gives an error wrapping ErrNotPE. It reads
// each section's bytes once; text sections larger than MaxTextSection are hashed but
// not shown.
func Describe(r io.ReaderAt, size int64) (*Summary, error) {
	im, err := Parse(r, size)
	if err != nil {
		return nil, err
	}
	sum := &Summary{UKI: im.IsUKI(), Sections: make([]SectionSummary, 0, len(im.Sections))}
	for _, s := range im.Sections {
		h, err := SHA256(r, s)
		if err != nil {
			return nil, err
		}
		sum.Sections = append(sum.Sections, SectionSummary{Name: s.DisplayName(), Size: s.ContentSize(), SHA256: fmt.Sprintf("%x", h)})
	}
	text := func(name string) string {
		s, ok := im.Section(name)
		if !ok {
			return ""
		}
		t, err := SectionText(r, s)
		if err != nil {
			return ""
		}
		return t
	}
	sum.Cmdline = strings.TrimRight(text(".cmdline"), "\n")
	sum.Uname = strings.TrimSpace(text(".uname"))
	sum.OSRelease = osReleaseName(text(".osrel"))
	if m := text(".sdmagic"); m != "" {
		m = strings.TrimSpace(strings.Trim(strings.TrimSpace(m), "#"))
		sum.Stub = strings.TrimSpace(strings.TrimPrefix(m, "LoaderInfo:"))
	}
	return sum, nil
}

// osReleaseName returns PRETTY_NAME, else NAME, from os-release(5) text.
func osReleaseName(s string) string {
	vals := map[string]string{}
	for _, line := range strings.Split(s, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if !ok {
			continue
		}
		if u, err := strconv.Unquote(v); err == nil {
			v = u
		} else {
			v = strings.Trim(v, `'"`)
		}
		vals[k] = v
	}
	if v := vals["PRETTY_NAME"]; v != "" {
		return v
	}
	return vals["NAME"]
}
