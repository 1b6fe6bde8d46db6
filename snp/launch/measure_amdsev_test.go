package launch

import (
	"bytes"
	"crypto/sha512"
	"encoding/binary"
	"encoding/hex"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// The real OvmfPkg/AmdSev builds committed in snp/testdata/firmware (AMDSEV-PROVENANCE.txt
// in shared/testdata/snp/firmware says how they were built from Debian's edk2 sources).
const (
	amdSev2025 = "ovmf-amdsev-debian-2025.02.fd"
	amdSev2022 = "ovmf-amdsev-debian-2022.11.fd"
)

// TestParseAmdSevDebianBuilds: 2025.02 has the SNP_KERNEL_HASHES section (last in the
// table) and the hashes table inside it; 2022.11 has the hashes table (SEV, SEV-ES) but
// no such section.
func TestParseAmdSevDebianBuilds(t *testing.T) {
	for _, tc := range []struct {
		file     string
		tableGPA uint32
		want     []MetadataSection
	}{
		{amdSev2025, 0x810c00, []MetadataSection{
			{0x800000, 0x9000, SectionSNPSecMem}, {0x80a000, 0x3000, SectionSNPSecMem}, {0x80d000, 0x1000, SectionSNPSecrets},
			{0x80e000, 0x1000, SectionCPUID}, {0x80f000, 0x1000, SectionSVSMCAA}, {0x811000, 0xf000, SectionSNPSecMem},
			{0x810000, 0x1000, SectionSNPKernelHashes}}},
		{amdSev2022, 0x80cc00, []MetadataSection{
			{0x800000, 0x9000, SectionSNPSecMem}, {0x80a000, 0x4000, SectionSNPSecMem}, {0x80e000, 0x1000, SectionSNPSecrets},
			{0x80f000, 0x1000, SectionCPUID}, {0x810000, 0x10000, SectionSNPSecMem}}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			f, size := committedFirmware(t, tc.file)
			fw, err := ParseFirmware(f, size)
			if err != nil {
				t.Fatal(err)
			}
			got := fw.Sections()
			if len(got) != len(tc.want) {
				t.Fatalf("sections %+v", got)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Errorf("section %d: %+v, want %+v", i, got[i], tc.want[i])
				}
			}
			gpa, err := fw.SEVHashesTableGPA()
			if err != nil || gpa != tc.tableGPA || !fw.SEVHashesTableSupported() {
				t.Errorf("hashes table at %#x (%v)", gpa, err)
			}
			if fw.HasKernelHashes() != (tc.file == amdSev2025) {
				t.Errorf("HasKernelHashes %v", fw.HasKernelHashes())
			}
		})
	}
}

// loadAmdSevVectors reads vectors-amdsev.tsv: rows from the reference tool
// ("sev-snp-measure ...", copied from AMDSEV-PROVENANCE.txt) and snpctl's own
// ("snpctl measure ...", each naming its cross-check in the source column).
func loadAmdSevVectors(t *testing.T) []vectorRow {
	var out []vectorRow
	for _, r := range readTSV(t, filepath.Join("..", "testdata", "vectors-amdsev.tsv")) {
		if len(r) != 9 || r[8] == "" {
			t.Fatalf("row %q: want 9 columns with a source", r)
		}
		w, err := splitWords(r[4])
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case len(w) > 1 && w[0] == "sev-snp-measure":
			w = w[1:]
		case len(w) > 2 && w[0] == "snpctl" && w[1] == "measure":
			w = w[2:]
		default:
			t.Fatalf("row %s: command %q is neither sev-snp-measure nor snpctl measure", r[0], r[4])
		}
		rc, _ := strconv.Atoi(r[5])
		out = append(out, vectorRow{name: r[0], args: w, rc: rc, stdout: r[6], stderr: r[7]})
	}
	return out
}

// TestVectorsAmdSev reproduces every row of vectors-amdsev.tsv.
func TestVectorsAmdSev(t *testing.T) {
	dir := filepath.Join("..", "testdata")
	rows := loadAmdSevVectors(t)
	if len(rows) < 8 {
		t.Fatalf("only %d rows", len(rows))
	}
	for _, v := range rows {
		t.Run(v.name, func(t *testing.T) { runVector(t, dir, v) })
	}
}

// TestAmdSevKernelDigestAnchored cross-checks the SNP digest of a kernel, initrd and
// command line on the real 2025.02 AmdSev firmware against the reference tool, which
// was never run on these inputs with this firmware: its digest without a kernel
// (vectors-amdsev.tsv, from AMDSEV-PROVENANCE.txt) fixes every update before and after
// the kernel-hashes page, and its hashes page for the same inputs (inputs/sev-hashes-
// page-synthetic-kernel+initrd+append-offset0xc00.bin, table at 0xc00 as in this
// firmware) fixes that page. The PAGE_INFO chain is replayed here by hand (SNP ABI
// table 67), independently of gctx.update.
func TestAmdSevKernelDigestAnchored(t *testing.T) {
	const refNoKernel = "fd710d3d57b92aeef4ccc307b3769547ebfa2e423704796fd705236fe3868104cf59079e6d7a8863a82a89507b90c995"
	fw, size := committedFirmware(t, amdSev2025)
	base := MeasureInput{Firmware: fw, FirmwareSize: size, VCPUs: 1, VCPUSig: 0x800f12, GuestFeatures: 1, SkipFileDigests: true}
	in := base
	in.Log = true
	m0, err := Measure(in)
	if err != nil {
		t.Fatal(err)
	}
	if hex.EncodeToString(m0.Digest) != refNoKernel {
		t.Fatalf("no-kernel digest %x is not the reference's", m0.Digest)
	}
	parsed, err := ParseFirmware(fw, size)
	if err != nil {
		t.Fatal(err)
	}
	if gpa, err := parsed.SEVHashesTableGPA(); err != nil || gpa&(PageSize-1) != 0xc00 {
		t.Fatalf("hashes table at %#x (%v): the reference page has it at offset 0xc00", gpa, err)
	}
	page, err := os.ReadFile(filepath.Join("..", "testdata", "inputs", "sev-hashes-page-synthetic-kernel+initrd+append-offset0xc00.bin"))
	if err != nil {
		t.Fatal(err)
	}
	// Replay: every update of the no-kernel launch, except that the SNP_KERNEL_HASHES
	// page (0x810000, measured ZERO without a kernel) becomes a NORMAL page holding the
	// reference's hashes page.
	var ld [48]byte
	replaced := 0
	for _, u := range m0.Updates {
		typ, contents := u.Type, u.Contents
		if u.GPA == 0x810000 {
			if u.Type != PageZero {
				t.Fatalf("update at 0x810000 is %s, want ZERO without a kernel", u.Type)
			}
			typ, contents, replaced = PageNormal, sha512.Sum384(page), replaced+1
		}
		var pi [112]byte
		copy(pi[0:48], ld[:])
		copy(pi[48:96], contents[:])
		binary.LittleEndian.PutUint16(pi[96:98], 112)
		pi[98] = byte(typ)
		binary.LittleEndian.PutUint64(pi[104:112], u.GPA)
		ld = sha512.Sum384(pi[:])
	}
	if replaced != 1 {
		t.Fatalf("replaced %d updates, want the one kernel-hashes page", replaced)
	}
	k, err := os.ReadFile(filepath.Join("..", "testdata", "inputs", "kernel-synthetic.bin"))
	if err != nil {
		t.Fatal(err)
	}
	i, err := os.ReadFile(filepath.Join("..", "testdata", "inputs", "initrd-synthetic.bin"))
	if err != nil {
		t.Fatal(err)
	}
	in = base
	in.Kernel, in.Initrd, in.Cmdline = bytes.NewReader(k), bytes.NewReader(i), "console=ttyS0 loglevel=7"
	m, err := Measure(in)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(m.Digest, ld[:]) {
		t.Fatalf("Measure gives %x,\nthe reference-anchored replay %x", m.Digest, ld)
	}
	// And the vector row records that digest.
	for _, v := range loadAmdSevVectors(t) {
		if v.name == "snp-amdsev-2025.02-kernel+initrd+append" {
			if !strings.EqualFold(v.stdout, hex.EncodeToString(ld[:])) || !strings.Contains(strings.Join(v.args, " "), "console=ttyS0 loglevel=7") {
				t.Fatalf("vector row %q does not hold the anchored digest %x", v.stdout, ld)
			}
			return
		}
	}
	t.Fatal("vectors-amdsev.tsv lacks snp-amdsev-2025.02-kernel+initrd+append")
}
