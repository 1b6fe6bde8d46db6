package launch

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/snpd/snpd/snp/snptest"
)

func parseBytes(b []byte) (*Firmware, error) {
	return ParseFirmware(bytes.NewReader(b), int64(len(b)))
}

func TestParseDebianFirmware(t *testing.T) {
	for _, tc := range []struct {
		file       string
		sections   int
		hasCAA     bool
		kernHashes bool
	}{
		{"ovmf-bookworm-2022.11.fd", 5, false, false},
		{"ovmf-trixie-2025.02.fd", 6, true, false},
	} {
		t.Run(tc.file, func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join("..", "testdata", "firmware", tc.file))
			if err != nil {
				t.Fatal(err)
			}
			fw, err := parseBytes(b)
			if err != nil {
				t.Fatal(err)
			}
			if got := len(fw.Sections()); got != tc.sections {
				t.Errorf("%d sections, want %d", got, tc.sections)
			}
			if fw.HasSection(SectionSVSMCAA) != tc.hasCAA || fw.HasKernelHashes() != tc.kernHashes {
				t.Errorf("CAA %v kernel hashes %v", fw.HasSection(SectionSVSMCAA), fw.HasKernelHashes())
			}
			eip, err := fw.SEVESResetEIP()
			if err != nil || eip != 0x80b004 {
				t.Errorf("reset eip %#x, %v", eip, err)
			}
			if fw.SEVHashesTableSupported() {
				t.Error("Debian firmware claims an SEV hashes table")
			}
			if fw.GPA() != FourGiB-uint64(len(b)) || fw.Size() != int64(len(b)) {
				t.Errorf("gpa %#x size %d", fw.GPA(), fw.Size())
			}
			if !fw.HasMetadata() || len(fw.TableGUIDs()) != 5 {
				t.Errorf("metadata %v guids %v", fw.HasMetadata(), fw.TableGUIDs())
			}
		})
	}
}

func TestParseAmdSevSuffix(t *testing.T) {
	dir := sharedSNP(t)
	b, err := os.ReadFile(filepath.Join(dir, "upstream", "ovmf_AmdSev_suffix.bin"))
	if err != nil {
		t.Fatal(err)
	}
	fw, err := parseBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	if !fw.HasKernelHashes() {
		t.Fatal("AmdSev build without SNP_KERNEL_HASHES")
	}
	gpa, err := fw.SEVHashesTableGPA()
	if err != nil || gpa != 0x810c00 {
		t.Fatalf("hashes table %#x, %v", gpa, err)
	}
	// bookworm's OVMF_CODE_4M has a footer table but no SEV metadata.
	b, err = os.ReadFile(filepath.Join(dir, "firmware", "ovmf-code-4m-bookworm-2022.11.fd"))
	if err != nil {
		t.Fatal(err)
	}
	if fw, err = parseBytes(b); err != nil || fw.HasMetadata() || fw.Sections() != nil {
		t.Fatalf("CODE_4M: %v, metadata %v", err, fw != nil && fw.HasMetadata())
	}
}

func TestGUIDString(t *testing.T) {
	if got := guidFooterTable.String(); got != "96b582de-1fb2-45f7-baea-a366c55a082d" {
		t.Fatal(got)
	}
	if !bytes.Equal(guidSEVMetadata[:], snptest.MetadataGUID) {
		t.Fatal("snptest and snp disagree on the metadata GUID")
	}
}

func le32(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }

// TestParseErrors covers every refusal of the parser with its message.
func TestParseErrors(t *testing.T) {
	good := snptest.OVMFOptions{ResetEIP: 0x80b004, Sections: snptest.AmdSevSections, HashTableGPA: 0x810c00, HashTableSize: 0x400}
	with := func(f func(*snptest.OVMFOptions)) []byte {
		o := good
		o.Sections = append([]snptest.Section(nil), good.Sections...)
		f(&o)
		return snptest.OVMF(o)
	}
	// forge writes raw table entries ending 32 bytes before the end of a page.
	forge := func(tb []byte) []byte {
		img := make([]byte, 4096)
		copy(img[4096-32-len(tb):], tb)
		return img
	}
	metaAt := func(hdr []byte) []byte {
		img := snptest.OVMF(good)
		copy(img[4096-snptest.MetadataOffset:], hdr)
		return img
	}
	u16 := func(v uint16) []byte { return binary.LittleEndian.AppendUint16(nil, v) }
	cat := func(bs ...[]byte) []byte { return bytes.Join(bs, nil) }

	for _, tc := range []struct {
		name string
		img  []byte
		want string
		is   error
	}{
		{"empty", nil, "non-zero multiple of 4096", ErrFirmwareSize},
		{"not multiple of 4096", make([]byte, 5000), "(got 5000)", ErrFirmwareSize},
		{"no footer", with(func(o *snptest.OVMFOptions) { o.NoFooter = true }), "no OVMF footer table", ErrNoFooterTable},
		{"zeros", make([]byte, 8192), "no OVMF footer table", ErrNoFooterTable},
		{"footer too small", forge(cat(u16(3), snptest.FooterGUID)), "smaller than its own header", ErrBadTable},
		{"footer before image start", forge(cat(u16(0xff00), snptest.FooterGUID)), "extends before the start", ErrBadTable},
		{"entry truncated", forge(cat(le32(1), u16(0x300), snptest.ResetGUID, u16(18+22), snptest.FooterGUID)), "is truncated", ErrBadTable},
		{"entry size too small", forge(cat(le32(1), u16(4), snptest.ResetGUID, u16(18+22), snptest.FooterGUID)), "smaller than its header", ErrBadTable},
		{"stray bytes", forge(cat([]byte{1, 2, 3}, le32(1), u16(22), snptest.ResetGUID, u16(18+25), snptest.FooterGUID)), "stray bytes", ErrBadTable},
		{"duplicate entry", forge(snptest.FooterTable([]snptest.Entry{{GUID: snptest.ResetGUID, Data: le32(1)}, {GUID: snptest.ResetGUID, Data: le32(2)}})), "appears twice", ErrBadTable},
		{"metadata entry short", forge(snptest.FooterTable([]snptest.Entry{{GUID: snptest.MetadataGUID, Data: []byte{1}}})), "want at least 4", ErrBadMetadata},
		{"metadata offset outside", forge(snptest.FooterTable([]snptest.Entry{{GUID: snptest.MetadataGUID, Data: le32(0x10000)}})), "outside the 4096-byte image", ErrBadMetadata},
		{"bad signature", metaAt([]byte("XSEV")), `wrong signature "XSEV"`, ErrBadMetadata},
		{"bad version", metaAt(cat([]byte("ASEV"), le32(16), le32(2), le32(0))), "version 2", ErrBadMetadata},
		{"too many sections", metaAt(cat([]byte("ASEV"), le32(0xffffffff), le32(1), le32(0x7fffffff))), "sections (at most 256", ErrBadMetadata},
		{"length too small", metaAt(cat([]byte("ASEV"), le32(20), le32(1), le32(2))), "too small for 2 sections", ErrBadMetadata},
		{"table past end", metaAt(cat([]byte("ASEV"), le32(0x900), le32(1), le32(1))), "runs past the end", ErrBadMetadata},
		{"table over footer", metaAt(cat([]byte("ASEV"), le32(0x7f0), le32(1), le32(1))), "overlaps the footer table", ErrBadMetadata},
		{"unknown section type", with(func(o *snptest.OVMFOptions) { o.Sections[0].Type = 7 }), "unknown OVMF metadata section type 0x7", ErrBadMetadata},
		{"unaligned section", with(func(o *snptest.OVMFOptions) { o.Sections[0].GPA = 0x800010 }), "not whole pages", ErrBadMetadata},
		{"empty section", with(func(o *snptest.OVMFOptions) { o.Sections[0].Size = 0 }), "not whole pages", ErrBadMetadata},
		{"secrets not one page", with(func(o *snptest.OVMFOptions) { o.Sections[2].Size = 0x2000 }), "want exactly one page", ErrBadMetadata},
		{"overlapping sections", with(func(o *snptest.OVMFOptions) { o.Sections[1].GPA = 0x808000 }), "overlaps SNP_SEC_MEM section at 0x800000", ErrBadMetadata},
		{"section over firmware", with(func(o *snptest.OVMFOptions) { o.Sections[0].GPA = 0xfffff000; o.Sections[0].Size = 0x1000 }), "overlaps", ErrBadMetadata},
		{"sections too large", with(func(o *snptest.OVMFOptions) { o.Sections[6].GPA = 0x10000000; o.Sections[6].Size = 0x20000000 }), "more than 256 MiB", ErrBadMetadata},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fw, err := parseBytes(tc.img)
			if err == nil {
				t.Fatalf("parsed (%d sections), want error %q", len(fw.Sections()), tc.want)
			}
			if !errors.Is(err, tc.is) {
				t.Errorf("error %v is not %v", err, tc.is)
			}
			if !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
				t.Errorf("error %q, want one line containing %q", err, tc.want)
			}
		})
	}
}

// TestParseAllocationBounded: forged length fields must not drive allocation.
func TestParseAllocationBounded(t *testing.T) {
	img := snptest.OVMF(snptest.OVMFOptions{ResetEIP: 1, Sections: snptest.AmdSevSections})
	hdr := bytes.Join([][]byte{[]byte("ASEV"), le32(0xffffffff), le32(1), le32(256)}, nil)
	copy(img[4096-snptest.MetadataOffset:], hdr)
	big := &sizedReader{r: bytes.NewReader(img), size: 1 << 32}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, err := ParseFirmware(big, 1<<32)
	runtime.ReadMemStats(&after)
	if err == nil {
		t.Fatal("forged image parsed")
	}
	if n := after.TotalAlloc - before.TotalAlloc; n > 256<<10 {
		t.Fatalf("parser allocated %d bytes for a forged image", n)
	}
}

// sizedReader serves r's bytes at the end of a virtual image of size bytes (zeros
// before), so tests can present a 4 GiB image without allocating it.
type sizedReader struct {
	r    *bytes.Reader
	size int64
}

func (s *sizedReader) ReadAt(p []byte, off int64) (int, error) {
	base := s.size - s.r.Size()
	n := 0
	for n < len(p) && off+int64(n) < base {
		p[n] = 0
		n++
	}
	if n == len(p) {
		return n, nil
	}
	m, err := s.r.ReadAt(p[n:], off+int64(n)-base)
	return n + m, err
}

// FuzzParseFirmware feeds arbitrary image tails (zero-padded to a page multiple) to
// the parser and, when they parse, to the measurement: no panic, bounded allocation.
func FuzzParseFirmware(f *testing.F) {
	for _, name := range []string{"ovmf-bookworm-2022.11.fd", "ovmf-trixie-2025.02.fd", "ovmf-amdsev-debian-2022.11.fd", "ovmf-amdsev-debian-2025.02.fd"} {
		b, err := os.ReadFile(filepath.Join("..", "testdata", "firmware", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b[len(b)-0x600:]) // footer table and metadata
	}
	f.Add(snptest.AmdSevOVMF(4096)[4096-snptest.MetadataOffset:])
	f.Add(snptest.OVMF(snptest.OVMFOptions{ResetEIP: 0xfffffff0})[4096-128:])
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, tail []byte) {
		if len(tail) > 1<<16 {
			return
		}
		size := (len(tail) + PageSize - 1) / PageSize * PageSize
		img := make([]byte, size)
		copy(img[size-len(tail):], tail)
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		fw, err := parseBytes(img)
		runtime.ReadMemStats(&after)
		if n := after.TotalAlloc - before.TotalAlloc; n > 512<<10 {
			t.Fatalf("parser allocated %d bytes for a %d-byte image", n, size)
		}
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("multi-line error %q", err)
			}
			return
		}
		for _, s := range fw.Sections() {
			if s.GPA%PageSize != 0 || s.Size%PageSize != 0 || s.Size == 0 {
				t.Fatalf("accepted bad section %+v", s)
			}
		}
		in := MeasureInput{Firmware: bytes.NewReader(img), FirmwareSize: int64(size), VCPUs: 2, GuestFeatures: 1, SkipFileDigests: true}
		if m, err := Measure(in); err == nil && len(m.Digest) != 48 {
			t.Fatalf("digest of %d bytes", len(m.Digest))
		}
		in.Kernel = bytes.NewReader(nil)
		in.VMM = VMMEC2
		_, _ = Measure(in)
	})
}
