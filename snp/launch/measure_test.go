package launch

import (
	"bytes"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/snpd/snpd/snp/snptest"
)

func openTB(t testing.TB, path string) (*os.File, int64) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	return f, st.Size()
}

func trixie(t testing.TB) (*os.File, int64) {
	return committedFirmware(t, "ovmf-trixie-2025.02.fd")
}

// committedFirmware opens a firmware copy committed in snp/testdata/firmware.
func committedFirmware(t testing.TB, name string) (*os.File, int64) {
	return openTB(t, filepath.Join("..", "testdata", "firmware", name))
}

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestTraces compares every PAGE_INFO update (type, GPA, contents digest, digest
// after) with the reference tool's traces of four launches.
func TestTraces(t *testing.T) {
	dir := sharedSNP(t)
	amd := filepath.Join(dir, "upstream", "ovmf_AmdSev_suffix.bin")
	for _, tc := range []struct {
		file   string
		fw     string
		vmm    VMMType
		sig    uint32
		kernel bool
	}{
		{"amdsev-suffix_QEMU_EPYC-v4_2vcpu_gf0x1_kernel+initrd+append.tsv", amd, VMMQEMU, 0x800f12, true},
		{"amdsev-suffix_ec2_2vcpu_gf0x1_nokernel.tsv", amd, VMMEC2, 0x800f12, false},
		{"amdsev-suffix_gce_2vcpu_gf0x1_nokernel.tsv", amd, VMMGCE, 0, false},
		{"trixie-ovmf_QEMU_EPYC-v4_2vcpu_gf0x1.tsv", filepath.Join(dir, "firmware", "ovmf-trixie-2025.02.fd"), VMMQEMU, 0x800f12, false},
	} {
		t.Run(tc.file, func(t *testing.T) {
			fw, size := openTB(t, tc.fw)
			in := MeasureInput{Firmware: fw, FirmwareSize: size, VCPUs: 2, VCPUSig: tc.sig, VMM: tc.vmm, GuestFeatures: 1, Log: true}
			if tc.kernel {
				in.Kernel, _ = openTB(t, filepath.Join(dir, "inputs", "kernel-synthetic.bin"))
				in.Initrd, _ = openTB(t, filepath.Join(dir, "inputs", "initrd-synthetic.bin"))
				in.Cmdline = "console=ttyS0 loglevel=7"
			}
			m, err := Measure(in)
			if err != nil {
				t.Fatal(err)
			}
			raw, err := os.ReadFile(filepath.Join(dir, "traces", tc.file))
			if err != nil {
				t.Fatal(err)
			}
			var rows [][]string
			for _, l := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
				if strings.HasPrefix(l, "#") || strings.HasPrefix(l, "step") {
					continue
				}
				rows = append(rows, strings.Split(l, "\t"))
			}
			if len(rows) != len(m.Updates) {
				t.Fatalf("%d updates, trace has %d", len(m.Updates), len(rows))
			}
			for i, r := range rows {
				u := m.Updates[i]
				typ, _ := strconv.Atoi(r[1])
				gpa, _ := strconv.ParseUint(r[3], 0, 64)
				if int(u.Type) != typ || u.Type.String() != r[2] || u.GPA != gpa ||
					hex.EncodeToString(u.Contents[:]) != r[4] || hex.EncodeToString(u.DigestAfter[:]) != r[5] {
					t.Fatalf("step %s: got %s %#x %x %x\nwant %v", r[0], u.Type, u.GPA, u.Contents, u.DigestAfter, r)
				}
			}
			if !bytes.Equal(m.Digest, m.Updates[len(m.Updates)-1].DigestAfter[:]) {
				t.Fatal("digest is not the last update's")
			}
		})
	}
}

// TestVMSADumps compares the VMSA pages with the reference's --dump-vmsa output.
func TestVMSADumps(t *testing.T) {
	dir := sharedSNP(t)
	fw, size := trixie(t)
	for _, tc := range []struct {
		prefix string
		mode   Mode
		vmm    VMMType
	}{
		{"snp-trixie-QEMU-gf0x1", ModeSNP, VMMQEMU},
		{"snp-trixie-ec2-gf0x1", ModeSNP, VMMEC2},
		{"snp-trixie-gce-gf0x1", ModeSNP, VMMGCE},
		{"seves-trixie-QEMU", ModeSEVES, VMMQEMU},
	} {
		t.Run(tc.prefix, func(t *testing.T) {
			m, err := Measure(MeasureInput{Mode: tc.mode, Firmware: fw, FirmwareSize: size, VCPUs: 2, VCPUSig: 0x800f12, VMM: tc.vmm, GuestFeatures: 1})
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 2; i++ {
				want, err := os.ReadFile(filepath.Join(dir, "vmsa", fmt.Sprintf("%s-vmsa%d.bin", tc.prefix, i)))
				if err != nil {
					t.Fatal(err)
				}
				if got := m.VMSAPage(i); !bytes.Equal(got, want) {
					t.Fatalf("vmsa%d differs: %+v", i, DiffVMSA(want, got))
				}
			}
		})
	}
	t.Run("svsm", func(t *testing.T) {
		ovmf, osize := openTB(t, filepath.Join(dir, "upstream", "svsm_ovmf.fd"))
		svsm, ssize := openTB(t, filepath.Join(dir, "upstream", "svsm.bin"))
		m, err := Measure(MeasureInput{Mode: ModeSNPSVSM, Firmware: ovmf, FirmwareSize: osize, SVSM: svsm, SVSMSize: ssize,
			VarsSize: 540672, VCPUs: 1, VCPUSig: 0x800f12, GuestFeatures: 0x21})
		if err != nil {
			t.Fatal(err)
		}
		want, err := os.ReadFile(filepath.Join(dir, "vmsa", "snp-svsm-upstream-vmsa0.bin"))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(m.BSPVMSA, want) {
			t.Fatalf("svsm vmsa differs: %+v", DiffVMSA(want, m.BSPVMSA))
		}
	})
}

// TestVMSAVariants checks the older VMSA states users still meet: only the named
// fields change, and the digest with them.
func TestVMSAVariants(t *testing.T) {
	cur := BuildVMSA(VMSAParams{EIP: bspEIP, SEVFeatures: 1, VCPUSig: 0x800f12, VMM: VMMEC2})
	old := BuildVMSA(VMSAParams{EIP: bspEIP, SEVFeatures: 1, VCPUSig: 0x800f12, VMM: VMMEC2, Variant: VMSAEC2RDXZero})
	if d := DiffVMSA(cur, old); len(d) != 1 || d[0].Field != "rdx" || d[0].A != "0x600" || d[0].B != "0x0" {
		t.Fatalf("ec2-rdx0 diff %+v", d)
	}
	cur = BuildVMSA(VMSAParams{EIP: bspEIP, SEVFeatures: 1, VCPUSig: 0x800f12})
	old = BuildVMSA(VMSAParams{EIP: bspEIP, SEVFeatures: 1, VCPUSig: 0x800f12, Variant: VMSAQEMUPreINIT2})
	if d := DiffVMSA(cur, old); len(d) != 2 || d[0].Field != "mxcsr" || d[1].Field != "x87_fcw" {
		t.Fatalf("qemu-pre-init2 diff %+v", d)
	}
	for _, s := range []string{"current", "ec2-rdx0", "qemu-pre-init2"} {
		v, err := ParseVMSAVariant(s)
		if err != nil || v.String() != s {
			t.Fatalf("%s: %v %v", s, v, err)
		}
	}
	if _, err := ParseVMSAVariant("ec2"); err == nil {
		t.Fatal("unknown variant accepted")
	}

	fw, size := trixie(t)
	digest := func(in MeasureInput) string {
		in.Firmware, in.FirmwareSize, in.VCPUs, in.VCPUSig, in.GuestFeatures = fw, size, 2, 0x800f12, 1
		m, err := Measure(in)
		if err != nil {
			t.Fatal(err)
		}
		return hex.EncodeToString(m.Digest)
	}
	base := digest(MeasureInput{})
	seen := map[string]bool{base: true}
	for _, in := range []MeasureInput{
		{VMSAVariant: VMSAQEMUPreINIT2},
		{VMSAGPA: 0xFFFFFFFFFF000},
		{VMM: VMMEC2},
		{VMM: VMMEC2, VMSAVariant: VMSAEC2RDXZero},
	} {
		d := digest(in)
		if seen[d] {
			t.Fatalf("%+v gives a digest already seen", in)
		}
		seen[d] = true
	}
	if digest(MeasureInput{VMSAGPA: DefaultVMSAGPA}) != base {
		t.Fatal("explicit default VMSA GPA changes the digest")
	}
}

// TestGoPortVectors reproduces the PAGE_INFO vectors of google/gce-tcb-verifier and
// the EC2 launch digests of virtee/sev-snp-measure-go (rdx=0 and 0x600 forms).
func TestGoPortVectors(t *testing.T) {
	t.Run("gce-tcb-verifier TestUpdateData", func(t *testing.T) {
		g := &gctx{}
		pages := make([]byte, 3*PageSize)
		copy(pages, strings.Repeat("LGTM", 4))
		copy(pages[3*PageSize-16:], strings.Repeat("LGTM", 4))
		if err := g.updateNormalPagesFrom(bytes.NewReader(pages), int64(len(pages)), 0, 2, nil); err != nil {
			t.Fatal(err)
		}
		if got := hex.EncodeToString(g.ld[:]); got != "cba1cd767c33b30f96271837dbbae4081a945464a5af397b9b0336b5d8759ee88cc6b62c05d915c4424a9ac5747437d4" {
			t.Fatal(got)
		}
	})
	t.Run("gce-tcb-verifier TestZeroContentUpdateData", func(t *testing.T) {
		g := &gctx{}
		g.updateEach(PageZero, 0x9000, 3*PageSize)
		if got := hex.EncodeToString(g.ld[:]); got != "4bfe18477ba370a50329da74b9621e721c4f29663176e08fbcf088a17c1bc45f133898b86d5082acbe202a6e9419808a" {
			t.Fatal(got)
		}
	})
	dir := sharedSNP(t)
	for _, tc := range []struct{ file, rdx0, rdx600 string }{
		{"sev-snp-measure-go_ovmf_img_1.metadata.json",
			"4c6e33087d08fa770259484dddbef367086a15c3e2cf10038dc97229d39c942671c2e22b300178f8de594a3f2fa59303",
			"1c146f3083d66ad1648f842a62a65ad99b9fa4c8fe5b151b677f4923c1686004ce9ce3d1d9eda527f72bba78e6ceef67"},
		{"sev-snp-measure-go_ovmf_img_2.metadata.json",
			"c2c84b9364fc9f0f54b04534768c860c6e0e386ad98b96e8b98eca46ac8971d05c531ba48373f054c880cfd1f4a0a84e",
			"ef89452c1af43e29da35f8707836be26dbdb70654e46cd81368d7e130ab583018b70319e90b5890b63e2294eed84e63d"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			meta := readGoPortMetadata(t, filepath.Join(dir, "upstream", "go-ports", tc.file))
			for variant, want := range map[VMSAVariant]string{VMSAEC2RDXZero: tc.rdx0, VMSACurrent: tc.rdx600} {
				g := &gctx{}
				copy(g.ld[:], meta.ovmfHash)
				g.updateMetadata(meta.sections, VMMEC2, nil)
				in := MeasureInput{VCPUs: 2, VMM: VMMEC2, GuestFeatures: 1, VMSAVariant: variant}
				bsp, ap, err := vmsaPages(in, meta.resetEIP, 1)
				if err != nil {
					t.Fatal(err)
				}
				for i, p := range [][]byte{bsp, ap} {
					_ = i
					d := sha512.Sum384(p)
					g.update(PageVMSA, DefaultVMSAGPA, &d)
				}
				if got := hex.EncodeToString(g.ld[:]); got != want {
					t.Fatalf("%s: %s want %s", variant, got, want)
				}
			}
		})
	}
}

type goPortMeta struct {
	sections []MetadataSection
	resetEIP uint32
	ovmfHash []byte
}

// readGoPortMetadata reads the Go port's metadata JSON (a handful of quoted hex
// fields; decoded by hand to keep the hex strings as given).
func readGoPortMetadata(t *testing.T, path string) goPortMeta {
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		MetadataItems []struct {
			GPA            string
			SectionTypeInt uint32
			Size           string
		}
		ResetEIP string
		OVMFHash string
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	var m goPortMeta
	for _, it := range doc.MetadataItems {
		gpa, _ := strconv.ParseUint(it.GPA, 0, 64)
		size, _ := strconv.ParseUint(it.Size, 0, 64)
		m.sections = append(m.sections, MetadataSection{GPA: gpa, Size: size, Type: SectionType(it.SectionTypeInt)})
	}
	eip, _ := strconv.ParseUint(doc.ResetEIP, 0, 32)
	m.resetEIP = uint32(eip)
	m.ovmfHash = mustHex(t, doc.OVMFHash)
	return m
}

// TestParallelMatchesSequential: the pipeline gives the same chain as a plain loop
// for every worker count, image size (chunk boundaries) and zero/non-zero mix.
func TestParallelMatchesSequential(t *testing.T) {
	for _, pages := range []int{1, chunkPages - 1, chunkPages, chunkPages + 1, 3*chunkPages + 5,
		64*chunkPagesMax - 1, 64*chunkPagesMax + 3} {
		// A mix of zero pages, uniform 0xff pages, pages that are uniform but for
		// their first or last byte, and pages with one stray byte.
		img := make([]byte, pages*PageSize)
		for p := 0; p < pages; p++ {
			page := img[p*PageSize : (p+1)*PageSize]
			switch p % 5 {
			case 1:
				for i := range page {
					page[i] = 0xff
				}
			case 2:
				for i := range page {
					page[i] = 0xff
				}
				page[PageSize-1] = 0xfe
			case 3:
				page[0] = 1
			case 4:
				page[p%PageSize] = byte(p + 1)
			}
		}
		want := &gctx{}
		for p := 0; p < pages; p++ {
			want.updateNormalPage(0x1000_0000+uint64(p*PageSize), img[p*PageSize:(p+1)*PageSize])
		}
		for _, workers := range []int{1, 2, 7} {
			g := &gctx{}
			h256, h384 := sha256.New(), sha512.New384()
			if err := g.updateNormalPagesFrom(bytes.NewReader(img), int64(len(img)), 0x1000_0000, workers, []hash.Hash{h256, h384}); err != nil {
				t.Fatal(err)
			}
			if g.ld != want.ld {
				t.Fatalf("%d pages, %d workers: chain differs", pages, workers)
			}
			if s := sha256.Sum256(img); !bytes.Equal(h256.Sum(nil), s[:]) {
				t.Fatalf("%d pages: file SHA-256 differs", pages)
			}
			if s := sha512.Sum384(img); !bytes.Equal(h384.Sum(nil), s[:]) {
				t.Fatalf("%d pages: file SHA-384 differs", pages)
			}
		}
	}
}

// failingReader fails after limit bytes.
type failingReader struct {
	r     io.ReaderAt
	limit int64
}

var errDisk = errors.New("disk on fire")

func (f *failingReader) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > f.limit {
		return 0, errDisk
	}
	return f.r.ReadAt(p, off)
}

func TestMeasureReadErrors(t *testing.T) {
	img := snptest.AmdSevOVMF(64 << 20)
	for _, limit := range []int64{int64(len(img)) - 4096, int64(len(img)) / 2, chunkSize} {
		// The parser reads the tail first; fail later in the streaming pass.
		r := &tailOK{failingReader{bytes.NewReader(img), limit}, int64(len(img))}
		_, err := Measure(MeasureInput{Firmware: r, FirmwareSize: int64(len(img)), VCPUs: 1, GuestFeatures: 1})
		if !errors.Is(err, errDisk) || !strings.HasPrefix(err.Error(), "reading firmware: ") {
			t.Fatalf("limit %d: %v", limit, err)
		}
	}
	// A file shorter than its stated size.
	_, err := Measure(MeasureInput{Firmware: bytes.NewReader(img[:len(img)-8192]), FirmwareSize: int64(len(img)), VCPUs: 1})
	if err == nil {
		t.Fatal("short file measured")
	}
}

// tailOK lets the last 64 KiB through (the footer) and fails elsewhere as f does.
type tailOK struct {
	f    failingReader
	size int64
}

func (t *tailOK) ReadAt(p []byte, off int64) (int, error) {
	if off >= t.size-(1<<17) {
		return t.f.r.ReadAt(p, off)
	}
	return t.f.ReadAt(p, off)
}

// TestMeasureErrors covers each refusal of Measure with its message.
func TestMeasureErrors(t *testing.T) {
	fw, size := trixie(t)
	amd2022, amd2022Size := committedFirmware(t, "ovmf-amdsev-debian-2022.11.fd")
	amd := snptest.AmdSevOVMF(4096)
	k := func() io.Reader { return strings.NewReader("kernel") }
	for _, tc := range []struct {
		name string
		in   MeasureInput
		want string
	}{
		{"no firmware", MeasureInput{VCPUs: 1}, "no firmware given"},
		{"empty firmware", MeasureInput{Firmware: bytes.NewReader(nil), VCPUs: 1}, "non-zero multiple of 4096"},
		{"size not page multiple", MeasureInput{Firmware: fw, FirmwareSize: size - 1, VCPUs: 1}, "(got 4194303)"},
		{"vcpus 0", MeasureInput{Firmware: fw, FirmwareSize: size}, "vcpus must be at least 1"},
		{"vcpus 0 seves", MeasureInput{Mode: ModeSEVES, Firmware: fw, FirmwareSize: size}, "vcpus must be at least 1"},
		{"initrd without kernel", MeasureInput{Firmware: fw, FirmwareSize: size, VCPUs: 1, Initrd: k()}, "needs a kernel"},
		{"kernel on Debian OVMF", MeasureInput{Firmware: fw, FirmwareSize: size, VCPUs: 1, Kernel: k()},
			"Kernel specified but OVMF metadata doesn't include SNP_KERNEL_HASHES section: this firmware is not an OvmfPkg/AmdSev build (no SEV hashes table; Debian's OVMF.fd is OvmfPkgX64)"},
		{"kernel on AmdSev 2022.11", MeasureInput{Firmware: amd2022, FirmwareSize: amd2022Size, VCPUs: 1, Kernel: k()},
			"Kernel specified but OVMF metadata doesn't include SNP_KERNEL_HASHES section: this firmware has the SEV hashes table (SEV and SEV-ES direct boot) but no SNP_KERNEL_HASHES metadata section (like an OvmfPkg/AmdSev build of edk2 2022.11)"},
		{"kernel sev no table", MeasureInput{Mode: ModeSEV, Firmware: fw, FirmwareSize: size, Kernel: k()},
			"Kernel specified but OVMF doesn't support kernel/initrd/cmdline measurement"},
		{"ovmf hash wrong length", MeasureInput{Firmware: fw, FirmwareSize: size, VCPUs: 1, OVMFHash: []byte{1, 2}}, "must be 48 bytes"},
		{"ovmf hash not snp", MeasureInput{Mode: ModeSEV, Firmware: fw, FirmwareSize: size, OVMFHash: make([]byte, 48)}, "only works with SNP"},
		{"svsm not qemu", MeasureInput{Mode: ModeSNPSVSM, Firmware: fw, FirmwareSize: size, VCPUs: 1, VMM: VMMEC2}, "only implemented for QEMU"},
		{"svsm missing", MeasureInput{Mode: ModeSNPSVSM, Firmware: fw, FirmwareSize: size, VCPUs: 1}, "requires an SVSM image"},
		{"svsm without info", MeasureInput{Mode: ModeSNPSVSM, Firmware: fw, FirmwareSize: size, VCPUs: 1, SVSM: bytes.NewReader(amd), SVSMSize: 4096}, "SVSM_INFO_GUID"},
		{"no reset block", MeasureInput{Firmware: bytes.NewReader(snptest.OVMF(snptest.OVMFOptions{Sections: snptest.AmdSevSections})), FirmwareSize: 4096, VCPUs: 1}, "SEV_ES_RESET_BLOCK_GUID"},
		{"no reset block 2 vcpus", MeasureInput{Firmware: bytes.NewReader(snptest.OVMF(snptest.OVMFOptions{ResetEIP: 0})), FirmwareSize: 4096, VCPUs: 1}, "SEV_ES_RESET_BLOCK_GUID"},
		{"no footer snp", MeasureInput{Firmware: bytes.NewReader(make([]byte, 4096)), FirmwareSize: 4096, VCPUs: 1}, "no OVMF footer table"},
		{"hashes section not one page", MeasureInput{Firmware: bytes.NewReader(snptest.OVMF(snptest.OVMFOptions{ResetEIP: 0x80b004, HashTableGPA: 0x810c00,
			Sections: []snptest.Section{{GPA: 0x810000, Size: 0x2000, Type: 0x10}}})), FirmwareSize: 4096, VCPUs: 1, Kernel: k()}, "want exactly one page"},
		{"hashes table past page", MeasureInput{Firmware: bytes.NewReader(snptest.OVMF(snptest.OVMFOptions{ResetEIP: 0x80b004, HashTableGPA: 0x810fa0,
			Sections: []snptest.Section{{GPA: 0x810000, Size: 0x1000, Type: 0x10}}})), FirmwareSize: 4096, VCPUs: 1, Kernel: k()}, "does not fit in the page"},
		{"kernel hashes no table entry", MeasureInput{Firmware: bytes.NewReader(snptest.OVMF(snptest.OVMFOptions{ResetEIP: 0x80b004,
			Sections: []snptest.Section{{GPA: 0x810000, Size: 0x1000, Type: 0x10}}})), FirmwareSize: 4096, VCPUs: 1, Kernel: k()}, "SEV_HASH_TABLE_RV_GUID"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.in.FirmwareSize == 0 && tc.in.Firmware != nil {
				if r, ok := tc.in.Firmware.(*bytes.Reader); ok {
					tc.in.FirmwareSize = r.Size()
				}
			}
			if tc.name == "no reset block 2 vcpus" {
				tc.in.VCPUs = 2
			}
			m, err := Measure(tc.in)
			if err == nil {
				t.Fatalf("measured %x, want error %q", m.Digest, tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("error %q, want one line containing %q", err, tc.want)
			}
		})
	}
	// The kernel error is also recognisable with errors.Is.
	_, err := Measure(MeasureInput{Firmware: fw, FirmwareSize: size, VCPUs: 1, Kernel: k()})
	if !errors.Is(err, ErrNoKernelHashes) {
		t.Fatalf("%v is not ErrNoKernelHashes", err)
	}
}

// TestSEVHashesTable checks the table and page against the reference's bytes.
func TestSEVHashesTable(t *testing.T) {
	kernel, err := os.ReadFile(filepath.Join("..", "testdata", "inputs", "kernel-synthetic.bin"))
	if err != nil {
		t.Fatal(err)
	}
	initrd, err := os.ReadFile(filepath.Join("..", "testdata", "inputs", "initrd-synthetic.bin"))
	if err != nil {
		t.Fatal(err)
	}
	h, err := HashDirectBoot(bytes.NewReader(kernel), bytes.NewReader(initrd), "console=ttyS0 loglevel=7")
	if err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadFile(filepath.Join("..", "testdata", "inputs", "sev-hashes-table-synthetic-kernel+initrd+append.bin"))
	if !bytes.Equal(h.Table(), want) || len(want) != SEVHashTableSize {
		t.Fatalf("table differs:\n%x\n%x", h.Table(), want)
	}
	page, err := h.Page(0xc00)
	if err != nil {
		t.Fatal(err)
	}
	want, _ = os.ReadFile(filepath.Join("..", "testdata", "inputs", "sev-hashes-page-synthetic-kernel+initrd+append-offset0xc00.bin"))
	if !bytes.Equal(page, want) {
		t.Fatal("page differs")
	}
	if _, err := h.Page(PageSize - SEVHashTableSize + 1); err == nil {
		t.Fatal("table past the page end accepted")
	}
	_, err = HashDirectBoot(io.NewSectionReader(&failingReader{bytes.NewReader(kernel), 0}, 0, 100), nil, "")
	if err == nil || !strings.HasPrefix(err.Error(), "hashing kernel: ") {
		t.Fatalf("kernel read error: %v", err)
	}
}

// TestMeasureOutputs checks the side outputs: file digests, OVMF digest, direct-boot
// hashes, and the logged updates' grouping.
func TestMeasureOutputs(t *testing.T) {
	fw, size := trixie(t)
	raw, err := os.ReadFile(filepath.Join("..", "testdata", "firmware", "ovmf-trixie-2025.02.fd"))
	if err != nil {
		t.Fatal(err)
	}
	m, err := Measure(MeasureInput{Firmware: fw, FirmwareSize: size, VCPUs: 3, VCPUSig: 0x800f12, GuestFeatures: 1, Log: true})
	if err != nil {
		t.Fatal(err)
	}
	s256, s384 := sha256.Sum256(raw), sha512.Sum384(raw)
	if !bytes.Equal(m.FirmwareSHA256, s256[:]) || !bytes.Equal(m.FirmwareSHA384, s384[:]) {
		t.Fatal("file digests differ")
	}
	ovmf, err := Measure(MeasureInput{Mode: ModeSNPOVMFHash, Firmware: fw, FirmwareSize: size, SkipFileDigests: true})
	if err != nil {
		t.Fatal(err)
	}
	if ovmf.FirmwareSHA256 != nil || ovmf.FirmwareSHA384 != nil {
		t.Fatal("file digests computed despite SkipFileDigests")
	}
	if !bytes.Equal(ovmf.Digest, m.OVMFDigest) {
		t.Fatal("OVMFDigest differs from snp:ovmf-hash")
	}
	seeded, err := Measure(MeasureInput{Firmware: fw, FirmwareSize: size, VCPUs: 3, VCPUSig: 0x800f12, GuestFeatures: 1, OVMFHash: ovmf.Digest})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(seeded.Digest, m.Digest) || !bytes.Equal(seeded.FirmwareSHA384, s384[:]) {
		t.Fatal("--snp-ovmf-hash path differs")
	}
	if m.KernelSHA256 != nil || m.APVMSA == nil || !bytes.Equal(m.VMSAPage(2), m.APVMSA) {
		t.Fatal("kernel hashes without a kernel, or AP VMSA missing")
	}
	groups := GroupUpdates(m.Updates)
	// firmware, SEC_MEM x2, SECRETS, CPUID, CAA, SEC_MEM, VMSA
	wantTypes := []PageType{PageNormal, PageZero, PageZero, PageSecrets, PageCPUID, PageZero, PageVMSA}
	if len(groups) != len(wantTypes) {
		t.Fatalf("%d groups: %+v", len(groups), groups)
	}
	total := 0
	for i, g := range groups {
		if g.Type != wantTypes[i] {
			t.Fatalf("group %d is %s, want %s", i, g.Type, wantTypes[i])
		}
		total += g.Count
	}
	if groups[0].Count != int(size/PageSize) || groups[6].Count != 3 || total != len(m.Updates) {
		t.Fatalf("counts: %+v", groups)
	}
	if !bytes.Equal(groups[6].DigestAfter[:], m.Digest) {
		t.Fatal("last group's digest is not the result")
	}
}

func TestCPUSignature(t *testing.T) {
	for name, want := range map[string]uint32{
		"EPYC": 0x800f12, "EPYC-v4": 0x800f12, "EPYC-Rome": 0x830f10, "EPYC-Milan": 0xa00f11,
		"EPYC-Milan-v2": 0xa00f11, "EPYC-Genoa": 0xa10f10, "EPYC-Turin": 0xb00f00,
	} {
		got, err := CPUSignature(name)
		if err != nil || got != want {
			t.Errorf("%s: %#x, %v; want %#x", name, got, err, want)
		}
	}
	if CPUSig(14, 1, 2) != 0x0e12 || CPUSig(23, 1, 2) != 0x800f12 {
		t.Fatal("cpu_sig vectors of the reference's tests")
	}
	for _, bad := range []string{"", "epyc-v4", "EPYC-v9", "Skylake"} {
		if sig, err := CPUSignature(bad); err == nil {
			t.Errorf("%q accepted as %#x", bad, sig)
		}
	}
	if _, err := CPUSignature("epyc-milan"); err == nil || !strings.Contains(err.Error(), `did you mean "EPYC-Milan"`) {
		t.Errorf("no hint for case: %v", err)
	}
	if len(CPUTypes()) < 16 {
		t.Fatal(CPUTypes())
	}
}

func TestParseEnums(t *testing.T) {
	for _, s := range []string{"sev", "seves", "snp", "snp:ovmf-hash", "snp:svsm"} {
		m, err := ParseMode(s)
		if err != nil || m.String() != s {
			t.Fatalf("%s: %v %v", s, m, err)
		}
	}
	if _, err := ParseMode("csv"); err == nil {
		t.Fatal("mode csv accepted")
	}
	for s, want := range map[string]VMMType{"QEMU": VMMQEMU, "qemu": VMMQEMU, "ec2": VMMEC2, "GCE": VMMGCE} {
		v, err := ParseVMMType(s)
		if err != nil || v != want {
			t.Fatalf("%s: %v %v", s, v, err)
		}
	}
	if _, err := ParseVMMType("azure"); err == nil {
		t.Fatal("vmm azure accepted")
	}
}

// FuzzParseNames covers the parsers of user-given names (modes, VMM types, VMSA
// variants, vCPU models): no panic, and whatever parses round-trips.
func FuzzParseNames(f *testing.F) {
	for _, s := range []string{"snp", "snp:svsm", "QEMU", "gce", "ec2-rdx0", "EPYC-v4", "epyc-milan", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if m, err := ParseMode(s); err == nil && m.String() != s {
			t.Fatalf("mode %q round-trips to %q", s, m)
		}
		if v, err := ParseVMMType(s); err == nil && !strings.EqualFold(v.String(), s) {
			t.Fatalf("vmm %q round-trips to %q", s, v)
		}
		if v, err := ParseVMSAVariant(s); err == nil && v.String() != s {
			t.Fatalf("variant %q round-trips to %q", s, v)
		}
		if sig, err := CPUSignature(s); err == nil && sig == 0 {
			t.Fatalf("vCPU type %q has signature 0", s)
		} else if err != nil && strings.Contains(err.Error(), "\n") {
			t.Fatalf("multi-line error %q", err)
		}
	})
}
