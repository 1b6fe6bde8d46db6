package snp_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/sha512"
	"testing"
	"time"

	"github.com/google/go-sev-guest/abi"

	"github.com/snpd/snpd/snp"
	"github.com/snpd/snpd/snp/agentproto"
)

// benchReports returns n distinct signed reports (different nonces) of one fake chip, its
// certificate table and the expectations of report i.
func benchReports(b *testing.B, n int) (*fixture, [][]byte, []snp.Expected) {
	fx := newFixture(b)
	reports := make([][]byte, n)
	exps := make([]snp.Expected, n)
	for i := range reports {
		nonce := []byte{byte(i), byte(i >> 8), 'n'}
		f := fx.fields
		rd, err := agentproto.BindReportData(nonce, nil)
		if err != nil {
			b.Fatal(err)
		}
		f.ReportData = rd
		reports[i] = fx.report(b, f)
		exps[i] = fx.exp
		exps[i].Nonce = nonce
	}
	return fx, reports, exps
}

// BenchmarkVerifyCachedChain is snpd's full verification (decode, certificate table,
// cached chain, ECDSA P-384 signature, every launch-record check, go-sev-guest validate)
// of reports from a chip whose chain was verified before. Compare with
// BenchmarkVerifyBareECDSA (scripts/bench-verify.sh prints the ratio).
func BenchmarkVerifyCachedChain(b *testing.B) {
	fx, reports, exps := benchReports(b, 64)
	v := fx.verifier()
	certs := fx.signer.CertTable()
	if vd := v.Verify(context.Background(), reports[0], certs, exps[0]); !vd.OK {
		b.Fatalf("%+v", vd.Failed())
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		k := i % len(reports)
		if vd := v.Verify(context.Background(), reports[k], certs, exps[k]); !vd.OK {
			b.Fatal("verification failed")
		}
	}
}

// BenchmarkVerifyBareECDSA is the floor: crypto/ecdsa P-384 verification of the same
// reports' signatures with an already parsed public key, nothing else.
func BenchmarkVerifyBareECDSA(b *testing.B) {
	fx, reports, _ := benchReports(b, 64)
	pub := fx.signer.Vcek.PublicKey.(*ecdsa.PublicKey)
	type sig struct {
		digest []byte
		der    []byte
	}
	sigs := make([]sig, len(reports))
	for i, r := range reports {
		d := sha512.Sum384(abi.SignedComponent(r))
		der, err := abi.ReportToSignatureDER(r)
		if err != nil {
			b.Fatal(err)
		}
		sigs[i] = sig{d[:], der}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s := sigs[i%len(sigs)]
		if !ecdsa.VerifyASN1(pub, s.digest, s.der) {
			b.Fatal("signature did not verify")
		}
	}
}

// BenchmarkVerifyVsECDSA interleaves the two sides report by report (full verification
// with a cached chain, then bare ECDSA P-384 of the same report) so that load from other
// processes falls on both equally, and reports their cost ratio as the metric "x".
func BenchmarkVerifyVsECDSA(b *testing.B) {
	fx, reports, exps := benchReports(b, 64)
	v := fx.verifier()
	certs := fx.signer.CertTable()
	pub := fx.signer.Vcek.PublicKey.(*ecdsa.PublicKey)
	if vd := v.Verify(context.Background(), reports[0], certs, exps[0]); !vd.OK {
		b.Fatalf("%+v", vd.Failed())
	}
	var full, bare time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		k := i % len(reports)
		t0 := time.Now()
		if vd := v.Verify(context.Background(), reports[k], certs, exps[k]); !vd.OK {
			b.Fatal("verification failed")
		}
		t1 := time.Now()
		d := sha512.Sum384(abi.SignedComponent(reports[k]))
		der, err := abi.ReportToSignatureDER(reports[k])
		if err != nil || !ecdsa.VerifyASN1(pub, d[:], der) {
			b.Fatal("signature did not verify")
		}
		t2 := time.Now()
		full += t1.Sub(t0)
		bare += t2.Sub(t1)
	}
	b.ReportMetric(float64(full)/float64(bare), "x")
	b.ReportMetric(float64(full.Nanoseconds())/float64(b.N), "full-ns/report")
	b.ReportMetric(float64(bare.Nanoseconds())/float64(b.N), "bare-ns/report")
}
