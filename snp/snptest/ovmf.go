// Package snptest provides fixtures and fakes for tests of package snp and its users:
// synthetic OVMF images with a chosen footer table and SEV metadata, a fake AMD-SP
// (signer.go: go-sev-guest's test-only certificate chain signing attestation reports, and
// a fake guest report device for the agent protocol) for what this host cannot have, and
// guest images for boot tests (guest.go, uki.go, console.go): Debian's cloud kernel, an
// initramfs writer, the snp-agent initramfs, unified kernel images built from Debian's
// systemd-stub, and the console lines that prove what ran.
package snptest

import (
	"encoding/binary"
)

// Section is one SEV metadata descriptor (see launch.MetadataSection).
type Section struct {
	GPA, Size, Type uint32
}

// OVMFOptions describes a synthetic OVMF image.
type OVMFOptions struct {
	// Size is the image size in bytes; 0 means 4096. Builders of error cases may use
	// sizes that are not multiples of 4096.
	Size int
	// ResetEIP is the SEV-ES AP reset address; 0 omits the reset block entry.
	ResetEIP uint32
	// HashTableGPA, HashTableSize describe the SEV hashes table entry; a zero GPA
	// omits the entry.
	HashTableGPA, HashTableSize uint32
	// Sections is the SEV metadata; nil omits the metadata entry.
	Sections []Section
	// SVSMInfoOffset, when non-nil, adds an SVSM_INFO entry with this offset.
	SVSMInfoOffset *uint32
	// NoFooter leaves the footer GUID out (an image that is not OVMF).
	NoFooter bool
	// Pattern, when non-zero, fills every byte before the tables with a pattern
	// derived from it, so that pages are not all zero.
	Pattern byte
}

// MetadataOffset is where OVMF places the "ASEV" table in synthetic images, counted
// back from the end of the image.
const MetadataOffset = 0x800

func guid(s string) []byte {
	var raw []byte
	for i := 0; i < len(s); i++ {
		if s[i] == '-' {
			continue
		}
		var v byte
		for _, c := range s[i : i+2] {
			switch {
			case c >= '0' && c <= '9':
				v = v<<4 | byte(c-'0')
			default:
				v = v<<4 | byte(c-'a'+10)
			}
		}
		raw = append(raw, v)
		i++
	}
	return []byte{raw[3], raw[2], raw[1], raw[0], raw[5], raw[4], raw[7], raw[6],
		raw[8], raw[9], raw[10], raw[11], raw[12], raw[13], raw[14], raw[15]}
}

// GUIDs of the footer table entries.
var (
	FooterGUID    = guid("96b582de-1fb2-45f7-baea-a366c55a082d")
	HashTableGUID = guid("7255371f-3a3b-4b04-927b-1da6efa8d454")
	ResetGUID     = guid("00f771de-1a7e-4fcb-890e-68c77e2fb44e")
	MetadataGUID  = guid("dc886566-984a-4798-a75e-5585a7bf67cc")
	SVSMInfoGUID  = guid("a789a612-0597-4c4b-a49f-cbb1fe9d1ddd")
)

// Entry is a raw footer table entry, for tests that forge tables.
type Entry struct {
	GUID []byte
	Data []byte
}

// FooterTable encodes entries (in file order) followed by the footer entry, as
// found in the 32+N bytes before the end of an OVMF image.
func FooterTable(entries []Entry) []byte {
	var tb []byte
	for _, e := range entries {
		tb = append(tb, e.Data...)
		tb = binary.LittleEndian.AppendUint16(tb, uint16(len(e.Data)+18))
		tb = append(tb, e.GUID...)
	}
	tb = binary.LittleEndian.AppendUint16(tb, uint16(len(tb)+18))
	return append(tb, FooterGUID...)
}

// OVMF builds a synthetic OVMF image.
func OVMF(o OVMFOptions) []byte {
	size := o.Size
	if size == 0 {
		size = 4096
	}
	img := make([]byte, size)
	if o.Pattern != 0 {
		for i := range img {
			img[i] = byte(i*int(o.Pattern)>>3) ^ o.Pattern
		}
	}
	var entries []Entry
	u32 := func(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }
	if o.SVSMInfoOffset != nil {
		entries = append(entries, Entry{SVSMInfoGUID, u32(*o.SVSMInfoOffset)})
	}
	if o.HashTableGPA != 0 {
		entries = append(entries, Entry{HashTableGUID, append(u32(o.HashTableGPA), u32(o.HashTableSize)...)})
	}
	if o.Sections != nil {
		entries = append(entries, Entry{MetadataGUID, u32(MetadataOffset)})
		meta := []byte("ASEV")
		meta = binary.LittleEndian.AppendUint32(meta, uint32(16+12*len(o.Sections)))
		meta = binary.LittleEndian.AppendUint32(meta, 1)
		meta = binary.LittleEndian.AppendUint32(meta, uint32(len(o.Sections)))
		for _, s := range o.Sections {
			meta = binary.LittleEndian.AppendUint32(meta, s.GPA)
			meta = binary.LittleEndian.AppendUint32(meta, s.Size)
			meta = binary.LittleEndian.AppendUint32(meta, s.Type)
		}
		if size >= MetadataOffset {
			copy(img[size-MetadataOffset:], meta)
		}
	}
	if o.ResetEIP != 0 {
		entries = append(entries, Entry{ResetGUID, u32(o.ResetEIP)})
	}
	tb := FooterTable(entries)
	if o.NoFooter {
		copy(tb[len(tb)-16:], make([]byte, 16))
	}
	if size >= len(tb)+32 {
		copy(img[size-32-len(tb):], tb)
		clear(img[size-32:])
	}
	return img
}

// AmdSevSections is the metadata layout of an edk2 OvmfPkg/AmdSev build (stable
// 2024.05), with a kernel hashes page at 0x810000 whose table sits at 0x810c00.
var AmdSevSections = []Section{
	{0x800000, 0x9000, 1}, {0x80a000, 0x3000, 1}, {0x80d000, 0x1000, 2}, {0x80e000, 0x1000, 3},
	{0x80f000, 0x1000, 4}, {0x810000, 0x1000, 0x10}, {0x811000, 0xf000, 1},
}

// AmdSevOVMF returns a synthetic AmdSev-like image of size bytes (a multiple of
// 4096) that measures kernels: reset block, hashes table at 0x810c00, AmdSevSections.
func AmdSevOVMF(size int) []byte {
	return OVMF(OVMFOptions{Size: size, ResetEIP: 0x80b004, HashTableGPA: 0x810c00, HashTableSize: 0x400,
		Sections: AmdSevSections, Pattern: 0x5a})
}
