package uki_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/snpd/snpd/snp/snptest"
	"github.com/snpd/snpd/snp/uki"
)

var update = flag.Bool("update", false, "rebuild snp/testdata/uki/uki-synthetic.efi with the installed stub and objcopy")

// The committed synthetic UKI: Debian's systemd-stub with synthetic payloads (not
// bootable). It lets every machine test the reader on a real objcopy-built UKI.
var (
	syntheticUKI = filepath.Join("..", "testdata", "uki", "uki-synthetic.efi")
	syntheticOpt = snptest.UKIOptions{
		Kernel:  filepath.Join("..", "testdata", "inputs", "kernel-synthetic.bin"),
		Initrd:  filepath.Join("..", "testdata", "inputs", "initrd-synthetic.bin"),
		Cmdline: "console=ttyS0 snpd.synthetic=1",
		Uname:   "6.1.0-synthetic-amd64",
	}
)

func parseFile(t *testing.T, p string) (*uki.Image, []byte) {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	im, err := uki.Parse(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatalf("parsing %s: %v", p, err)
	}
	return im, b
}

func fileSHA256(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", sha256.Sum256(b))
}

// checkUKI checks that the UKI at p carries exactly o's payloads, section by section.
func checkUKI(t *testing.T, p string, o snptest.UKIOptions) *uki.Summary {
	t.Helper()
	im, b := parseFile(t, p)
	if !im.IsUKI() || !im.PE32Plus || im.Machine != uki.MachineAMD64 || im.Subsystem != uki.SubsystemEFIApplication {
		t.Fatalf("%s: uki=%v pe32+=%v machine %#x subsystem %d", p, im.IsUKI(), im.PE32Plus, im.Machine, im.Subsystem)
	}
	if im.TimeDateStamp != 0 {
		t.Errorf("timestamp %d, want 0 (reproducible)", im.TimeDateStamp)
	}
	sum, err := uki.Describe(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]uki.SectionSummary{}
	var names []string
	for _, s := range sum.Sections {
		got[s.Name] = s
		names = append(names, s.Name)
	}
	want := []string{".text", ".reloc", ".data", ".dynamic", ".rela", ".dynsym", ".sbat", ".sdmagic", ".osrel", ".cmdline"}
	if o.Uname != "" {
		want = append(want, ".uname")
	}
	if o.Initrd != "" {
		want = append(want, ".initrd")
	}
	want = append(want, ".linux")
	if !reflect.DeepEqual(names, want) {
		t.Fatalf("sections %q, want %q", names, want)
	}
	if s := got[".linux"]; s.SHA256 != fileSHA256(t, o.Kernel) {
		t.Errorf(".linux sha256 %s, want the kernel's %s", s.SHA256, fileSHA256(t, o.Kernel))
	}
	if o.Initrd != "" && got[".initrd"].SHA256 != fileSHA256(t, o.Initrd) {
		t.Errorf(".initrd sha256 %s, want the initrd's", got[".initrd"].SHA256)
	}
	if c := sha256.Sum256([]byte(o.Cmdline)); got[".cmdline"].SHA256 != fmt.Sprintf("%x", c) || sum.Cmdline != o.Cmdline {
		t.Errorf(".cmdline %q (sha256 %s), want %q", sum.Cmdline, got[".cmdline"].SHA256, o.Cmdline)
	}
	if sum.Uname != o.Uname || sum.OSRelease != "snpd test guest (Debian cloud kernel)" || !strings.HasPrefix(sum.Stub, "systemd-stub ") {
		t.Errorf("summary %+v", sum)
	}
	// Sections lie inside the file and do not overlap in memory.
	var end uint64
	for _, s := range im.Sections {
		if uint64(s.VirtualAddress) < end {
			t.Errorf("section %s at %#x overlaps the previous one (ends %#x)", s.Name, s.VirtualAddress, end)
		}
		end = uint64(s.VirtualAddress) + uint64(s.VirtualSize)
	}
	if end > uint64(im.SizeOfImage) {
		t.Errorf("sections end at %#x beyond SizeOfImage %#x", end, im.SizeOfImage)
	}
	return sum
}

// TestSyntheticUKI reads the committed objcopy-built UKI; with -update (and the stub
// and objcopy installed) it rebuilds it first. Without -update, a rebuild with the
// same stub must give the committed bytes (MakeUKI is reproducible).
func TestSyntheticUKI(t *testing.T) {
	if *update {
		if err := snptest.MakeUKI(syntheticUKI, syntheticOpt); err != nil {
			t.Fatal(err)
		}
	}
	sum := checkUKI(t, syntheticUKI, syntheticOpt)
	t.Run("rebuild", func(t *testing.T) {
		stub, err := os.ReadFile(snptest.DefaultUKIStub)
		if err != nil {
			t.Skipf("systemd-stub %s is absent (package systemd-boot-efi): %v", snptest.DefaultUKIStub, err)
		}
		if !bytes.Contains(stub, []byte("LoaderInfo: "+sum.Stub+" ")) {
			t.Skipf("the installed stub is not %s, which built the committed UKI (go test -run TestSyntheticUKI -update rebuilds it)", sum.Stub)
		}
		p := snptest.BuildUKI(t, syntheticOpt)
		a, _ := os.ReadFile(p)
		b, _ := os.ReadFile(syntheticUKI)
		if !bytes.Equal(a, b) {
			t.Fatalf("rebuilding the synthetic UKI gave different bytes (sha256 %x, committed %x)", sha256.Sum256(a), sha256.Sum256(b))
		}
	})
}

// TestRealUKI builds a UKI from Debian's cloud kernel and an initramfs with the
// installed stub and objcopy, and reads it back.
func TestRealUKI(t *testing.T) {
	k := snptest.GuestKernel(t)
	initrd := snptest.BuildInitramfs(t, []snptest.InitramfsFile{{Path: "/init", Mode: 0o755, Data: []byte("#!/bin/sh\n")}})
	o := snptest.UKIOptions{Kernel: k, Initrd: initrd, Cmdline: "console=ttyS0 panic=-1", Uname: "6.1.0-cloud-amd64"}
	p := snptest.BuildUKI(t, o)
	sum := checkUKI(t, p, o)
	t.Logf("UKI %s: %+v", p, sum)
}

// TestDebianKernelIsPEButNotUKI: Debian's bzImage carries its own EFI stub, so it is a
// PE image, but it has no .linux section.
func TestDebianKernelIsPEButNotUKI(t *testing.T) {
	im, _ := parseFile(t, snptest.GuestKernel(t))
	if im.IsUKI() {
		t.Fatal("a bzImage reported as a UKI")
	}
	if _, ok := im.Section(".text"); !ok || im.Machine != uki.MachineAMD64 {
		t.Fatalf("sections %q machine %#x", im.SectionNames(), im.Machine)
	}
}

// TestNotPE: raw and synthetic kernels are not PE images, and say so.
func TestNotPE(t *testing.T) {
	for _, b := range [][]byte{nil, []byte("MZ"), make([]byte, 4096), []byte("\x7fELF" + strings.Repeat("\x00", 100))} {
		_, err := uki.Parse(bytes.NewReader(b), int64(len(b)))
		if !errors.Is(err, uki.ErrNotPE) {
			t.Errorf("%d bytes: %v, want ErrNotPE", len(b), err)
		}
	}
	b, err := os.ReadFile(syntheticOpt.Kernel)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := uki.Describe(bytes.NewReader(b), int64(len(b))); !errors.Is(err, uki.ErrNotPE) {
		t.Fatalf("synthetic kernel: %v, want ErrNotPE", err)
	}
}

// pe builds a minimal PE32+ image: DOS header, PE header at 0x80, a 240-byte optional
// header and the given sections, padded to size bytes.
type peSpec struct {
	peOff    uint32
	nsec     uint16
	optSize  uint16
	magic    uint16
	sections [][40]byte
	size     int
}

func (s peSpec) bytes() []byte {
	if s.peOff == 0 {
		s.peOff = 0x80
	}
	if s.optSize == 0 {
		s.optSize = 240
	}
	if s.magic == 0 {
		s.magic = 0x20b
	}
	if s.nsec == 0 {
		s.nsec = uint16(len(s.sections))
	}
	n := int(s.peOff) + 24 + int(s.optSize) + 40*len(s.sections)
	if s.size > n {
		n = s.size
	}
	b := make([]byte, n)
	b[0], b[1] = 'M', 'Z'
	binary.LittleEndian.PutUint32(b[0x3c:], s.peOff)
	if int(s.peOff)+24 <= len(b) {
		copy(b[s.peOff:], "PE\x00\x00")
		binary.LittleEndian.PutUint16(b[s.peOff+4:], 0x8664)
		binary.LittleEndian.PutUint16(b[s.peOff+6:], s.nsec)
		binary.LittleEndian.PutUint16(b[s.peOff+20:], s.optSize)
	}
	opt := int(s.peOff) + 24
	if opt+72 <= len(b) {
		binary.LittleEndian.PutUint16(b[opt:], s.magic)
		binary.LittleEndian.PutUint32(b[opt+32:], 0x1000)
		binary.LittleEndian.PutUint32(b[opt+36:], 0x200)
		binary.LittleEndian.PutUint32(b[opt+56:], 0x10000)
		binary.LittleEndian.PutUint16(b[opt+68:], 10)
	}
	for i, h := range s.sections {
		copy(b[opt+int(s.optSize)+40*i:], h[:])
	}
	return b
}

// peOffsetAt returns a 256-byte DOS header whose e_lfanew is off.
func peOffsetAt(off uint32) []byte {
	b := make([]byte, 0x100)
	b[0], b[1] = 'M', 'Z'
	binary.LittleEndian.PutUint32(b[0x3c:], off)
	return b
}

func sectionHeader(name string, vsize, rva, rawSize, rawOff uint32) [40]byte {
	var h [40]byte
	copy(h[:8], name)
	binary.LittleEndian.PutUint32(h[8:], vsize)
	binary.LittleEndian.PutUint32(h[12:], rva)
	binary.LittleEndian.PutUint32(h[16:], rawSize)
	binary.LittleEndian.PutUint32(h[20:], rawOff)
	return h
}

// TestParseErrors: each malformed header gives its one-line error.
func TestParseErrors(t *testing.T) {
	ok := peSpec{sections: [][40]byte{sectionHeader(".linux", 5, 0x1000, 0x200, 0x200)}, size: 0x400}
	if im, err := uki.Parse(bytes.NewReader(ok.bytes()), 0x400); err != nil || !im.IsUKI() || im.Sections[0].ContentSize() != 5 {
		t.Fatalf("minimal UKI: %v %+v", err, im)
	}
	for _, tc := range []struct {
		name string
		b    []byte
		size int64 // 0: len(b)
		is   error
		want string
	}{
		{"empty", nil, 0, uki.ErrNotPE, "0 bytes, shorter than a DOS header"},
		{"no MZ", make([]byte, 64), 0, uki.ErrNotPE, "no MZ signature"},
		{"PE offset past end", peOffsetAt(0xfffffff0), 0, uki.ErrNotPE, "PE header offset 0xfffffff0 is past the end"},
		{"no PE signature", append([]byte("MZ"), make([]byte, 200)...), 0, uki.ErrNotPE, "no PE signature at offset 0x0"},
		{"too many sections", peSpec{nsec: 97}.bytes(), 0, uki.ErrBadPE, "97 sections (at most 96 supported)"},
		{"optional header too small", peSpec{optSize: 20}.bytes(), 0, uki.ErrBadPE, "optional header is 20 bytes, want at least 64"},
		{"bad magic", peSpec{magic: 0x107}.bytes(), 0, uki.ErrBadPE, "optional header magic 0x107"},
		{"section table past end", peSpec{nsec: 3, sections: [][40]byte{sectionHeader(".a", 0, 0, 0, 0)}}.bytes(), 0, uki.ErrBadPE,
			"section table (3 entries at 0x188) runs past the end"},
		{"section data past end", peSpec{sections: [][40]byte{sectionHeader(".linux", 5, 0x1000, 0x200, 0x300)}, size: 0x400}.bytes(), 0, uki.ErrBadPE,
			"section 0 (.linux): 512 bytes at offset 0x300 run past the end of the 1024-byte file"},
		{"section offset wraps", peSpec{sections: [][40]byte{sectionHeader("x\x1b[2J", 5, 0x1000, 0xffffffff, 0xffffffff)}, size: 0x400}.bytes(), 0, uki.ErrBadPE,
			`section 0 ("x\x1b[2J"): 4294967295 bytes at offset 0xffffffff`},
		{"size beyond data", ok.bytes()[:0x200], 0x400, nil, "hashing section .linux: read 0 of 5 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			size := tc.size
			if size == 0 {
				size = int64(len(tc.b))
			}
			im, err := uki.Parse(bytes.NewReader(tc.b), size)
			if tc.name == "size beyond data" && err == nil {
				// The headers fit; reading the section is what fails.
				_, err = uki.SHA256(bytes.NewReader(tc.b), im.Sections[0])
				if err == nil {
					_, err = uki.SectionText(bytes.NewReader(tc.b), im.Sections[0])
				}
			}
			if err == nil {
				t.Fatalf("accepted: %+v", im)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %v is not %v", err, tc.is)
			}
			if !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
				t.Errorf("error %q, want one line containing %q", err, tc.want)
			}
		})
	}
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r *bytes.Reader
	n int
}

func (c *countingReader) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.r.ReadAt(p, off)
	c.n += n
	return n, err
}

// TestParseReadsOnlyHeaders: parsing a 17 MB-class UKI reads a few KiB, and a forged
// 1 MiB text section is refused rather than read.
func TestParseReadsOnlyHeaders(t *testing.T) {
	b, err := os.ReadFile(syntheticUKI)
	if err != nil {
		t.Fatal(err)
	}
	c := &countingReader{r: bytes.NewReader(b)}
	if _, err := uki.Parse(c, int64(len(b))); err != nil {
		t.Fatal(err)
	}
	if c.n > 4096 {
		t.Fatalf("Parse read %d bytes", c.n)
	}
	big := peSpec{sections: [][40]byte{sectionHeader(".cmdline", 1<<20, 0x1000, 1<<20, 0x400)}, size: 0x400 + 1<<20}.bytes()
	im, err := uki.Parse(bytes.NewReader(big), int64(len(big)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := uki.SectionText(bytes.NewReader(big), im.Sections[0]); err == nil || !strings.Contains(err.Error(), "more than the 65536") {
		t.Fatalf("1 MiB .cmdline: %v", err)
	}
	sum, err := uki.Describe(bytes.NewReader(big), int64(len(big)))
	if err != nil || sum.Cmdline != "" || sum.Sections[0].Size != 1<<20 {
		t.Fatalf("Describe: %v %+v", err, sum)
	}
}

// FuzzParse: arbitrary bytes never panic, errors are one line, and an accepted image's
// sections lie inside it and can all be hashed and described.
func FuzzParse(f *testing.F) {
	b, err := os.ReadFile(syntheticUKI)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b[:0x400]) // headers and section table only
	f.Add(peSpec{sections: [][40]byte{sectionHeader(".linux", 5, 0x1000, 0x200, 0x200), sectionHeader(".cmdline", 3, 0x2000, 3, 0x100)}, size: 0x400}.bytes())
	f.Add(peSpec{magic: 0x10b, optSize: 224}.bytes())
	f.Add([]byte("MZ"))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 1<<20 {
			return
		}
		im, err := uki.Parse(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("multi-line error %q", err)
			}
			if !errors.Is(err, uki.ErrNotPE) && !errors.Is(err, uki.ErrBadPE) {
				t.Fatalf("error %q wraps neither ErrNotPE nor ErrBadPE", err)
			}
			return
		}
		if len(im.Sections) > uki.MaxSections {
			t.Fatalf("%d sections", len(im.Sections))
		}
		for _, s := range im.Sections {
			if s.RawSize != 0 && uint64(s.RawOffset)+uint64(s.RawSize) > uint64(len(data)) {
				t.Fatalf("accepted section %+v outside %d bytes", s, len(data))
			}
			if strings.ContainsAny(s.DisplayName(), "\x00\x1b\n") {
				t.Fatalf("display name %q is not safe to print", s.DisplayName())
			}
		}
		if _, err := uki.Describe(bytes.NewReader(data), int64(len(data))); err != nil {
			t.Fatalf("Describe after Parse: %v", err)
		}
		// A size larger than the data: reads fail cleanly.
		_, _ = uki.Describe(bytes.NewReader(data), int64(len(data))+4096)
	})
}

// TestStandardLibraryOnly: the reader parses outside input for snpctl and
// must bring no dependency with it.
func TestStandardLibraryOnly(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	if deps := strings.Fields(string(out)); len(deps) != 1 || deps[0] != "github.com/snpd/snpd/snp/uki" {
		t.Fatalf("snp/uki depends on %q, want the standard library only", deps)
	}
}
