package snp_test

import (
	"bytes"
	"crypto/x509"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-sev-guest/verify/testdata"
	"github.com/google/go-sev-guest/verify/trust"

	"github.com/snpd/snpd/snp"
	"github.com/snpd/snpd/snp/snptest"
)

func TestParseCertTableRoundTrip(t *testing.T) {
	s, err := snptest.NewSigner(snptest.SignerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tbl, err := snp.ParseCertTable(s.CertTable())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(tbl.VCEK, s.Vcek.Raw) || !bytes.Equal(tbl.ARK, s.Ark.Raw) || !bytes.Equal(tbl.ASK, s.Ask.Raw) || !bytes.Equal(tbl.ASVK, s.Asvk.Raw) {
		t.Fatal("table entries differ from the signer's certificates")
	}
	again, err := snp.ParseCertTable(tbl.Marshal())
	if err != nil || !bytes.Equal(again.VLEK, tbl.VLEK) {
		t.Fatalf("round trip: %v", err)
	}
}

func TestParseCertTableRejectsOverflow(t *testing.T) {
	// One entry whose offset+length wraps around 2^32: go-sev-guest's own Unmarshal would
	// slice out of range; ParseCertTable must return an error.
	b := make([]byte, 24*2+8)
	b[0] = 1
	binary.LittleEndian.PutUint32(b[16:], 48)
	binary.LittleEndian.PutUint32(b[20:], 0xffffffff)
	if _, err := snp.ParseCertTable(b); err == nil || !strings.Contains(err.Error(), "outside") {
		t.Fatalf("got %v", err)
	}
}

func TestCertCacheImport(t *testing.T) {
	s, err := snptest.NewSigner(snptest.SignerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	roots, err := snp.ParseRoots(s.RootsPEM())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cc := &snp.CertCache{Dir: dir, Roots: roots}
	// PEM of VCEK + ASK + ARK.
	infos, err := cc.Import(snptest.PEM(s.Vcek, s.Ask, s.Ark), testNow)
	if err != nil {
		t.Fatal(err)
	}
	if len(infos) != 3 || infos[0].Kind != snp.KindVCEK || infos[0].TCB != s.TCB {
		t.Fatalf("imported %+v", infos)
	}
	if der, err := cc.VCEK(s.ChipID[:], s.TCB); err != nil || !bytes.Equal(der, s.Vcek.Raw) {
		t.Fatalf("cached VCEK lookup: %v", err)
	}
	if _, err := cc.VCEK(s.ChipID[:], s.TCB+1); err == nil || !strings.Contains(err.Error(), "snpctl certs import") {
		t.Fatalf("missing VCEK: %v", err)
	}
	// DER alone.
	if _, err := cc.Import(s.Vlek.Raw, testNow); err != nil {
		t.Fatal(err)
	}
	list, err := cc.List()
	if err != nil || len(list) != 4 {
		t.Fatalf("list %d entries: %v", len(list), err)
	}

	// Against AMD's real roots the fake chain is refused and nothing is written.
	real := &snp.CertCache{Dir: filepath.Join(dir, "real")}
	if _, err := real.Import(s.CertTable(), testNow); err == nil {
		t.Fatal("fake chain accepted against AMD's roots")
	}
	if _, err := os.Stat(filepath.Join(dir, "real")); !os.IsNotExist(err) {
		t.Fatal("a refused import left files behind")
	}
	// An expired VCEK is refused.
	if _, err := cc.Import(s.Vcek.Raw, time.Date(2032, 1, 1, 0, 0, 0, 0, time.UTC)); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("expired VCEK: %v", err)
	}
	// The real Milan VCEK and AMD's real chain import against the default roots.
	if infos, err := real.Import(append(bytes.Clone(trust.AskArkMilanVcekBytes), pemOf(testdata.VcekBytes)...), time.Date(2023, 6, 1, 0, 0, 0, 0, time.UTC)); err != nil || len(infos) != 3 {
		t.Fatalf("real Milan chain: %v", err)
	}
	if _, err := cc.Import([]byte("not a certificate"), testNow); err == nil {
		t.Fatal("garbage accepted")
	}
}

func pemOf(der []byte) []byte {
	if bytes.HasPrefix(der, []byte("-----")) {
		return der
	}
	return snptest.PEMDER(der)
}

func TestParseRootsRejectsForeignASK(t *testing.T) {
	s, _ := snptest.NewSigner(snptest.SignerOptions{})
	// AMD's real ASK with the fake ARK: not signed by it.
	var pc trust.ProductCerts
	if err := pc.FromKDSCertBytes(trust.AskArkMilanVcekBytes); err != nil {
		t.Fatal(err)
	}
	if _, err := snp.ParseRoots(snptest.PEM(pc.Ask, s.Ark)); err == nil || !strings.Contains(err.Error(), "not signed by its ARK") {
		t.Fatalf("got %v", err)
	}
	if _, err := snp.ParseRoots(snptest.PEM(s.Ask)); err == nil {
		t.Fatal("roots without an ARK accepted")
	}
}

// FuzzParseCertTable: arbitrary tables never panic the parser and every parsed table
// re-marshals to one that parses to the same entries.
func FuzzParseCertTable(f *testing.F) {
	s, err := snptest.NewSigner(snptest.SignerOptions{})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(s.CertTable())
	f.Add(make([]byte, 24))
	f.Fuzz(func(t *testing.T, data []byte) {
		tbl, err := snp.ParseCertTable(data)
		if err != nil {
			return
		}
		again, err := snp.ParseCertTable(tbl.Marshal())
		if err != nil {
			t.Fatalf("re-parsing a marshalled table: %v", err)
		}
		if !bytes.Equal(again.VCEK, tbl.VCEK) || !bytes.Equal(again.ARK, tbl.ARK) || len(again.Extras) != len(tbl.Extras) {
			t.Fatal("round trip changed the table")
		}
		_, _ = snp.ParseCertificates(data)
	})
}

// FuzzParseCertificates: arbitrary certificate input (what `snpctl certs import` and
// trusted_roots_file take) never panics the parsers, and every parsed certificate can be
// classified or is refused with an error. Signature checks are left out: under the
// fuzzer's coverage instrumentation an RSA-4096 verification takes seconds, and
// TestParseRootsRejectsForeignASK covers them.
func FuzzParseCertificates(f *testing.F) {
	f.Add(testdata.VcekBytes)
	f.Add(snptest.PEMDER(testdata.VcekBytes))
	f.Fuzz(func(t *testing.T, data []byte) {
		certs, err := snp.ParseCertificates(data)
		if err != nil {
			return
		}
		if len(certs) == 0 {
			t.Fatal("no certificates and no error")
		}
		for _, c := range certs {
			if info, err := snp.ClassifyCert(c); err == nil && (info.Kind == "" || info.ProductLine == "") {
				t.Fatalf("classified without kind or product line: %+v", info)
			}
		}
	})
}

// TestVerifyCertComparesARKByKey: an ARK with the trusted ARK's key but other bytes (AMD
// re-issuing its root: new dates, same key) is accepted and imported; an ARK with another
// key, or carrying the trusted key but not self-signed with it, is refused saying so.
func TestVerifyCertComparesARKByKey(t *testing.T) {
	s, err := snptest.NewSigner(snptest.SignerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	roots, err := snp.ParseRoots(s.RootsPEM())
	if err != nil {
		t.Fatal(err)
	}
	reissued, err := snptest.NewSigner(snptest.SignerOptions{Created: time.Date(2025, 3, 1, 0, 0, 0, 0, time.UTC)})
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(reissued.Ark.Raw, s.Ark.Raw) {
		t.Fatal("test setup: the re-issued ARK has the same bytes")
	}
	info, err := roots.VerifyCert(reissued.Ark, testNow)
	if err != nil || info.Kind != snp.KindARK {
		t.Fatalf("re-issued ARK with the trusted key refused: %v", err)
	}
	cc := &snp.CertCache{Dir: t.TempDir(), Roots: roots}
	if _, err := cc.Import(snptest.PEM(reissued.Ark), testNow); err != nil {
		t.Fatalf("importing the re-issued ARK: %v", err)
	}
	// Another key: AMD's real Milan ARK against the test roots.
	var pc trust.ProductCerts
	if err := pc.FromKDSCertBytes(trust.AskArkMilanVcekBytes); err != nil {
		t.Fatal(err)
	}
	if _, err := roots.VerifyCert(pc.Ark, testNow); err == nil || !strings.Contains(err.Error(), "public key is not the trusted ARK-Milan's") {
		t.Fatalf("ARK with another key: %v", err)
	}
	// The trusted key, but the signature of something else: one flipped signature bit.
	forged := bytes.Clone(reissued.Ark.Raw)
	forged[len(forged)-5] ^= 1
	fc, err := x509.ParseCertificate(forged)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := roots.VerifyCert(fc, testNow); err == nil || !strings.Contains(err.Error(), "not self-signed") {
		t.Fatalf("ARK with the trusted key and a bad signature: %v", err)
	}
}
