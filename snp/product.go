package snp

import (
	"crypto/x509"
	"errors"
	"fmt"
	"strings"

	"github.com/google/go-sev-guest/abi"
)

// AMD SEV-SNP product lines: the KDS path component, the ARK/ASK a chip chains to, and
// what go-sev-guest's check tool takes with -product.
const (
	ProductMilan = "Milan" // EPYC 7003 (Zen 3)
	ProductGenoa = "Genoa" // EPYC 9004/8004/97x4 (Zen 4)
	ProductTurin = "Turin" // EPYC 9005 (Zen 5)
)

// ProductLineFromCPUID names the product line of a chip from its CPUID(1).EAX family,
// model and stepping (as a version 3+ report carries it, or as the host reads it with
// CPUID on an SEV-SNP host): family 19h models 00h-0Fh Milan, 10h-1Fh and A0h-AEh Genoa,
// family 1Ah models 00h-11h Turin. These are the ranges Trustee's SNP verifier uses
// (deps/verifier/src/snp/mod.rs, get_processor_generation, at commit
// 78962cd416dcc8a32f9377e0066a28fe21420f69; its 0xA0..0xAF is Rust's exclusive range);
// go-sev-guest v0.15.0 knows only models 01h, 11h and 02h. Anything else is an error:
// the product line is never guessed.
func ProductLineFromCPUID(eax uint32) (string, error) {
	family, model, _ := abi.FmsFromCpuid1Eax(eax)
	switch {
	case family == 0x19 && model <= 0x0f:
		return ProductMilan, nil
	case family == 0x19 && (model >= 0x10 && model <= 0x1f || model >= 0xa0 && model <= 0xae):
		return ProductGenoa, nil
	case family == 0x1a && model <= 0x11:
		return ProductTurin, nil
	}
	return "", fmt.Errorf("CPUID family %#x model %#x is no known SEV-SNP product line (Milan, Genoa, Turin)", family, model)
}

// endorsementLine is the product line an endorsement key certificate (VCEK or VLEK)
// names: its KDS product-name extension (ClassifyCert) and its issuer's common name
// ("SEV-<line>" for a VCEK, "SEV-VLEK-<line>" for a VLEK) must agree.
func endorsementLine(c *x509.Certificate) (string, CertKind, error) {
	info, err := ClassifyCert(c)
	if err != nil {
		return "", "", err
	}
	if info.Kind != KindVCEK && info.Kind != KindVLEK {
		return "", "", fmt.Errorf("%s certificate %q is not an endorsement key (VCEK or VLEK)", info.Kind, info.Subject)
	}
	prefix := "SEV-"
	if info.Kind == KindVLEK {
		prefix = "SEV-VLEK-"
	}
	issuer := strings.TrimPrefix(c.Issuer.CommonName, prefix)
	if issuer == c.Issuer.CommonName || issuer != info.ProductLine {
		return "", "", fmt.Errorf("the %s's product name says %s but its issuer is %q", info.Kind, info.ProductLine, c.Issuer.CommonName)
	}
	return info.ProductLine, info.Kind, nil
}

// ProductLineOf determines the product line of the chip that produced rep from what the
// chip itself signed or AMD certified: the report's CPUID family/model (report version 3
// and later) and the endorsement key certificate (its product-name extension and issuer).
// Either may be nil. When both are given they must agree. It fails, with one line saying
// why, when they disagree, when one names no known product line, or when neither is
// given (a version 2 report without its VCEK cannot tell).
//
// It never looks at the guest's vCPU model, which the host chooses.
func ProductLineOf(rep *Report, endorsement *x509.Certificate) (string, error) {
	var fromReport, fromCert string
	var kind CertKind
	if rep != nil && rep.Version >= 3 && rep.CPUID1EAX != 0 {
		l, err := ProductLineFromCPUID(rep.CPUID1EAX)
		if err != nil {
			return "", fmt.Errorf("determining the product line: report: %w", err)
		}
		fromReport = l
	}
	if endorsement != nil {
		l, k, err := endorsementLine(endorsement)
		if err != nil {
			return "", fmt.Errorf("determining the product line: %w", err)
		}
		fromCert, kind = l, k
	}
	switch {
	case fromReport != "" && fromCert != "" && fromReport != fromCert:
		return "", fmt.Errorf("determining the product line: the report's CPUID says %s but it is endorsed by a %s %s", fromReport, fromCert, kind)
	case fromReport != "":
		return fromReport, nil
	case fromCert != "":
		return fromCert, nil
	case rep != nil && rep.Version < 3:
		return "", fmt.Errorf("determining the product line: a version %d report carries no CPUID and no VCEK or VLEK was given", rep.Version)
	case rep != nil:
		return "", errors.New("determining the product line: the report's CPUID fields are zero and no VCEK or VLEK was given")
	}
	return "", errors.New("determining the product line: neither a report nor a VCEK or VLEK was given")
}

// TCBComponents are the security patch levels of a TCB_VERSION (SEV-SNP ABI spec,
// TCB_VERSION), each 0..255.
type TCBComponents struct {
	// FMC is the Turin FMC firmware's SPL (HasFMC true); Milan and Genoa have none.
	FMC        uint8
	HasFMC     bool
	BootLoader uint8
	TEE        uint8
	SNP        uint8
	Microcode  uint8
}

// DecomposeTCB splits a 64-bit TCB_VERSION in productLine's layout. Milan and Genoa:
// BOOT_LOADER bits 7:0, TEE 15:8, SNP 55:48, MICROCODE 63:56. Turin: FMC 7:0, BOOT_LOADER
// 15:8, TEE 23:16, SNP 31:24, MICROCODE 63:56 (the layouts virtee's sev crate parses,
// which Trustee's claims come from). Another or empty product line is an error unless v
// is 0 (all components 0 in every layout).
func DecomposeTCB(productLine string, v uint64) (TCBComponents, error) {
	b := func(i uint) uint8 { return uint8(v >> (8 * i)) }
	switch productLine {
	case ProductMilan, ProductGenoa:
		return TCBComponents{BootLoader: b(0), TEE: b(1), SNP: b(6), Microcode: b(7)}, nil
	case ProductTurin:
		return TCBComponents{FMC: b(0), HasFMC: true, BootLoader: b(1), TEE: b(2), SNP: b(3), Microcode: b(7)}, nil
	}
	if v == 0 {
		return TCBComponents{}, nil
	}
	return TCBComponents{}, fmt.Errorf("decomposing TCB_VERSION %#016x: product line %q unknown (Turin lays it out differently from Milan and Genoa)", v, productLine)
}
