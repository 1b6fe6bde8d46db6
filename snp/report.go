package snp

import (
	"encoding/hex"
	"fmt"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
)

// ReportSize is the size in bytes of an SEV-SNP ATTESTATION_REPORT (SEV-SNP ABI spec,
// Table 23): 0x4A0 = 1184.
const ReportSize = abi.ReportSize

// Report is a decoded SEV-SNP attestation report (SEV-SNP ABI spec, ATTESTATION_REPORT).
// Byte fields are lowercase hex; TCB values are the 64-bit TCB_VERSION with its parts.
type Report struct {
	Version         uint32 `json:"version"`
	GuestSVN        uint32 `json:"guest_svn"`
	Policy          uint64 `json:"policy"`
	FamilyID        string `json:"family_id"`
	ImageID         string `json:"image_id"`
	VMPL            uint32 `json:"vmpl"`
	SignatureAlgo   uint32 `json:"signature_algo"`
	CurrentTCB      TCB    `json:"current_tcb"`
	PlatformInfo    uint64 `json:"platform_info"`
	AuthorKeyEn     bool   `json:"author_key_en"`
	MaskChipKey     bool   `json:"mask_chip_key"`
	SigningKey      string `json:"signing_key"` // "VCEK", "VLEK" or "None"
	ReportData      string `json:"report_data"`
	Measurement     string `json:"measurement"`
	HostData        string `json:"host_data"`
	IDKeyDigest     string `json:"id_key_digest"`
	AuthorKeyDigest string `json:"author_key_digest"`
	ReportID        string `json:"report_id"`
	ReportIDMA      string `json:"report_id_ma"`
	ReportedTCB     TCB    `json:"reported_tcb"`
	// CPUID1EAX is the masked CPUID(1).EAX family/model/stepping (version >= 3; 0 before).
	CPUID1EAX    uint32 `json:"cpuid_1_eax_fms,omitempty"`
	ChipID       string `json:"chip_id"`
	CommittedTCB TCB    `json:"committed_tcb"`
	CurrentBuild uint32 `json:"current_build"`
	CurrentMinor uint32 `json:"current_minor"`
	CurrentMajor uint32 `json:"current_major"`
	LaunchTCB    TCB    `json:"launch_tcb"`

	proto *spb.Report
	raw   []byte
}

// TCB is a TCB_VERSION: the raw 64-bit value and its security patch levels.
type TCB struct {
	Raw      uint64 `json:"raw"`
	BlSpl    uint8  `json:"bl_spl"`
	TeeSpl   uint8  `json:"tee_spl"`
	SnpSpl   uint8  `json:"snp_spl"`
	UcodeSpl uint8  `json:"ucode_spl"`
}

// NewTCB decomposes a 64-bit TCB_VERSION (Milan/Genoa layout).
func NewTCB(v uint64) TCB {
	p := kds.DecomposeTCBVersion(kds.TCBVersion(v))
	return TCB{Raw: v, BlSpl: p.BlSpl, TeeSpl: p.TeeSpl, SnpSpl: p.SnpSpl, UcodeSpl: p.UcodeSpl}
}

func (t TCB) String() string {
	return fmt.Sprintf("%#016x (bl %d, tee %d, snp %d, ucode %d)", t.Raw, t.BlSpl, t.TeeSpl, t.SnpSpl, t.UcodeSpl)
}

// DecodeReport decodes a raw attestation report of exactly ReportSize bytes. Reserved
// fields must be zero and the policy and signer info well formed (go-sev-guest's
// abi.ReportToProto); anything else is an error, never a partial Report.
func DecodeReport(raw []byte) (*Report, error) {
	if len(raw) != ReportSize {
		return nil, fmt.Errorf("decoding report: %d bytes, want %d", len(raw), ReportSize)
	}
	p, err := abi.ReportToProto(raw)
	if err != nil {
		return nil, fmt.Errorf("decoding report: %w", err)
	}
	si, err := abi.ParseSignerInfo(p.GetSignerInfo())
	if err != nil {
		return nil, fmt.Errorf("decoding report signer info: %w", err)
	}
	h := hex.EncodeToString
	r := &Report{
		Version:         p.GetVersion(),
		GuestSVN:        p.GetGuestSvn(),
		Policy:          p.GetPolicy(),
		FamilyID:        h(p.GetFamilyId()),
		ImageID:         h(p.GetImageId()),
		VMPL:            p.GetVmpl(),
		SignatureAlgo:   p.GetSignatureAlgo(),
		CurrentTCB:      NewTCB(p.GetCurrentTcb()),
		PlatformInfo:    p.GetPlatformInfo(),
		AuthorKeyEn:     si.AuthorKeyEn,
		MaskChipKey:     si.MaskChipKey,
		SigningKey:      si.SigningKey.String(),
		ReportData:      h(p.GetReportData()),
		Measurement:     h(p.GetMeasurement()),
		HostData:        h(p.GetHostData()),
		IDKeyDigest:     h(p.GetIdKeyDigest()),
		AuthorKeyDigest: h(p.GetAuthorKeyDigest()),
		ReportID:        h(p.GetReportId()),
		ReportIDMA:      h(p.GetReportIdMa()),
		ReportedTCB:     NewTCB(p.GetReportedTcb()),
		CPUID1EAX:       p.GetCpuid1EaxFms(),
		ChipID:          h(p.GetChipId()),
		CommittedTCB:    NewTCB(p.GetCommittedTcb()),
		CurrentBuild:    p.GetCurrentBuild(),
		CurrentMinor:    p.GetCurrentMinor(),
		CurrentMajor:    p.GetCurrentMajor(),
		LaunchTCB:       NewTCB(p.GetLaunchTcb()),
		proto:           p,
		raw:             append([]byte(nil), raw...),
	}
	return r, nil
}

// Proto returns go-sev-guest's representation of the report (do not modify it).
func (r *Report) Proto() *spb.Report { return r.proto }

// Raw returns the report's bytes (do not modify them).
func (r *Report) Raw() []byte { return r.raw }
