package daemon

import (
	"bytes"
	"context"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/snpd/snpd/daemon/api"
	"github.com/snpd/snpd/daemon/guestchan"
	"github.com/snpd/snpd/daemon/launch"
	"github.com/snpd/snpd/snp"
	"github.com/snpd/snpd/snp/agentproto"
	"github.com/snpd/snpd/snp/snptest"
)

// fakeGuest serves agentproto on a unix socket the way QEMU serves the virtio-serial
// port: the agent side is snptest's fake AMD-SP (this host has no SEV-SNP).
func fakeGuest(t *testing.T, src agentproto.ReportSource) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "snpd-att-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, launch.AgentSocketName)
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _ = agentproto.Serve(ctx, c, src) }()
		}
	}()
	return sock
}

type attestFixture struct {
	signer *snptest.Signer
	att    *Attestor
	rec    *api.LaunchRecord
	target *AttestTarget
	fields snptest.Fields
}

func newAttestFixture(t *testing.T) *attestFixture {
	t.Helper()
	s, err := snptest.NewSigner(snptest.SignerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	roots, err := snp.ParseRoots(s.RootsPEM())
	if err != nil {
		t.Fatal(err)
	}
	digest := sha512.Sum384([]byte("vm1 launch"))
	hd := bytes.Repeat([]byte{7}, 32)
	rec := &api.LaunchRecord{Name: "vm1", Platform: "sev-snp", Confidential: true, ExpectedDigest: hex.EncodeToString(digest[:]),
		Policy: 0x30000, HostData: hex.EncodeToString(hd), CPUModel: "EPYC-v4"}
	f := snptest.Fields{Measurement: digest, Policy: 0x30000}
	copy(f.HostData[:], hd)
	fx := &attestFixture{signer: s, rec: rec, fields: f}
	fx.target = &AttestTarget{Record: rec, Running: true}
	now := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	cache := &snp.CertCache{Dir: t.TempDir(), Roots: roots}
	fx.att = &Attestor{
		Lookup: func(name string) (*AttestTarget, error) {
			if name != "vm1" {
				return nil, errors.Join(errors.New("no vm "+name), api.ErrNotFound)
			}
			return fx.target, nil
		},
		Verifier: &snp.Verifier{Roots: roots, Cache: cache, Now: func() time.Time { return now }},
		Roots:    roots, Cache: cache, Now: func() time.Time { return now },
	}
	return fx
}

func TestAttestThroughGuestChannel(t *testing.T) {
	fx := newAttestFixture(t)
	src := &snptest.AgentSource{Signer: fx.signer, Fields: fx.fields}
	fx.target.Channel = guestchan.GuestChannel{SerialSocket: fakeGuest(t, src), Timeout: 5 * time.Second}
	nonce := []byte("0123456789abcdef0123456789abcdef")
	resp, err := fx.att.Attest(context.Background(), "vm1", nonce)
	if err != nil {
		t.Fatal(err)
	}
	if !resp.Verdict.OK {
		t.Fatalf("verdict: %+v", resp.Verdict)
	}
	// The guest got its own launch record and chain.
	p := src.Provisioned()
	if !resp.Provisioned || p == nil || !strings.Contains(string(p.Record), fx.rec.ExpectedDigest) || !strings.Contains(p.ChainPEM, "BEGIN CERTIFICATE") {
		t.Fatalf("guest not provisioned: %v %+v", resp.Provisioned, p)
	}
	if len(resp.Report) != snp.ReportSize || resp.ChainPEM == "" || !strings.Contains(string(resp.Reference), fx.rec.ExpectedDigest) || !strings.Contains(string(resp.Decoded), "measurement") {
		t.Fatalf("response lacks evidence: %+v", resp)
	}

	// The same report given to POST /v1/verify passes with the nonce and fails without.
	vr, err := fx.att.VerifyReport(context.Background(), &api.VerifyRequest{VM: "vm1", Report: resp.Report, CertTable: resp.CertTable, Nonce: hex.EncodeToString(nonce)})
	if err != nil || !vr.Verdict.OK {
		t.Fatalf("verify: %v %+v", err, vr)
	}
	vr, err = fx.att.VerifyReport(context.Background(), &api.VerifyRequest{VM: "vm1", Report: resp.Report, CertTable: resp.CertTable})
	if err != nil || vr.Verdict.OK {
		t.Fatalf("verify without nonce passed: %v", err)
	}
}

// TestAttestMeasurementMismatchNeverPasses: a guest launched with other contents (its
// report's measurement is not the record's) fails, whatever else is right.
func TestAttestMeasurementMismatchNeverPasses(t *testing.T) {
	fx := newAttestFixture(t)
	f := fx.fields
	f.Measurement[47] ^= 0xff
	fx.target.Channel = guestchan.GuestChannel{SerialSocket: fakeGuest(t, &snptest.AgentSource{Signer: fx.signer, Fields: f}), Timeout: 5 * time.Second}
	resp, err := fx.att.Attest(context.Background(), "vm1", []byte("nonce"))
	if err != nil {
		t.Fatal(err)
	}
	if resp.Verdict.OK {
		t.Fatal("report with another measurement passed")
	}
	for _, c := range resp.Verdict.Checks {
		if c.Name == snp.CheckMeasurement && c.OK {
			t.Fatal("measurement check passed")
		}
	}
}

// TestAttestCertsFromCache: a guest whose host gives no certificate table is verified with
// the VCEK imported into snpd's cache, and fails without it.
func TestAttestCertsFromCache(t *testing.T) {
	fx := newAttestFixture(t)
	fx.target.Channel = guestchan.GuestChannel{SerialSocket: fakeGuest(t, &snptest.AgentSource{Signer: fx.signer, Fields: fx.fields, OmitCerts: true}), Timeout: 5 * time.Second}
	resp, err := fx.att.Attest(context.Background(), "vm1", []byte("n1"))
	if err != nil {
		t.Fatal(err)
	}
	if resp.Verdict.OK {
		t.Fatal("passed with no VCEK anywhere")
	}
	if _, err := fx.att.Cache.Import(fx.signer.CertTable(), fx.att.now()); err != nil {
		t.Fatal(err)
	}
	resp, err = fx.att.Attest(context.Background(), "vm1", []byte("n2"))
	if err != nil || !resp.Verdict.OK {
		t.Fatalf("with cached VCEK: %v %+v", err, resp.Verdict)
	}
}

func TestAttestErrors(t *testing.T) {
	fx := newAttestFixture(t)
	ctx := context.Background()
	if _, err := fx.att.Attest(ctx, "vm1", nil); !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("empty nonce: %v", err)
	}
	if _, err := fx.att.Attest(ctx, "nope", []byte("n")); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("unknown vm: %v", err)
	}
	if _, err := fx.att.Attest(ctx, "vm1", []byte("n")); !errors.Is(err, api.ErrConflict) {
		t.Fatalf("no channel: %v", err)
	}
	fx.target.Running = false
	if _, err := fx.att.Attest(ctx, "vm1", []byte("n")); !errors.Is(err, api.ErrConflict) || !strings.Contains(err.Error(), "not running") {
		t.Fatalf("stopped vm: %v", err)
	}
	fx.target.Running = true
	fx.target.Channel = guestchan.GuestChannel{SerialSocket: fakeGuest(t, &snptest.AgentSource{Signer: fx.signer, Fields: fx.fields}), Timeout: 5 * time.Second}
	// An ID block in the record without its key digest fails closed.
	fx.rec.IDBlockSHA256 = strings.Repeat("ab", 32)
	if _, err := fx.att.Attest(ctx, "vm1", []byte("n")); !errors.Is(err, api.ErrInternal) || !strings.Contains(err.Error(), "no ID key digest") {
		t.Fatalf("id block without digest: %v", err)
	}
	fx.rec.IDBlockSHA256 = ""
	if _, err := fx.att.Reference("vm1", "xml"); !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("bad format: %v", err)
	}
	for _, f := range []string{snp.FormatJSON, snp.FormatTrustee, snp.FormatSevGuestCheck} {
		if b, err := fx.att.Reference("vm1", f); err != nil || len(b) == 0 {
			t.Fatalf("reference %s: %v", f, err)
		}
	}
}

// TestRecordKeyDigests: the launch record carries the digests VerifyIDAuth derives, so a
// report from a guest launched with that ID block passes the id-keys check and one
// without it fails.
func TestRecordKeyDigests(t *testing.T) {
	digest := sha512.Sum384([]byte("idblock launch"))
	blk := snp.NewIDBlock(digest, 0x30000)
	auth, err := snp.KeylessIDAuth(blk)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := blk.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	idk, ak := launch.RecordKeyDigests(raw, auth, false)
	info, err := snp.VerifyIDAuth(raw, auth)
	if err != nil {
		t.Fatal(err)
	}
	if idk != hex.EncodeToString(info.IDKeyDigest[:]) || ak != "" {
		t.Fatalf("digests %q %q", idk, ak)
	}
	if a, b := launch.RecordKeyDigests(nil, nil, false); a != "" || b != "" {
		t.Fatal("digests without an ID block")
	}

	fx := newAttestFixture(t)
	fx.rec.IDBlockSHA256, fx.rec.IDKeyDigest = strings.Repeat("ab", 32), idk
	f := fx.fields
	copy(f.IDKeyDigest[:], info.IDKeyDigest[:])
	fx.target.Channel = guestchan.GuestChannel{SerialSocket: fakeGuest(t, &snptest.AgentSource{Signer: fx.signer, Fields: f}), Timeout: 5 * time.Second}
	resp, err := fx.att.Attest(context.Background(), "vm1", []byte("n"))
	if err != nil || !resp.Verdict.OK {
		t.Fatalf("with the recorded ID key: %v %+v", err, resp)
	}
	fx.target.Channel = guestchan.GuestChannel{SerialSocket: fakeGuest(t, &snptest.AgentSource{Signer: fx.signer, Fields: fx.fields}), Timeout: 5 * time.Second}
	resp, err = fx.att.Attest(context.Background(), "vm1", []byte("n"))
	if err != nil || resp.Verdict.OK {
		t.Fatalf("report without the ID block passed: %v", err)
	}
}
