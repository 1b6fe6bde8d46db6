package snp

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	"github.com/google/go-sev-guest/validate"
	"github.com/google/go-sev-guest/verify"
	"github.com/google/go-sev-guest/verify/trust"

	"github.com/snpd/snpd/snp/agentproto"
)

// Check names, in the order a Verdict lists them.
const (
	CheckConfidential    = "confidential"      // the launch record is an SEV-SNP launch (Expected.NotConfidential)
	CheckReportFormat    = "report-format"     // the report decodes (size, reserved fields)
	CheckCertificate     = "certificate-chain" // VCEK/VLEK -> ASK/ASVK -> trusted ARK, valid now
	CheckSignature       = "signature"         // ECDSA P-384 signature by the VCEK/VLEK
	CheckMeasurement     = "measurement"       // MEASUREMENT equals the recorded launch digest
	CheckPolicy          = "policy"            // POLICY equals the recorded policy
	CheckPolicyCeiling   = "policy-ceiling"    // POLICY within the host policy's ceiling
	CheckHostData        = "host-data"         // HOST_DATA equals the recorded host data
	CheckReportData      = "report-data"       // REPORT_DATA binds the verifier's nonce
	CheckVMPL            = "vmpl"              // the report was requested at VMPL 0
	CheckIDKeys          = "id-keys"           // ID/author key digests match the recorded ID block
	CheckMinimumTCB      = "tcb-minimum"       // REPORTED_TCB >= the policy's minimum
	CheckCertificateTCB  = "tcb-certificate"   // REPORTED_TCB and CHIP_ID equal the VCEK's
	CheckGoSevGuestValid = "go-sev-guest-validate"
)

// Expected is what a report must show: the launch record's values and the host policy.
type Expected struct {
	// Measurement is the recorded launch digest (48 bytes). Required.
	Measurement []byte
	// Policy is the recorded SNP guest policy; the report's must be equal.
	Policy uint64
	// PolicyCeiling is the most permissive guest policy the host policy allows (go-sev-guest
	// semantics: bits like debug/SMT/migrate_ma may be set only if set here, single_socket
	// etc. must be set if set here, ABI version at least this). Nil: Policy is the ceiling.
	PolicyCeiling *uint64
	// HostData is the recorded HOST_DATA (32 bytes); nil means none was given, so the
	// report's must be all zero.
	HostData []byte
	// IDKeyDigest and AuthorKeyDigest are the SHA-384 digests (48 bytes) of the ID and author
	// public keys of the recorded ID block; nil IDKeyDigest means no ID block was used and
	// the report's digests must be zero; nil AuthorKeyDigest means no author key.
	IDKeyDigest, AuthorKeyDigest []byte
	// Nonce and UserData are what the verifier sent; REPORT_DATA must equal
	// agentproto.BindReportData(Nonce, UserData). ReportData, when non-nil (64 bytes),
	// replaces that binding with an exact value (reports obtained by other means).
	Nonce, UserData []byte
	ReportData      []byte
	// MinimumTCB is the least acceptable REPORTED_TCB, component-wise (0: no minimum).
	MinimumTCB uint64
	// VMPL is the required VMPL (0 unless a deployment runs an SVSM).
	VMPL uint32
	// ProductLine is the product line of the chip the launch record says the guest runs
	// on ("Milan", "Genoa", "Turin"; ProductLineFromCPUID of the host's CPUID); the
	// report's endorsement key must chain to it. Empty: not checked (the report's own
	// CPUID is still checked against its key).
	ProductLine string
	// NotConfidential, when not empty, says why the launch record is not confidential
	// ("the launch record is not confidential (platform none)"): such a guest ran without
	// SEV-SNP, so no report can vouch for it, and the verdict's "confidential" check fails
	// with this reason, whatever the report shows, unless AllowNonConfidential. Empty: the
	// record is an SEV-SNP launch.
	NotConfidential string
	// AllowNonConfidential is the caller's explicit request to verify a record that is
	// not confidential: the "confidential" check then passes, saying so, and
	// Verdict.Confidential stays false.
	AllowNonConfidential bool
}

// Check is the result of one named check.
type Check struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Reason string `json:"reason"`
}

// Verdict is the result of Verify: OK only when every check passed.
type Verdict struct {
	OK bool `json:"ok"`
	// Confidential is false when the launch record is not confidential
	// (Expected.NotConfidential), even when the caller allowed that and OK is true.
	Confidential bool    `json:"confidential"`
	Checks       []Check `json:"checks"`
	// Report is the decoded report (nil when it did not decode).
	Report *Report `json:"report,omitempty"`
	// Endorsement describes the VCEK/VLEK used (nil when none was found).
	Endorsement *CertInfo `json:"endorsement,omitempty"`
	// ChainPEM is the endorsement key and its trusted ASK/ASVK and ARK, PEM (empty when the
	// chain did not verify).
	ChainPEM string `json:"chain_pem,omitempty"`
}

// Failed returns the checks that did not pass.
func (v *Verdict) Failed() []Check {
	var out []Check
	for _, c := range v.Checks {
		if !c.OK {
			out = append(out, c)
		}
	}
	return out
}

// Get returns the check named name (zero Check when absent).
func (v *Verdict) Get(name string) Check {
	for _, c := range v.Checks {
		if c.Name == name {
			return c
		}
	}
	return Check{}
}

func (v *Verdict) add(name string, err error, okReason string) {
	c := Check{Name: name, OK: err == nil, Reason: okReason}
	if err != nil {
		c.Reason = err.Error()
	}
	v.Checks = append(v.Checks, c)
}

// Verifier verifies reports offline: the chain comes from the report's certificate table
// or from Cache, checked against Roots; AMD's key server is asked only when Getter is set.
// Verified endorsement-key chains are cached in memory until the earliest NotAfter, so a
// steady stream of reports from known chips costs one ECDSA verification each. The cache
// holds only what depends on the certificate bytes and the Verifier's fixed roots alone
// (parsing, the KDS certificate profile, the RSA-PSS signatures VCEK <- ASK <- ARK): it
// can never change a verdict. Everything that involves the report or the clock runs for
// every report, cached chain or not: validity at Now, the signing key kind, the product
// line the report's CPUID names against the chain's, TCB and chip id against the VCEK,
// and the report's signature.
// Safe for concurrent use.
type Verifier struct {
	// Roots are the trusted AMD roots (nil: DefaultRoots).
	Roots *Roots
	// Cache supplies VCEKs the report's certificate table lacks (nil: none).
	Cache *CertCache
	// Getter fetches missing VCEKs from AMD KDS (nil: never; the default, fail closed).
	Getter trust.HTTPSGetter
	// Now returns the time certificates must be valid at (nil: time.Now).
	Now func() time.Time

	rootsOnce sync.Once
	roots     *Roots
	mu        sync.Mutex
	chains    map[[32]byte]chainEntry
}

type chainEntry struct {
	key       [32]byte
	fresh     bool             // verified now, not yet confirmed by go-sev-guest and cached
	signer    abi.ReportSigner // the signing key the report names (per report, not cached)
	cert      *x509.Certificate
	chainPEM  string
	info      *CertInfo
	notBefore time.Time
	notAfter  time.Time
}

// maxChainCache bounds the in-memory verified-chain cache (entries).
const maxChainCache = 1024

func (v *Verifier) trusted() *Roots {
	v.rootsOnce.Do(func() {
		v.roots = v.Roots
		if v.roots == nil {
			v.roots = DefaultRoots()
		}
	})
	return v.roots
}

func (v *Verifier) now() time.Time {
	if v.Now != nil {
		return v.Now()
	}
	return time.Now()
}

// Verify checks a raw report (ReportSize bytes) and the certificate table the guest gave
// with it (nil: none) against exp. It never returns a passing verdict for a report whose
// measurement differs from exp.Measurement, or when any check fails. Errors in the input
// become failed checks; Verify itself does not fail.
func (v *Verifier) Verify(ctx context.Context, raw, certTable []byte, exp Expected) *Verdict {
	vd := &Verdict{Confidential: exp.NotConfidential == ""}
	switch {
	case vd.Confidential:
		vd.add(CheckConfidential, nil, "the launch record is an SEV-SNP launch")
	case exp.AllowNonConfidential:
		vd.add(CheckConfidential, nil, exp.NotConfidential+"; verified only because the caller allowed a non-confidential record")
	default:
		vd.add(CheckConfidential, errors.New(exp.NotConfidential), "")
	}
	rep, err := DecodeReport(raw)
	vd.add(CheckReportFormat, err, fmt.Sprintf("%d-byte version %d report", len(raw), reportVersion(rep)))
	if err != nil {
		vd.finish()
		return vd
	}
	vd.Report = rep
	p := rep.Proto()
	now := v.now()

	// Endorsement key and chain: the chain may come from the cache of verified chains,
	// but what ties it to this report is checked for every report.
	ek, err := v.endorsementKey(ctx, p, certTable, now)
	if err == nil {
		err = ek.endorses(p)
	}
	if err == nil && exp.ProductLine != "" && ek.info.ProductLine != exp.ProductLine {
		err = fmt.Errorf("the report is endorsed by a %s %s but the launch record's host is a %s", ek.info.ProductLine, ek.info.Kind, exp.ProductLine)
	}
	if err != nil {
		vd.add(CheckCertificate, err, "")
		ek = nil
	} else {
		vd.Endorsement = ek.info
		vd.add(CheckCertificate, nil, fmt.Sprintf("%s %s chains to the trusted ARK-%s, valid until %s", ek.info.Kind, short(ek.info.SHA256), ek.info.ProductLine, ek.notAfter.UTC().Format(time.RFC3339)))
		vd.ChainPEM = ek.chainPEM
	}
	if ek == nil {
		vd.add(CheckSignature, errors.New("not checked: no trusted endorsement key"), "")
	} else {
		err := verify.SnpReportSignature(raw, ek.cert)
		if err == nil && ek.fresh {
			// First report from this chain: let go-sev-guest verify chain and signature
			// too (its KDS certificate-profile checks), offline, before caching it.
			err = v.goSevGuestVerify(p, ek, now)
			if err == nil {
				v.remember(ek)
			}
		}
		vd.add(CheckSignature, err, "ECDSA P-384 signature by the "+string(ek.info.Kind))
	}

	// Launch record.
	vd.add(CheckMeasurement, fieldEqual("MEASUREMENT", p.GetMeasurement(), exp.Measurement, 48, false), "equals the recorded launch digest")
	var perr error
	if p.GetPolicy() != exp.Policy {
		perr = fmt.Errorf("POLICY is %#x, the launch record says %#x", p.GetPolicy(), exp.Policy)
	}
	vd.add(CheckPolicy, perr, fmt.Sprintf("%#x as recorded", exp.Policy))
	ceiling := exp.Policy
	if exp.PolicyCeiling != nil {
		ceiling = *exp.PolicyCeiling
	}
	vd.add(CheckPolicyCeiling, policyWithin(p.GetPolicy(), ceiling), fmt.Sprintf("within %#x", ceiling))
	vd.add(CheckHostData, fieldEqual("HOST_DATA", p.GetHostData(), exp.HostData, 32, true), "as recorded")
	wantRD := exp.ReportData
	rdWhat := "binds the nonce"
	var rderr error
	switch {
	case wantRD != nil:
		rdWhat = "equals the expected REPORT_DATA"
		if len(wantRD) != 64 {
			rderr = fmt.Errorf("the expected REPORT_DATA is %d bytes, want 64", len(wantRD))
		} else if !bytes.Equal(p.GetReportData(), wantRD) {
			rderr = fmt.Errorf("REPORT_DATA %s… differs from the expected REPORT_DATA %s…", short(hex.EncodeToString(p.GetReportData())), short(hex.EncodeToString(wantRD)))
		}
	case len(exp.Nonce) == 0:
		rderr = errors.New("no nonce given: the report's freshness cannot be established")
	default:
		b, err := agentproto.BindReportData(exp.Nonce, exp.UserData)
		if err != nil {
			rderr = err
		} else if wantRD = b[:]; !bytes.Equal(p.GetReportData(), wantRD) {
			rderr = fmt.Errorf("REPORT_DATA %s… does not bind the nonce (want %s…)", short(hex.EncodeToString(p.GetReportData())), short(hex.EncodeToString(wantRD)))
		}
	}
	vd.add(CheckReportData, rderr, rdWhat)
	var verr error
	if p.GetVmpl() != exp.VMPL {
		verr = fmt.Errorf("VMPL is %d, want %d", p.GetVmpl(), exp.VMPL)
	}
	vd.add(CheckVMPL, verr, fmt.Sprintf("VMPL %d", exp.VMPL))
	vd.add(CheckIDKeys, idKeys(p, exp), idKeysOK(exp))
	var terr error
	if exp.MinimumTCB != 0 && !kds.TCBPartsLE(kds.DecomposeTCBVersion(kds.TCBVersion(exp.MinimumTCB)), kds.DecomposeTCBVersion(kds.TCBVersion(p.GetReportedTcb()))) {
		terr = fmt.Errorf("REPORTED_TCB %s is below the minimum %s", NewTCB(p.GetReportedTcb()), NewTCB(exp.MinimumTCB))
	}
	vd.add(CheckMinimumTCB, terr, fmt.Sprintf("%s >= %s", NewTCB(p.GetReportedTcb()), NewTCB(exp.MinimumTCB)))
	if ek == nil {
		vd.add(CheckCertificateTCB, errors.New("not checked: no trusted endorsement key"), "")
	} else {
		vd.add(CheckCertificateTCB, certMatchesReport(p, ek.info), "REPORTED_TCB and CHIP_ID match the "+string(ek.info.Kind))
	}

	// go-sev-guest's own validation with the same expectations: defense in depth, and it
	// adds its firmware consistency rules (committed vs current TCB and version).
	if ek == nil {
		vd.add(CheckGoSevGuestValid, errors.New("not checked: no trusted endorsement key"), "")
	} else {
		vd.add(CheckGoSevGuestValid, v.validate(p, ek, exp, ceiling, wantRD), "validate.SnpAttestation accepts the report")
	}
	vd.finish()
	return vd
}

func (vd *Verdict) finish() {
	vd.OK = len(vd.Checks) > 0
	for _, c := range vd.Checks {
		if !c.OK {
			vd.OK = false
		}
	}
	// Belt and braces: the measurement check must exist and pass for OK.
	if m := vd.Get(CheckMeasurement); !m.OK {
		vd.OK = false
	}
}

func reportVersion(r *Report) uint32 {
	if r == nil {
		return 0
	}
	return r.Version
}

func short(h string) string {
	if len(h) > 16 {
		return h[:16]
	}
	return h
}

func fieldEqual(name string, got, want []byte, size int, zeroIfNil bool) error {
	if want == nil {
		if zeroIfNil {
			if !allZero(got) {
				return fmt.Errorf("%s is %s, the launch record has none", name, hex.EncodeToString(got))
			}
			return nil
		}
		return fmt.Errorf("no expected %s", name)
	}
	if len(want) != size {
		return fmt.Errorf("expected %s is %d bytes, want %d", name, len(want), size)
	}
	if !bytes.Equal(got, want) {
		return fmt.Errorf("%s is %s, the launch record says %s", name, hex.EncodeToString(got), hex.EncodeToString(want))
	}
	return nil
}

func allZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

// policyWithin mirrors go-sev-guest's validatePolicy (unexported there) so the ceiling
// gets its own check and reason.
func policyWithin(got, ceiling uint64) error {
	p, err := abi.ParseSnpPolicy(got)
	if err != nil {
		return fmt.Errorf("POLICY %#x: %w", got, err)
	}
	c, err := abi.ParseSnpPolicy(ceiling)
	if err != nil {
		return fmt.Errorf("policy ceiling %#x: %w", ceiling, err)
	}
	var bad []string
	if uint16(c.ABIMajor)<<8|uint16(c.ABIMinor) > uint16(p.ABIMajor)<<8|uint16(p.ABIMinor) {
		bad = append(bad, fmt.Sprintf("ABI %d.%d below %d.%d", p.ABIMajor, p.ABIMinor, c.ABIMajor, c.ABIMinor))
	}
	flag := func(name string, set, allowed bool) {
		if set && !allowed {
			bad = append(bad, name+" allowed")
		}
	}
	need := func(name string, set, required bool) {
		if required && !set {
			bad = append(bad, name+" not enforced")
		}
	}
	flag("debug", p.Debug, c.Debug)
	flag("migrate_ma", p.MigrateMA, c.MigrateMA)
	flag("smt", p.SMT, c.SMT)
	flag("cxl_allowed", p.CXLAllowed, c.CXLAllowed)
	need("single_socket", p.SingleSocket, c.SingleSocket)
	need("mem_aes_256_xts", p.MemAES256XTS, c.MemAES256XTS)
	need("rapl_dis", p.RAPLDis, c.RAPLDis)
	need("ciphertext_hiding", p.CipherTextHidingDRAM, c.CipherTextHidingDRAM)
	need("page_swap_disable", p.PageSwapDisable, c.PageSwapDisable)
	if len(bad) > 0 {
		return fmt.Errorf("POLICY %#x exceeds the host policy ceiling %#x: %v", got, ceiling, bad)
	}
	return nil
}

func idKeys(p *spb.Report, exp Expected) error {
	si, err := abi.ParseSignerInfo(p.GetSignerInfo())
	if err != nil {
		return err
	}
	if exp.IDKeyDigest == nil {
		// Name exactly what the report carries that a launch without an ID block cannot.
		var got []string
		if !allZero(p.GetIdKeyDigest()) {
			got = append(got, "ID_KEY_DIGEST "+short(hex.EncodeToString(p.GetIdKeyDigest()))+"…")
		}
		if !allZero(p.GetAuthorKeyDigest()) {
			got = append(got, "AUTHOR_KEY_DIGEST "+short(hex.EncodeToString(p.GetAuthorKeyDigest()))+"…")
		}
		if si.AuthorKeyEn {
			got = append(got, "AUTHOR_KEY_EN set")
		}
		if len(got) > 0 {
			return fmt.Errorf("the launch record has no ID block but the report has %s", strings.Join(got, ", "))
		}
		return nil
	}
	if err := fieldEqual("ID_KEY_DIGEST", p.GetIdKeyDigest(), exp.IDKeyDigest, 48, false); err != nil {
		return err
	}
	if exp.AuthorKeyDigest == nil {
		if si.AuthorKeyEn {
			return errors.New("AUTHOR_KEY_EN is set but the launch record has no author key")
		}
		if !allZero(p.GetAuthorKeyDigest()) {
			return fmt.Errorf("AUTHOR_KEY_DIGEST is %s… but the launch record has no author key", short(hex.EncodeToString(p.GetAuthorKeyDigest())))
		}
		return nil
	}
	if !si.AuthorKeyEn {
		return errors.New("AUTHOR_KEY_EN is clear but the launch record has an author key")
	}
	return fieldEqual("AUTHOR_KEY_DIGEST", p.GetAuthorKeyDigest(), exp.AuthorKeyDigest, 48, false)
}

func idKeysOK(exp Expected) string {
	switch {
	case exp.IDKeyDigest == nil:
		return "no ID block: digests are zero"
	case exp.AuthorKeyDigest == nil:
		return "ID key digest as recorded"
	}
	return "ID and author key digests as recorded"
}

func certMatchesReport(p *spb.Report, info *CertInfo) error {
	if info.TCB != p.GetReportedTcb() {
		return fmt.Errorf("REPORTED_TCB %s differs from the %s's TCB %s", NewTCB(p.GetReportedTcb()), info.Kind, NewTCB(info.TCB))
	}
	if info.Kind == KindVCEK && !allZero(p.GetChipId()) && hex.EncodeToString(p.GetChipId()) != info.ChipID {
		return fmt.Errorf("CHIP_ID %s… is not the VCEK's chip %s…", short(hex.EncodeToString(p.GetChipId())), short(info.ChipID))
	}
	return nil
}

func pemOf(c *x509.Certificate) []byte {
	var b bytes.Buffer
	_ = pemEncode(&b, c.Raw)
	return b.Bytes()
}

// endorsementKey finds the VCEK/VLEK for the report (certificate table, then cache, then
// KDS if configured) and verifies its chain, using the in-memory cache of verified chains.
func (v *Verifier) endorsementKey(ctx context.Context, p *spb.Report, certTable []byte, now time.Time) (*chainEntry, error) {
	si, err := abi.ParseSignerInfo(p.GetSignerInfo())
	if err != nil {
		return nil, err
	}
	var der []byte
	var tbl *CertTable
	if len(certTable) > 0 {
		tbl, err = ParseCertTable(certTable)
		if err != nil {
			return nil, err
		}
	}
	switch si.SigningKey {
	case abi.VcekReportSigner:
		if tbl != nil {
			der = tbl.VCEK
		}
		if der == nil && v.Cache != nil {
			der, err = v.Cache.VCEK(p.GetChipId(), p.GetReportedTcb())
			if err != nil && v.Getter == nil {
				return nil, err
			}
		}
		if der == nil && v.Getter != nil {
			der, err = v.fetchVCEK(ctx, p)
			if err != nil {
				return nil, err
			}
		}
		if der == nil {
			return nil, fmt.Errorf("no VCEK for chip %s… at TCB %#016x: the guest gave none, there is no certificate cache, and KDS fetching is off", short(hex.EncodeToString(p.GetChipId())), p.GetReportedTcb())
		}
	case abi.VlekReportSigner:
		if tbl != nil {
			der = tbl.VLEK
		}
		if der == nil {
			return nil, errors.New("report signed with a VLEK but no VLEK certificate was given")
		}
	default:
		return nil, fmt.Errorf("report signed by %v: no endorsement key", si.SigningKey)
	}
	key := sha256.Sum256(der)
	v.mu.Lock()
	e, ok := v.chains[key]
	v.mu.Unlock()
	if ok && !now.Before(e.notBefore) && !now.After(e.notAfter) {
		e.signer = si.SigningKey
		return &e, nil
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parsing endorsement key certificate: %w", err)
	}
	info, err := v.trusted().VerifyCert(cert, now)
	if err != nil {
		return nil, err
	}
	pc := v.trusted().Line(info.ProductLine)
	e = chainEntry{cert: cert, info: info, notBefore: cert.NotBefore, notAfter: cert.NotAfter,
		chainPEM: string(pemOf(cert)) + string(v.trusted().PEM(info.ProductLine))}
	for _, c := range []*x509.Certificate{pc.Ask, pc.Asvk, pc.Ark} {
		if c == nil {
			continue
		}
		if c.NotBefore.After(e.notBefore) {
			e.notBefore = c.NotBefore
		}
		if c.NotAfter.Before(e.notAfter) {
			e.notAfter = c.NotAfter
		}
	}
	e.key, e.fresh, e.signer = key, true, si.SigningKey
	return &e, nil
}

// endorses checks what ties the verified chain e to report p, for every report whether
// the chain came from the cache or not: the report's signing key kind (VCEK or VLEK) is
// the certificate's, and the product line the report's CPUID names (version 3 and later)
// is the one the certificate chains to. go-sev-guest's verify does the latter only when
// it verifies a chain, i.e. on first sight of a VCEK here; without this a report claiming
// another product line would pass once its VCEK was cached.
func (e *chainEntry) endorses(p *spb.Report) error {
	if (e.info.Kind == KindVCEK) != (e.signer == abi.VcekReportSigner) {
		return fmt.Errorf("the report is signed by its %v but the certificate given for it is a %s", e.signer, e.info.Kind)
	}
	if p.GetVersion() < 3 || p.GetCpuid1EaxFms() == 0 {
		return nil
	}
	line, err := ProductLineFromCPUID(p.GetCpuid1EaxFms())
	if err != nil {
		return fmt.Errorf("the report's %w", err)
	}
	if line != e.info.ProductLine {
		return fmt.Errorf("the report's CPUID says %s but it is endorsed by a %s %s chaining to ARK-%s", line, e.info.ProductLine, e.info.Kind, e.info.ProductLine)
	}
	return nil
}

func (v *Verifier) remember(e *chainEntry) {
	c := *e
	c.fresh = false
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.chains == nil || len(v.chains) >= maxChainCache {
		v.chains = map[[32]byte]chainEntry{}
	}
	v.chains[c.key] = c
}

func (v *Verifier) goSevGuestVerify(p *spb.Report, ek *chainEntry, now time.Time) error {
	chain := &spb.CertificateChain{}
	if ek.info.Kind == KindVCEK {
		chain.VcekCert = ek.cert.Raw
	} else {
		chain.VlekCert = ek.cert.Raw
	}
	opts := &verify.Options{DisableCertFetching: true, Now: now, TrustedRoots: v.trusted().TrustedRoots()}
	if err := verify.SnpAttestation(&spb.Attestation{Report: p, CertificateChain: chain}, opts); err != nil {
		return fmt.Errorf("go-sev-guest verify: %w", err)
	}
	return nil
}

func (v *Verifier) fetchVCEK(ctx context.Context, p *spb.Report) ([]byte, error) {
	line := ""
	if fms := p.GetCpuid1EaxFms(); fms != 0 {
		line = kds.ProductLineFromFms(fms)
	}
	if line == "" {
		return nil, errors.New("fetching VCEK: the report (version 2) names no product line; import the VCEK")
	}
	url := kds.VCEKCertURL(line, p.GetChipId(), kds.TCBVersion(p.GetReportedTcb()))
	der, err := trust.GetWith(ctx, v.Getter, url)
	if err != nil {
		return nil, fmt.Errorf("fetching VCEK from AMD KDS: %w", err)
	}
	if v.Cache != nil {
		if _, err := v.Cache.Import(der, v.now()); err != nil {
			return nil, err
		}
	}
	return der, nil
}

func (v *Verifier) validate(p *spb.Report, ek *chainEntry, exp Expected, ceiling uint64, reportData []byte) error {
	pol, err := abi.ParseSnpPolicy(ceiling)
	if err != nil {
		return fmt.Errorf("policy ceiling: %w", err)
	}
	vmpl := int(exp.VMPL)
	opts := &validate.Options{
		GuestPolicy:               pol,
		Measurement:               exp.Measurement,
		HostData:                  exp.HostData,
		ReportData:                reportData,
		VMPL:                      &vmpl,
		MinimumTCB:                kds.DecomposeTCBVersion(kds.TCBVersion(exp.MinimumTCB)),
		PermitProvisionalFirmware: true,
	}
	if exp.IDKeyDigest != nil {
		opts.RequireIDBlock = true
		opts.TrustedIDKeyHashes = [][]byte{exp.IDKeyDigest}
		if exp.AuthorKeyDigest != nil {
			opts.RequireAuthorKey = true
			opts.TrustedAuthorKeyHashes = [][]byte{exp.AuthorKeyDigest}
		}
	}
	chain := &spb.CertificateChain{}
	if ek.info.Kind == KindVCEK {
		chain.VcekCert = ek.cert.Raw
	} else {
		chain.VlekCert = ek.cert.Raw
	}
	if err := validate.SnpAttestation(&spb.Attestation{Report: p, CertificateChain: chain}, opts); err != nil {
		return err
	}
	return nil
}
