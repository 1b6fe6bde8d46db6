package snp

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	"github.com/google/go-sev-guest/verify/trust"
	"github.com/google/uuid"
)

// MaxCertTableSize bounds a GHCB certificate table (extended guest request data pages) in
// bytes. Real tables (VCEK+ASK+ARK) are about 5 KiB.
const MaxCertTableSize = 64 << 10

// maxCertTableEntries bounds the entries of one certificate table.
const maxCertTableEntries = 64

// CertTable is a parsed GHCB certificate table (GUID-indexed blobs, as the platform returns
// with an extended report). Missing entries are nil.
type CertTable struct {
	// ARK, ASK, VCEK, VLEK and ASVK are DER certificates.
	ARK, ASK, VCEK, VLEK, ASVK []byte
	// Extras maps other GUIDs (lowercase string form) to their blobs, e.g. the extra
	// platform info entry go-sev-guest adds.
	Extras map[string][]byte
}

// ParseCertTable parses a GHCB certificate table: 24-byte entries (GUID, offset, length,
// little endian) ended by an all-zero entry, then the blobs. Empty input is an empty
// table. Every entry must lie inside data; duplicates and oversized tables are errors.
//
// Written here rather than calling abi.CertTable.Unmarshal because that function's bounds
// check adds two uint32 values and can wrap (then slicing panics).
func ParseCertTable(data []byte) (*CertTable, error) {
	t := &CertTable{Extras: map[string][]byte{}}
	if len(data) == 0 {
		return t, nil
	}
	if len(data) > MaxCertTableSize {
		return nil, fmt.Errorf("parsing certificate table: %d bytes, at most %d", len(data), MaxCertTableSize)
	}
	hdrs, err := abi.ParseSnpCertTableHeader(data)
	if err != nil {
		return nil, fmt.Errorf("parsing certificate table: %w", err)
	}
	if len(hdrs) > maxCertTableEntries {
		return nil, fmt.Errorf("parsing certificate table: %d entries, at most %d", len(hdrs), maxCertTableEntries)
	}
	seen := map[uuid.UUID]bool{}
	for i, h := range hdrs {
		end := uint64(h.Offset) + uint64(h.Length)
		if end > uint64(len(data)) {
			return nil, fmt.Errorf("parsing certificate table: entry %d (offset %d, length %d) outside the %d-byte table", i, h.Offset, h.Length, len(data))
		}
		if seen[h.GUID] {
			return nil, fmt.Errorf("parsing certificate table: duplicate entry %s", h.GUID)
		}
		seen[h.GUID] = true
		blob := bytes.Clone(data[h.Offset:end])
		switch h.GUID.String() {
		case abi.ArkGUID:
			t.ARK = blob
		case abi.AskGUID:
			t.ASK = blob
		case abi.VcekGUID:
			t.VCEK = blob
		case abi.VlekGUID:
			t.VLEK = blob
		case abi.AsvkGUID:
			t.ASVK = blob
		default:
			t.Extras[h.GUID.String()] = blob
		}
	}
	return t, nil
}

// Marshal encodes t in the GHCB certificate table format (entries in a fixed order).
func (t *CertTable) Marshal() []byte {
	var ct abi.CertTable
	add := func(guid string, b []byte) {
		if len(b) > 0 {
			ct.Entries = append(ct.Entries, abi.CertTableEntry{GUID: uuid.MustParse(guid), RawCert: b})
		}
	}
	add(abi.ArkGUID, t.ARK)
	add(abi.AskGUID, t.ASK)
	add(abi.VcekGUID, t.VCEK)
	add(abi.VlekGUID, t.VLEK)
	add(abi.AsvkGUID, t.ASVK)
	keys := make([]string, 0, len(t.Extras))
	for k := range t.Extras {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if g, err := uuid.Parse(k); err == nil {
			ct.Entries = append(ct.Entries, abi.CertTableEntry{GUID: g, RawCert: t.Extras[k]})
		}
	}
	return ct.Marshal()
}

// CertKind names an AMD certificate's role.
type CertKind string

// Certificate roles (AMD KDS specification).
const (
	KindARK  CertKind = "ARK"  // AMD root key, self-signed, per product line
	KindASK  CertKind = "ASK"  // AMD SEV key: signs VCEKs
	KindASVK CertKind = "ASVK" // AMD SEV VLEK key: signs VLEKs
	KindVCEK CertKind = "VCEK" // versioned chip endorsement key, per chip and TCB
	KindVLEK CertKind = "VLEK" // versioned loaded endorsement key, per cloud provider and TCB
)

// CertInfo describes one AMD certificate.
type CertInfo struct {
	Kind CertKind `json:"kind"`
	// ProductLine is "Milan", "Genoa", "Turin"...
	ProductLine string `json:"product_line"`
	// ChipID is the VCEK's HWID (hex, 64 bytes); empty for other kinds.
	ChipID string `json:"chip_id,omitempty"`
	// TCB is the endorsement key's TCB_VERSION (VCEK/VLEK only).
	TCB uint64 `json:"tcb,omitempty"`
	// Subject is the certificate subject's common name.
	Subject string `json:"subject"`
	// NotAfter is the end of validity.
	NotAfter time.Time `json:"not_after"`
	// SHA256 is the digest of the DER bytes (hex).
	SHA256 string `json:"sha256"`
	// Path is where the cache stores it (empty when not cached).
	Path string `json:"path,omitempty"`

	cert *x509.Certificate
}

// ClassifyCert returns the role and product line of an AMD certificate from its subject
// and, for endorsement keys, its KDS extensions.
func ClassifyCert(c *x509.Certificate) (*CertInfo, error) {
	sum := sha256.Sum256(c.Raw)
	info := &CertInfo{Subject: c.Subject.CommonName, NotAfter: c.NotAfter, SHA256: hex.EncodeToString(sum[:]), cert: c}
	cn := c.Subject.CommonName
	switch {
	case strings.HasPrefix(cn, "ARK-"):
		info.Kind, info.ProductLine = KindARK, strings.TrimPrefix(cn, "ARK-")
	case strings.HasPrefix(cn, "SEV-VLEK-"):
		info.Kind, info.ProductLine = KindASVK, strings.TrimPrefix(cn, "SEV-VLEK-")
	case cn == "SEV-VCEK" || cn == "SEV-VLEK":
		key := abi.VcekReportSigner
		info.Kind = KindVCEK
		if cn == "SEV-VLEK" {
			key, info.Kind = abi.VlekReportSigner, KindVLEK
		}
		exts, err := kds.CertificateExtensions(c, key)
		if err != nil {
			return nil, fmt.Errorf("reading %s extensions: %w", info.Kind, err)
		}
		product, err := kds.ParseProductName(exts.ProductName, key)
		if err != nil {
			return nil, fmt.Errorf("reading %s product name: %w", info.Kind, err)
		}
		info.ProductLine = kds.ProductLine(product)
		info.TCB = uint64(exts.TCBVersion)
		if key == abi.VcekReportSigner {
			info.ChipID = hex.EncodeToString(exts.HWID)
		}
	case strings.HasPrefix(cn, "SEV-"):
		info.Kind, info.ProductLine = KindASK, strings.TrimPrefix(cn, "SEV-")
	default:
		return nil, fmt.Errorf("certificate %q is not an AMD SEV certificate", cn)
	}
	if info.ProductLine == "" || strings.ContainsAny(info.ProductLine, "/\\. ") {
		return nil, fmt.Errorf("certificate %q names no valid product line", cn)
	}
	return info, nil
}

// ParseCertificates reads AMD certificates from data: one or more PEM CERTIFICATE blocks,
// one DER certificate, or a GHCB certificate table. Non-certificate entries of a table
// (such as extra platform info) are skipped.
func ParseCertificates(data []byte) ([]*x509.Certificate, error) {
	if len(data) == 0 {
		return nil, errors.New("parsing certificates: empty input")
	}
	if len(data) > MaxCertTableSize {
		return nil, fmt.Errorf("parsing certificates: %d bytes, at most %d", len(data), MaxCertTableSize)
	}
	if bytes.Contains(data, []byte("-----BEGIN")) {
		var out []*x509.Certificate
		rest := data
		for {
			var b *pem.Block
			b, rest = pem.Decode(rest)
			if b == nil {
				break
			}
			if b.Type != "CERTIFICATE" {
				return nil, fmt.Errorf("parsing certificates: unexpected PEM block %q", b.Type)
			}
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("parsing certificate %d: %w", len(out)+1, err)
			}
			out = append(out, c)
		}
		if len(out) == 0 || len(bytes.TrimSpace(rest)) != 0 {
			return nil, errors.New("parsing certificates: malformed PEM")
		}
		return out, nil
	}
	if data[0] == 0x30 { // DER SEQUENCE
		c, err := x509.ParseCertificate(data)
		if err != nil {
			return nil, fmt.Errorf("parsing DER certificate: %w", err)
		}
		return []*x509.Certificate{c}, nil
	}
	t, err := ParseCertTable(data)
	if err != nil {
		return nil, fmt.Errorf("parsing certificates: neither PEM nor DER nor a certificate table (%w)", err)
	}
	var out []*x509.Certificate
	for _, b := range [][]byte{t.ARK, t.ASK, t.ASVK, t.VCEK, t.VLEK} {
		if len(b) == 0 {
			continue
		}
		c, err := x509.ParseCertificate(b)
		if err != nil {
			return nil, fmt.Errorf("parsing certificate table entry: %w", err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("parsing certificates: the table holds no certificate")
	}
	return out, nil
}

// Roots are the trusted AMD root (ARK) and intermediate (ASK, ASVK) certificates per product
// line. The zero value trusts nothing; DefaultRoots trusts AMD's, embedded in go-sev-guest.
type Roots struct {
	lines map[string]*trust.AMDRootCerts
}

// DefaultRoots returns AMD's published ARK/ASK/ASVK for Milan, Genoa and Turin as embedded
// in go-sev-guest v0.15.0.
func DefaultRoots() *Roots {
	r := &Roots{lines: map[string]*trust.AMDRootCerts{}}
	for line, bundles := range map[string][2][]byte{
		"Milan": {trust.AskArkMilanVcekBytes, trust.AskArkMilanVlekBytes},
		"Genoa": {trust.AskArkGenoaVcekBytes, trust.AskArkGenoaVlekBytes},
		"Turin": {trust.AskArkTurinVcekBytes, trust.AskArkTurinVlekBytes},
	} {
		pc := &trust.ProductCerts{}
		for _, b := range bundles {
			var one trust.ProductCerts
			if err := one.FromKDSCertBytes(b); err != nil {
				continue // an embedded bundle that does not parse is simply not trusted
			}
			if one.Ask != nil {
				pc.Ask = one.Ask
			}
			if one.Asvk != nil {
				pc.Asvk = one.Asvk
			}
			pc.Ark = one.Ark
		}
		r.lines[line] = &trust.AMDRootCerts{ProductLine: line, ProductCerts: pc}
	}
	return r
}

// ParseRoots builds trusted roots from PEM or DER certificates (ARK, ASK and ASVK, any
// order). Each ASK/ASVK must be signed by the ARK of its product line, and each line needs
// an ARK and at least one of ASK or ASVK. It is how a deployment (VLEK, tests) replaces
// AMD's roots.
func ParseRoots(data []byte) (*Roots, error) {
	certs, err := ParseCertificates(data)
	if err != nil {
		return nil, fmt.Errorf("parsing trusted roots: %w", err)
	}
	r := &Roots{lines: map[string]*trust.AMDRootCerts{}}
	get := func(line string) *trust.ProductCerts {
		if r.lines[line] == nil {
			r.lines[line] = &trust.AMDRootCerts{ProductLine: line, ProductCerts: &trust.ProductCerts{}}
		}
		return r.lines[line].ProductCerts
	}
	for _, c := range certs {
		info, err := ClassifyCert(c)
		if err != nil {
			return nil, fmt.Errorf("parsing trusted roots: %w", err)
		}
		pc := get(info.ProductLine)
		switch info.Kind {
		case KindARK:
			pc.Ark = c
		case KindASK:
			pc.Ask = c
		case KindASVK:
			pc.Asvk = c
		default:
			return nil, fmt.Errorf("parsing trusted roots: %s certificate is not a root or intermediate", info.Kind)
		}
	}
	for line, rc := range r.lines {
		pc := rc.ProductCerts
		if pc.Ark == nil || (pc.Ask == nil && pc.Asvk == nil) {
			return nil, fmt.Errorf("parsing trusted roots: product line %s needs an ARK and an ASK or ASVK", line)
		}
		if err := pc.Ark.CheckSignatureFrom(pc.Ark); err != nil {
			return nil, fmt.Errorf("parsing trusted roots: %s ARK is not self-signed: %w", line, err)
		}
		for _, ica := range []*x509.Certificate{pc.Ask, pc.Asvk} {
			if ica != nil {
				if err := ica.CheckSignatureFrom(pc.Ark); err != nil {
					return nil, fmt.Errorf("parsing trusted roots: %s %q not signed by its ARK: %w", line, ica.Subject.CommonName, err)
				}
			}
		}
	}
	return r, nil
}

// ProductLines lists the trusted product lines, sorted.
func (r *Roots) ProductLines() []string {
	var out []string
	for l := range r.lines {
		out = append(out, l)
	}
	sort.Strings(out)
	return out
}

// Line returns the trusted certificates of one product line (nil: none).
func (r *Roots) Line(productLine string) *trust.ProductCerts {
	if r == nil || r.lines[productLine] == nil {
		return nil
	}
	return r.lines[productLine].ProductCerts
}

// TrustedRoots returns r in the form go-sev-guest's verify.Options.TrustedRoots takes.
func (r *Roots) TrustedRoots() map[string][]*trust.AMDRootCerts {
	out := map[string][]*trust.AMDRootCerts{}
	for l, rc := range r.lines {
		out[l] = []*trust.AMDRootCerts{rc}
	}
	return out
}

// PEM returns the ASK/ASVK and ARK of productLine in KDS cert_chain order (PEM), nil when
// the line is not trusted.
func (r *Roots) PEM(productLine string) []byte {
	pc := r.Line(productLine)
	if pc == nil {
		return nil
	}
	var b bytes.Buffer
	for _, c := range []*x509.Certificate{pc.Ask, pc.Asvk, pc.Ark} {
		if c != nil {
			_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
		}
	}
	return b.Bytes()
}

// VerifyCert checks c against the trusted roots at time now: an ARK must carry the trusted
// ARK's public key of its line (bytes may differ: a re-issued root), be self-signed with it
// and valid at now; an ASK/ASVK must be signed by it; a VCEK/VLEK must chain through the
// trusted ASK/ASVK to the ARK (go-sev-guest's X509Options) and be valid at now.
func (r *Roots) VerifyCert(c *x509.Certificate, now time.Time) (*CertInfo, error) {
	info, err := ClassifyCert(c)
	if err != nil {
		return nil, err
	}
	pc := r.Line(info.ProductLine)
	if pc == nil || pc.Ark == nil {
		return nil, fmt.Errorf("no trusted roots for product line %s", info.ProductLine)
	}
	switch info.Kind {
	case KindARK:
		// The same key, not the same bytes: AMD re-issues its roots (new validity, serial)
		// with the same key, and what a signature chains to is the key.
		trusted, ok := pc.Ark.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
		if !ok || !trusted.Equal(c.PublicKey) {
			return nil, fmt.Errorf("ARK-%s's public key is not the trusted ARK-%s's", info.ProductLine, info.ProductLine)
		}
		if err := c.CheckSignatureFrom(c); err != nil {
			return nil, fmt.Errorf("ARK-%s has the trusted key but is not self-signed with it: %w", info.ProductLine, err)
		}
		if now.After(c.NotAfter) || now.Before(c.NotBefore) {
			return nil, fmt.Errorf("ARK-%s is not valid at %s (valid %s to %s)", info.ProductLine, now.UTC().Format(time.RFC3339), c.NotBefore.UTC().Format(time.RFC3339), c.NotAfter.UTC().Format(time.RFC3339))
		}
		return info, nil
	case KindASK, KindASVK:
		if err := c.CheckSignatureFrom(pc.Ark); err != nil {
			return nil, fmt.Errorf("%s-%s is not signed by the trusted ARK: %w", info.Kind, info.ProductLine, err)
		}
		if now.After(c.NotAfter) || now.Before(c.NotBefore) {
			return nil, fmt.Errorf("%s-%s is not valid at %s (valid %s to %s)", info.Kind, info.ProductLine, now.UTC().Format(time.RFC3339), c.NotBefore.UTC().Format(time.RFC3339), c.NotAfter.UTC().Format(time.RFC3339))
		}
		return info, nil
	}
	key := abi.VcekReportSigner
	if info.Kind == KindVLEK {
		key = abi.VlekReportSigner
	}
	opts := pc.X509Options(now, key)
	if opts == nil {
		return nil, fmt.Errorf("no trusted %s intermediate for product line %s", map[abi.ReportSigner]string{abi.VcekReportSigner: "ASK", abi.VlekReportSigner: "ASVK"}[key], info.ProductLine)
	}
	if _, err := c.Verify(*opts); err != nil {
		return nil, fmt.Errorf("verifying %s against the %s roots: %w", info.Kind, info.ProductLine, err)
	}
	return info, nil
}

// CertCache is snpd's on-disk certificate cache: VCEKs by chip id and TCB, VLEKs by
// product line and TCB, and the ASK/ASVK/ARK per product line. Only certificates that
// verify against Roots are stored.
//
// Layout under Dir: vcek/<chip-id-hex>-<tcb-16-hex>.der, vlek/<line>-<tcb>-<sha256[:16]>.der,
// ask/<line>.der, asvk/<line>.der, ark/<line>.der.
type CertCache struct {
	// Dir is the cache directory (created 0700 on first import).
	Dir string
	// Roots are the trusted roots certificates are checked against (nil: DefaultRoots).
	Roots *Roots
}

func (cc *CertCache) roots() *Roots {
	if cc.Roots == nil {
		return DefaultRoots()
	}
	return cc.Roots
}

func (cc *CertCache) path(info *CertInfo) string {
	switch info.Kind {
	case KindVCEK:
		return filepath.Join(cc.Dir, "vcek", fmt.Sprintf("%s-%016x.der", info.ChipID, info.TCB))
	case KindVLEK:
		return filepath.Join(cc.Dir, "vlek", fmt.Sprintf("%s-%016x-%s.der", info.ProductLine, info.TCB, info.SHA256[:16]))
	}
	return filepath.Join(cc.Dir, strings.ToLower(string(info.Kind)), info.ProductLine+".der")
}

// Import parses data (PEM, DER or a GHCB certificate table), verifies every certificate
// against the trusted roots at now and stores them. Either all certificates are stored or,
// on any error, none.
func (cc *CertCache) Import(data []byte, now time.Time) ([]CertInfo, error) {
	certs, err := ParseCertificates(data)
	if err != nil {
		return nil, fmt.Errorf("importing certificates: %w", err)
	}
	roots := cc.roots()
	var infos []CertInfo
	for _, c := range certs {
		info, err := roots.VerifyCert(c, now)
		if err != nil {
			return nil, fmt.Errorf("importing certificates: %w", err)
		}
		info.Path = cc.path(info)
		infos = append(infos, *info)
	}
	for _, info := range infos {
		if err := writeFileAtomic(info.Path, info.cert.Raw); err != nil {
			return nil, fmt.Errorf("importing certificates: %w", err)
		}
	}
	return infos, nil
}

// VCEK returns the cached VCEK (DER) of chipID (64 bytes) at tcb, or an error naming what
// to import.
func (cc *CertCache) VCEK(chipID []byte, tcb uint64) ([]byte, error) {
	p := filepath.Join(cc.Dir, "vcek", fmt.Sprintf("%s-%016x.der", hex.EncodeToString(chipID), tcb))
	b, err := os.ReadFile(p)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("no cached VCEK for chip %.16s… at TCB %#016x (import it with snpctl certs import)", hex.EncodeToString(chipID), tcb)
		}
		return nil, fmt.Errorf("reading cached VCEK: %w", err)
	}
	return b, nil
}

// VLEK returns the cached VLEKs (DER) of productLine at tcb.
func (cc *CertCache) VLEK(productLine string, tcb uint64) ([][]byte, error) {
	ms, _ := filepath.Glob(filepath.Join(cc.Dir, "vlek", fmt.Sprintf("%s-%016x-*.der", productLine, tcb)))
	var out [][]byte
	for _, m := range ms {
		b, err := os.ReadFile(m)
		if err != nil {
			return nil, fmt.Errorf("reading cached VLEK: %w", err)
		}
		out = append(out, b)
	}
	return out, nil
}

// List returns every cached certificate (unparseable files are skipped).
func (cc *CertCache) List() ([]CertInfo, error) {
	var out []CertInfo
	for _, sub := range []string{"ark", "ask", "asvk", "vcek", "vlek"} {
		ms, err := filepath.Glob(filepath.Join(cc.Dir, sub, "*.der"))
		if err != nil {
			return nil, fmt.Errorf("listing certificate cache: %w", err)
		}
		sort.Strings(ms)
		for _, m := range ms {
			b, err := os.ReadFile(m)
			if err != nil {
				return nil, fmt.Errorf("listing certificate cache: %w", err)
			}
			c, err := x509.ParseCertificate(b)
			if err != nil {
				continue
			}
			info, err := ClassifyCert(c)
			if err != nil {
				continue
			}
			info.Path = m
			out = append(out, *info)
		}
	}
	return out, nil
}

func writeFileAtomic(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("creating %s: %w", filepath.Dir(path), err)
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("syncing %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("renaming into %s: %w", path, err)
	}
	return nil
}

func pemEncode(w interface{ Write([]byte) (int, error) }, der []byte) error {
	return pem.Encode(w, &pem.Block{Type: "CERTIFICATE", Bytes: der})
}
