package snptest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/binary"
	"encoding/pem"
	"fmt"
	"sync"
	"time"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	sgtest "github.com/google/go-sev-guest/testing"

	"github.com/snpd/snpd/snp/agentproto"
)

// Signer is a fake AMD-SP: go-sev-guest's test-only ARK/ASK/ASVK/VCEK/VLEK chain (its
// testing package) plus helpers to build and sign attestation reports with it.
type Signer struct {
	*sgtest.AmdSigner
	// ChipID is the VCEK's HWID (64 bytes).
	ChipID [64]byte
	// TCB is the TCB_VERSION in the VCEK's extensions.
	TCB uint64
	// ProductName is the fake chip's product name (SignerOptions.ProductName).
	ProductName string
}

// DefaultTCB is the TCB the fake VCEK certifies: bootloader 3, TEE 0, SNP 8, microcode 115
// (a Milan value seen in the field).
var DefaultTCB = kds.TCBParts{BlSpl: 3, TeeSpl: 0, SnpSpl: 8, UcodeSpl: 115}

// SignerOptions customize NewSigner. The zero value gives the default chip.
type SignerOptions struct {
	// Created is the certificates' creation time (zero: 2024-01-01). The VCEK is valid 7
	// years from it, the ARK/ASK 25.
	Created time.Time
	// ChipID is the fake chip's HWID (zero: bytes 1..64).
	ChipID [64]byte
	// NewVCEKKey generates a fresh VCEK key (another chip) instead of go-sev-guest's fixed one.
	NewVCEKKey bool
	// TCB overrides DefaultTCB.
	TCB *kds.TCBParts
	// ProductName is the chip's product name (empty: "Milan-B1"); its product line names
	// the test ARK and ASK ("ARK-Genoa", "SEV-Genoa" for "Genoa-B1"), with go-sev-guest's
	// same fixed test keys.
	ProductName string
}

// NewSigner builds a fake chip. The ARK/ASK keys are go-sev-guest's fixed test keys, so two
// signers share trusted roots (RootsPEM of either verifies both).
func NewSigner(o SignerOptions) (*Signer, error) {
	if o.Created.IsZero() {
		o.Created = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	}
	if o.ChipID == ([64]byte{}) {
		for i := range o.ChipID {
			o.ChipID[i] = byte(i + 1)
		}
	}
	tcb := DefaultTCB
	if o.TCB != nil {
		tcb = *o.TCB
	}
	product := o.ProductName
	if product == "" {
		product = "Milan-B1"
	}
	keys := sgtest.DefaultAmdKeys()
	if o.NewVCEKKey {
		k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("generating VCEK key: %w", err)
		}
		keys.Vcek = k
	}
	b := &sgtest.AmdSignerBuilder{
		Keys:             keys,
		ProductName:      product,
		CSPID:            "snpd-test",
		ArkCreationTime:  o.Created,
		AskCreationTime:  o.Created,
		AsvkCreationTime: o.Created,
		VcekCreationTime: o.Created,
		VlekCreationTime: o.Created,
		HWID:             o.ChipID,
		VcekCustom: sgtest.CertOverride{
			Extensions: sgtest.CustomExtensions(tcb, o.ChipID[:], "", product),
		},
		VlekCustom: sgtest.CertOverride{
			Extensions: sgtest.CustomExtensions(tcb, nil, "snpd-test", product),
		},
	}
	s, err := b.TestOnlyCertChain()
	if err != nil {
		return nil, fmt.Errorf("building the test-only AMD chain: %w", err)
	}
	v, err := kds.ComposeTCBParts(tcb)
	if err != nil {
		return nil, err
	}
	return &Signer{AmdSigner: s, ChipID: o.ChipID, TCB: uint64(v), ProductName: product}, nil
}

// Fields are the report fields a test controls; the rest are fixed (version 2, signature
// algorithm ECDSA P-384, firmware 1.55 build 21, all TCBs = Signer.TCB unless set).
type Fields struct {
	Measurement     [48]byte
	Policy          uint64
	HostData        [32]byte
	ReportData      [64]byte
	VMPL            uint32
	FamilyID        [16]byte
	ImageID         [16]byte
	IDKeyDigest     [48]byte
	AuthorKeyDigest [48]byte
	AuthorKeyEn     bool
	// SignWithVLEK signs with the VLEK instead of the VCEK.
	SignWithVLEK bool
	// ReportedTCB overrides the TCB in REPORTED_TCB only (0: Signer.TCB).
	ReportedTCB uint64
	// ChipID overrides CHIP_ID (zero: Signer.ChipID).
	ChipID [64]byte
	// Version3 makes a version 3 report carrying the Milan B1 family/model/stepping
	// (CPUID_FAM_ID 0x19, CPUID_MOD_ID 0x01, CPUID_STEP 0x1), which names the product line.
	Version3 bool
	// CPUID, when not zero, is the family, model and stepping (CPUID_FAM_ID, CPUID_MOD_ID,
	// CPUID_STEP at 0x188..0x18A) of a version 3 report instead of Milan B1's, e.g.
	// {0x19, 0x11, 0x1} for Genoa B1: a report claiming another product line than the
	// signer's. It implies Version3.
	CPUID [3]byte
	// PlatformInfo is PLATFORM_INFO (offset 0x40; bit 0 SMT_EN, bit 1 TSME_EN).
	PlatformInfo uint64
}

// Report builds and signs a raw ReportSize-byte attestation report (ABI layout, SEV-SNP ABI
// spec Table 23).
func (s *Signer) Report(f Fields) ([]byte, error) {
	r := make([]byte, abi.ReportSize)
	le := binary.LittleEndian
	le.PutUint32(r[0x00:], 2)
	if f.Version3 || f.CPUID != ([3]byte{}) {
		le.PutUint32(r[0x00:], 3)
		r[0x188], r[0x189], r[0x18A] = 0x19, 0x01, 0x01
		if f.CPUID != ([3]byte{}) {
			r[0x188], r[0x189], r[0x18A] = f.CPUID[0], f.CPUID[1], f.CPUID[2]
		}
	}
	le.PutUint64(r[0x40:], f.PlatformInfo)
	le.PutUint64(r[0x08:], f.Policy)
	copy(r[0x10:0x20], f.FamilyID[:])
	copy(r[0x20:0x30], f.ImageID[:])
	le.PutUint32(r[0x30:], f.VMPL)
	le.PutUint32(r[0x34:], abi.SignEcdsaP384Sha384)
	tcb := s.TCB
	le.PutUint64(r[0x38:], tcb) // CURRENT_TCB
	signer := abi.VcekReportSigner
	if f.SignWithVLEK {
		signer = abi.VlekReportSigner
	}
	le.PutUint32(r[0x48:], abi.ComposeSignerInfo(abi.SignerInfo{SigningKey: signer, AuthorKeyEn: f.AuthorKeyEn}))
	copy(r[0x50:0x90], f.ReportData[:])
	copy(r[0x90:0xC0], f.Measurement[:])
	copy(r[0xC0:0xE0], f.HostData[:])
	copy(r[0xE0:0x110], f.IDKeyDigest[:])
	copy(r[0x110:0x140], f.AuthorKeyDigest[:])
	reported := tcb
	if f.ReportedTCB != 0 {
		reported = f.ReportedTCB
	}
	le.PutUint64(r[0x180:], reported)
	chip := s.ChipID
	if f.ChipID != ([64]byte{}) {
		chip = f.ChipID
	}
	if signer == abi.VcekReportSigner {
		copy(r[0x1A0:0x1E0], chip[:])
	}
	le.PutUint64(r[0x1E0:], tcb) // COMMITTED_TCB
	r[0x1E8], r[0x1E9], r[0x1EA] = 21, 55, 1
	r[0x1EC], r[0x1ED], r[0x1EE] = 21, 55, 1
	le.PutUint64(r[0x1F0:], tcb) // LAUNCH_TCB
	R, S, err := s.Sign(abi.SignedComponent(r))
	if err != nil {
		return nil, fmt.Errorf("signing report: %w", err)
	}
	if err := abi.SetSignature(R, S, r); err != nil {
		return nil, fmt.Errorf("signing report: %w", err)
	}
	return r, nil
}

// CertTable returns the GHCB certificate table (ARK, ASK, VCEK, VLEK, ASVK) as a guest gets it.
func (s *Signer) CertTable() []byte {
	b, err := s.CertTableBytes()
	if err != nil {
		panic(err) // only fails on malformed GUID constants
	}
	return b
}

// RootsPEM returns the ASK, ASVK and ARK as PEM: the trusted roots for this fake chip.
func (s *Signer) RootsPEM() []byte {
	return PEM(s.Ask, s.Asvk, s.Ark)
}

// PEM encodes certificates as PEM CERTIFICATE blocks.
func PEM(certs ...*x509.Certificate) []byte {
	var b bytes.Buffer
	for _, c := range certs {
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return b.Bytes()
}

// PEMDER encodes one DER certificate as PEM.
func PEMDER(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// AgentSource is a fake guest report device for agentproto.Serve: each request is answered
// with a report built from Fields with REPORT_DATA set to the request's binding, signed
// by Signer, and the signer's certificate table (nil CertTable: the table is omitted).
type AgentSource struct {
	Signer *Signer
	Fields Fields
	// OmitCerts leaves the certificate table out (a KVM host before Linux 7.0).
	OmitCerts bool

	mu          sync.Mutex
	provisioned *agentproto.Provision
}

// Provision implements agentproto.Provisioner.
func (a *AgentSource) Provision(p *agentproto.Provision) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.provisioned = p
	return nil
}

// Provisioned returns the last Provision received (nil: none).
func (a *AgentSource) Provisioned() *agentproto.Provision {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.provisioned
}

// GetReport implements agentproto.ReportSource.
func (a *AgentSource) GetReport(reportData [64]byte) ([]byte, []byte, error) {
	f := a.Fields
	f.ReportData = reportData
	r, err := a.Signer.Report(f)
	if err != nil {
		return nil, nil, err
	}
	if a.OmitCerts {
		return r, nil, nil
	}
	return r, a.Signer.CertTable(), nil
}
