package launch

import (
	"encoding/binary"
	"fmt"
)

// VMMType selects the initial register state a VMM gives the vCPUs; it changes the
// VMSA pages and therefore the digest.
type VMMType int

// VMM types, as in the reference tool's --vmm-type.
const (
	VMMQEMU VMMType = iota // QEMU/KVM (the zero value)
	VMMEC2                 // Amazon EC2
	VMMGCE                 // Google Compute Engine
)

// String returns the reference tool's spelling (QEMU, ec2, gce).
func (v VMMType) String() string {
	switch v {
	case VMMQEMU:
		return "QEMU"
	case VMMEC2:
		return "ec2"
	case VMMGCE:
		return "gce"
	}
	return fmt.Sprintf("VMMType(%d)", int(v))
}

// ParseVMMType parses QEMU, ec2 or gce (any case).
func ParseVMMType(s string) (VMMType, error) {
	switch {
	case equalFold(s, "QEMU"):
		return VMMQEMU, nil
	case equalFold(s, "ec2"):
		return VMMEC2, nil
	case equalFold(s, "gce"):
		return VMMGCE, nil
	}
	return 0, fmt.Errorf("unknown VMM type '%s' (want QEMU, ec2 or gce)", s)
}

func equalFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// VMSAVariant selects an older initial VMSA that users still meet.
type VMSAVariant int

// VMSA variants.
const (
	// VMSACurrent is the reference tool's v0.0.13 state (the zero value).
	VMSACurrent VMSAVariant = iota
	// VMSAEC2RDXZero is EC2 with rdx=0, as the reference computed before v0.0.13.
	VMSAEC2RDXZero
	// VMSAQEMUPreINIT2 is QEMU with mxcsr=0 and x87 fcw=0: hosts whose KVM launches
	// with KVM_SEV_SNP_LAUNCH_START before KVM_SEV_INIT2 (Linux < 6.11, QEMU < 9.1).
	VMSAQEMUPreINIT2
)

// String names the variant as the --vmsa-variant flag does.
func (v VMSAVariant) String() string {
	switch v {
	case VMSACurrent:
		return "current"
	case VMSAEC2RDXZero:
		return "ec2-rdx0"
	case VMSAQEMUPreINIT2:
		return "qemu-pre-init2"
	}
	return fmt.Sprintf("VMSAVariant(%d)", int(v))
}

// ParseVMSAVariant parses current, ec2-rdx0 or qemu-pre-init2.
func ParseVMSAVariant(s string) (VMSAVariant, error) {
	for _, v := range []VMSAVariant{VMSACurrent, VMSAEC2RDXZero, VMSAQEMUPreINIT2} {
		if s == v.String() {
			return v, nil
		}
	}
	return 0, fmt.Errorf("unknown VMSA variant %q (want current, ec2-rdx0 or qemu-pre-init2)", s)
}

// DefaultVMSAGPA is the GPA the reference tool records for VMSA pages: (u64)-1 made
// page aligned and cut to 48 bits. Some Genoa setups use 0xFFFFFFFFFF000 (52 bits).
const DefaultVMSAGPA = 0xFFFFFFFFF000

// bspEIP is the reset vector of the bootstrap processor.
const bspEIP = 0xfffffff0

// Offsets of VMSA (struct sev_es_save_area, AMD APM vol. 2 table B-4) fields that the
// initial state sets.
const (
	vmsaES, vmsaCS, vmsaSS, vmsaDS, vmsaFS, vmsaGS = 0x00, 0x10, 0x20, 0x30, 0x40, 0x50
	vmsaGDTR, vmsaLDTR, vmsaIDTR, vmsaTR           = 0x60, 0x70, 0x80, 0x90
	vmsaEFER                                       = 0xd0
	vmsaCR4, vmsaCR0, vmsaDR7, vmsaDR6             = 0x148, 0x158, 0x160, 0x168
	vmsaRFLAGS, vmsaRIP                            = 0x170, 0x178
	vmsaGPAT                                       = 0x268
	vmsaRDX                                        = 0x310
	vmsaSEVFeatures                                = 0x3b0
	vmsaXCR0                                       = 0x3e8
	vmsaMXCSR                                      = 0x408
	vmsaFCW                                        = 0x410
)

// vmsaField describes one field for --explain diffs.
type vmsaField struct {
	name   string
	off    int
	size   int
	isSegs bool
}

var vmsaFields = []vmsaField{
	{"es", vmsaES, 16, true}, {"cs", vmsaCS, 16, true}, {"ss", vmsaSS, 16, true},
	{"ds", vmsaDS, 16, true}, {"fs", vmsaFS, 16, true}, {"gs", vmsaGS, 16, true},
	{"gdtr", vmsaGDTR, 16, true}, {"ldtr", vmsaLDTR, 16, true}, {"idtr", vmsaIDTR, 16, true},
	{"tr", vmsaTR, 16, true}, {"efer", vmsaEFER, 8, false}, {"cr4", vmsaCR4, 8, false},
	{"cr0", vmsaCR0, 8, false}, {"dr7", vmsaDR7, 8, false}, {"dr6", vmsaDR6, 8, false},
	{"rflags", vmsaRFLAGS, 8, false}, {"rip", vmsaRIP, 8, false}, {"g_pat", vmsaGPAT, 8, false},
	{"rdx", vmsaRDX, 8, false}, {"sev_features", vmsaSEVFeatures, 8, false},
	{"xcr0", vmsaXCR0, 8, false}, {"mxcsr", vmsaMXCSR, 4, false}, {"x87_fcw", vmsaFCW, 2, false},
}

// VMSAParams is the input of BuildVMSA.
type VMSAParams struct {
	EIP         uint32      // reset address: 0xfffffff0 for the BSP, the SEV-ES reset block's for APs
	SEVFeatures uint64      // VMSA SEV_FEATURES (guest features); 0 for SEV-ES
	VCPUSig     uint32      // guest CPUID signature, loaded into rdx (QEMU, SVSM)
	VMM         VMMType     // register conventions of the VMM
	Variant     VMSAVariant // older states; VMSACurrent unless a user asks
	SVSM        bool        // the COCONUT-SVSM initial state (32-bit flat, rip=EIP)
}

func putSeg(p []byte, off int, sel, attrib uint16, limit uint32, base uint64) {
	binary.LittleEndian.PutUint16(p[off:], sel)
	binary.LittleEndian.PutUint16(p[off+2:], attrib)
	binary.LittleEndian.PutUint32(p[off+4:], limit)
	binary.LittleEndian.PutUint64(p[off+8:], base)
}

func put64(p []byte, off int, v uint64) { binary.LittleEndian.PutUint64(p[off:], v) }

// BuildVMSA returns the 4096-byte initial VMSA page that the reference tool (v0.0.13)
// builds for p.
func BuildVMSA(p VMSAParams) []byte {
	page := make([]byte, PageSize)
	if p.SVSM {
		putSeg(page, vmsaES, 16, 0xc93, 0xffffffff, 0)
		putSeg(page, vmsaCS, 8, 0xc9b, 0xffffffff, 0)
		putSeg(page, vmsaSS, 16, 0xc93, 0xffffffff, 0)
		putSeg(page, vmsaDS, 16, 0xc93, 0xffffffff, 0)
		putSeg(page, vmsaFS, 16, 0xc93, 0xffffffff, 0)
		putSeg(page, vmsaGS, 0, 0x93, 0xffff, 0)
		putSeg(page, vmsaGDTR, 0, 0, 0xffff, 0)
		putSeg(page, vmsaIDTR, 0, 0, 0xffff, 0)
		putSeg(page, vmsaLDTR, 0, 0x82, 0xffff, 0)
		putSeg(page, vmsaTR, 0, 0x8b, 0xffff, 0)
		put64(page, vmsaEFER, 0x1000)
		put64(page, vmsaCR4, 0x40)
		put64(page, vmsaCR0, 0x11)
		put64(page, vmsaDR7, 0x400)
		put64(page, vmsaDR6, 0xffff0ff0)
		put64(page, vmsaRFLAGS, 0x2)
		put64(page, vmsaRIP, uint64(p.EIP))
		put64(page, vmsaGPAT, 0x7040600070406)
		put64(page, vmsaRDX, uint64(p.VCPUSig))
		put64(page, vmsaSEVFeatures, p.SEVFeatures)
		put64(page, vmsaXCR0, 0x1)
		binary.LittleEndian.PutUint32(page[vmsaMXCSR:], 0x1f80)
		return page
	}

	csFlags, ssFlags, trFlags := uint16(0x9b), uint16(0x93), uint16(0x8b)
	rdx := uint64(p.VCPUSig)
	gpat := uint64(0x7040600070406)
	mxcsr, fcw := uint32(0x1f80), uint16(0x37f)
	switch p.VMM {
	case VMMEC2:
		if p.EIP == bspEIP {
			csFlags = 0x9a
		}
		ssFlags, trFlags = 0x92, 0x83
		rdx = 0x600
		if p.Variant == VMSAEC2RDXZero {
			rdx = 0
		}
		mxcsr, fcw = 0, 0
	case VMMGCE:
		rdx = 0x600
		gpat = 0x70106
		mxcsr, fcw = 0, 0
	default:
		if p.Variant == VMSAQEMUPreINIT2 {
			mxcsr, fcw = 0, 0
		}
	}
	putSeg(page, vmsaES, 0, 0x93, 0xffff, 0)
	putSeg(page, vmsaCS, 0xf000, csFlags, 0xffff, uint64(p.EIP&0xffff0000))
	putSeg(page, vmsaSS, 0, ssFlags, 0xffff, 0)
	putSeg(page, vmsaDS, 0, 0x93, 0xffff, 0)
	putSeg(page, vmsaFS, 0, 0x93, 0xffff, 0)
	putSeg(page, vmsaGS, 0, 0x93, 0xffff, 0)
	putSeg(page, vmsaGDTR, 0, 0, 0xffff, 0)
	putSeg(page, vmsaIDTR, 0, 0, 0xffff, 0)
	putSeg(page, vmsaLDTR, 0, 0x82, 0xffff, 0)
	putSeg(page, vmsaTR, 0, trFlags, 0xffff, 0)
	put64(page, vmsaEFER, 0x1000) // KVM enables EFER.SVME
	put64(page, vmsaCR4, 0x40)    // KVM enables CR4.MCE
	put64(page, vmsaCR0, 0x10)
	put64(page, vmsaDR7, 0x400)
	put64(page, vmsaDR6, 0xffff0ff0)
	put64(page, vmsaRFLAGS, 0x2)
	put64(page, vmsaRIP, uint64(p.EIP&0xffff))
	put64(page, vmsaGPAT, gpat) // PAT MSR, AMD APM vol. 2 section A.3
	put64(page, vmsaRDX, rdx)
	put64(page, vmsaSEVFeatures, p.SEVFeatures)
	put64(page, vmsaXCR0, 0x1)
	binary.LittleEndian.PutUint32(page[vmsaMXCSR:], mxcsr)
	binary.LittleEndian.PutUint16(page[vmsaFCW:], fcw)
	return page
}

// VMSAFieldDiff is one field that differs between two VMSA pages.
type VMSAFieldDiff struct {
	Field string // field name as in Linux struct sev_es_save_area
	A, B  string // formatted values
}

func fmtField(p []byte, f vmsaField) string {
	b := p[f.off : f.off+f.size]
	if f.isSegs {
		return fmt.Sprintf("sel=%#x attrib=%#x limit=%#x base=%#x",
			binary.LittleEndian.Uint16(b[0:]), binary.LittleEndian.Uint16(b[2:]),
			binary.LittleEndian.Uint32(b[4:]), binary.LittleEndian.Uint64(b[8:]))
	}
	var v uint64
	for i := len(b) - 1; i >= 0; i-- {
		v = v<<8 | uint64(b[i])
	}
	return fmt.Sprintf("%#x", v)
}

// DiffVMSA lists the named fields that differ between VMSA pages a and b (both 4096
// bytes; other lengths give nil).
func DiffVMSA(a, b []byte) []VMSAFieldDiff {
	if len(a) != PageSize || len(b) != PageSize {
		return nil
	}
	var out []VMSAFieldDiff
	for _, f := range vmsaFields {
		x, y := fmtField(a, f), fmtField(b, f)
		if x != y {
			out = append(out, VMSAFieldDiff{Field: f.name, A: x, B: y})
		}
	}
	return out
}

// DescribeVMSA lists every named field of a VMSA page with a non-zero value.
func DescribeVMSA(p []byte) []VMSAFieldDiff {
	if len(p) != PageSize {
		return nil
	}
	zero := make([]byte, PageSize)
	return DiffVMSA(zero, p)
}
