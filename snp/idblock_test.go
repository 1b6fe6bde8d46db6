package snp

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha512"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-sev-guest/abi"
	"github.com/snpd/snpd/snp/snptest"
)

// idbSharedDir returns <repo root>/../shared, or skips the test when it is absent.
func idbSharedDir(t testing.TB) string {
	t.Helper()
	return snptest.SharedDir(t, "testdata/snp/vectors.tsv")
}

// idbRefCase is the reference tool's snp-create-id-block output for its own test keys.
type idbRefCase struct {
	measurement []byte
	idBlock     []byte
	idAuth      []byte
	idKeyHash   []byte
	authorHash  []byte
	idKeyPEM    []byte
	authorPEM   []byte
}

func idbLoadReference(t *testing.T) idbRefCase {
	t.Helper()
	shared := idbSharedDir(t)
	data, err := os.ReadFile(filepath.Join(shared, "testdata/snp/vectors.tsv"))
	if err != nil {
		t.Fatal(err)
	}
	var rc idbRefCase
	found := false
	for _, line := range strings.Split(string(data), "\n") {
		cols := strings.Split(line, "\t")
		if len(cols) < 7 || !strings.HasPrefix(cols[0], "id-block-upstream-test-measurement") {
			continue
		}
		found = true
		args := strings.Fields(cols[4])
		for i, a := range args {
			if a == "--measurement" && i+1 < len(args) {
				rc.measurement = idbB64(t, args[i+1])
			}
		}
		out := strings.ReplaceAll(cols[6], `\n`, "\n")
		for _, l := range strings.Split(out, "\n") {
			switch {
			case strings.HasPrefix(l, "id-block="):
				parts := strings.SplitN(l, ",", 2)
				rc.idBlock = idbB64(t, strings.TrimPrefix(parts[0], "id-block="))
				rc.idAuth = idbB64(t, strings.TrimPrefix(parts[1], "id-auth="))
			case strings.HasPrefix(l, "id_key_hash: "):
				rc.idKeyHash = idbB64(t, strings.TrimPrefix(l, "id_key_hash: "))
			case strings.HasPrefix(l, "author_key: "):
				rc.authorHash = idbB64(t, strings.TrimPrefix(l, "author_key: "))
			}
		}
	}
	if !found || rc.measurement == nil || rc.idBlock == nil || rc.idKeyHash == nil || rc.authorHash == nil {
		t.Fatalf("id-block row of vectors.tsv not found or incomplete")
	}
	// The reference's own test expectations must agree with vectors.tsv.
	exp, err := os.ReadFile(filepath.Join(shared, "testdata/snp/upstream/upstream-test-expectations.tsv"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"id-block=" + base64.StdEncoding.EncodeToString(rc.idBlock),
		base64.StdEncoding.EncodeToString(rc.idKeyHash),
		base64.StdEncoding.EncodeToString(rc.authorHash),
	} {
		if !strings.Contains(string(exp), want) {
			t.Fatalf("upstream-test-expectations.tsv lacks %q", want)
		}
	}
	if rc.idKeyPEM, err = os.ReadFile(filepath.Join(shared, "testdata/snp/upstream/keyfile/id_key_test.pem")); err != nil {
		t.Fatal(err)
	}
	if rc.authorPEM, err = os.ReadFile(filepath.Join(shared, "testdata/snp/upstream/keyfile/author_key_test.pem")); err != nil {
		t.Fatal(err)
	}
	return rc
}

func idbB64(t *testing.T, s string) []byte {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		t.Fatalf("decoding %q: %v", s, err)
	}
	return b
}

func idbKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func idbTestBlock() *IDBlock {
	b := NewIDBlock([48]byte{1, 2, 3, 47: 0xff}, 0x30000)
	b.FamilyID = [16]byte{0xfa, 15: 0x11}
	b.ImageID = [16]byte{0x1e, 15: 0x22}
	b.GuestSVN = 7
	return b
}

func TestIDBlockKnownAnswer(t *testing.T) {
	rc := idbLoadReference(t)
	var digest [48]byte
	if len(rc.measurement) != len(digest) {
		t.Fatalf("reference measurement is %d bytes", len(rc.measurement))
	}
	copy(digest[:], rc.measurement)
	block, err := NewIDBlock(digest, 0x30000).MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(block, rc.idBlock) {
		t.Fatalf("ID block differs from the reference:\n got %x\nwant %x", block, rc.idBlock)
	}

	idKey, err := ParsePrivateKeyPEM(rc.idKeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	authorKey, err := ParsePrivateKeyPEM(rc.authorPEM)
	if err != nil {
		t.Fatal(err)
	}
	idDigest, err := IDKeyDigest(&idKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	authorDigest, err := IDKeyDigest(&authorKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(idDigest[:], rc.idKeyHash) || !bytes.Equal(authorDigest[:], rc.authorHash) {
		t.Fatalf("key digests differ from the reference: id %x author %x", idDigest, authorDigest)
	}

	// The reference's own ID auth (randomized signatures) verifies with our verifier and
	// yields the reference's digests: proves the offsets and byte order.
	info, err := VerifyIDAuth(rc.idBlock, rc.idAuth)
	if err != nil {
		t.Fatalf("verifying the reference's ID auth: %v", err)
	}
	if info.IDKeyDigest != idDigest || info.AuthorKeyDigest != authorDigest || !info.HasAuthorKey || info.Keyless {
		t.Fatalf("reference ID auth info = %+v", info)
	}

	// Ours equals the reference's everywhere except the randomized signatures.
	auth, err := SignIDBlock(NewIDBlock(digest, 0x30000), idKey, authorKey)
	if err != nil {
		t.Fatal(err)
	}
	mask := func(b []byte) []byte {
		c := bytes.Clone(b)
		clear(c[idAuthBlockSig:idAuthIDKey])
		clear(c[idAuthIDKeySig:idAuthAuthorKey])
		return c
	}
	if !bytes.Equal(mask(auth), mask(rc.idAuth)) {
		t.Fatal("ID auth differs from the reference outside the signature fields")
	}
	info, err = VerifyIDAuth(block, auth)
	if err != nil {
		t.Fatal(err)
	}
	if info.IDKeyDigest != idDigest || info.AuthorKeyDigest != authorDigest {
		t.Fatalf("our ID auth info = %+v", info)
	}
}

// idbStdlibVerify checks the signatures in auth with crypto/ecdsa alone, reading the raw
// little-endian fields at the ABI offsets (independently of ParseIDAuth).
func idbStdlibVerify(t *testing.T, block, auth []byte) {
	t.Helper()
	be := func(le []byte) []byte {
		out := make([]byte, 48)
		for i := range out {
			out[i] = le[47-i]
		}
		return out
	}
	key := func(off int) *ecdsa.PublicKey {
		k := auth[off : off+0x404]
		if binary.LittleEndian.Uint32(k) != 2 {
			t.Fatalf("key at %#x: curve %d", off, binary.LittleEndian.Uint32(k))
		}
		raw := append(append([]byte{4}, be(k[4:4+72])...), be(k[0x4c:0x4c+72])...)
		pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P384(), raw)
		if err != nil {
			t.Fatalf("key at %#x: %v", off, err)
		}
		return pub
	}
	verify := func(what string, pub *ecdsa.PublicKey, msg []byte, sigOff int) {
		h := sha512.Sum384(msg)
		r := new(big.Int).SetBytes(be(auth[sigOff : sigOff+72]))
		s := new(big.Int).SetBytes(be(auth[sigOff+72 : sigOff+144]))
		if !ecdsa.Verify(pub, h[:], r, s) {
			t.Fatalf("%s does not verify with crypto/ecdsa", what)
		}
	}
	verify("ID block signature", key(0x240), block, 0x40)
	if binary.LittleEndian.Uint32(auth[4:]) == 1 {
		verify("ID key signature", key(0x880), auth[0x240:0x240+0x404], 0x680)
	}
}

func TestSignaturesVerifyWithStdlib(t *testing.T) {
	b := idbTestBlock()
	block, err := b.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	idKey, authorKey := idbKey(t), idbKey(t)
	for name, mk := range map[string]func() ([]byte, error){
		"signed":        func() ([]byte, error) { return SignIDBlock(b, idKey, nil) },
		"signed+author": func() ([]byte, error) { return SignIDBlock(b, idKey, authorKey) },
		"keyless":       func() ([]byte, error) { return KeylessIDAuth(b) },
		"keyless+author": func() ([]byte, error) {
			return KeylessIDAuthWithAuthor(b, authorKey)
		},
	} {
		t.Run(name, func(t *testing.T) {
			auth, err := mk()
			if err != nil {
				t.Fatal(err)
			}
			if len(auth) != IDAuthSize {
				t.Fatalf("ID auth is %d bytes", len(auth))
			}
			idbStdlibVerify(t, block, auth)
			info, err := VerifyIDAuth(block, auth)
			if err != nil {
				t.Fatal(err)
			}
			wantAuthor := strings.HasSuffix(name, "+author")
			if info.HasAuthorKey != wantAuthor || info.Keyless != strings.HasPrefix(name, "keyless") {
				t.Fatalf("info = %+v", info)
			}
			if wantAuthor {
				d, _ := IDKeyDigest(&authorKey.PublicKey)
				if info.AuthorKeyDigest != d {
					t.Fatal("author key digest mismatch")
				}
			} else if info.AuthorKeyDigest != [48]byte{} {
				t.Fatal("author key digest set without author key")
			}
			if !strings.HasPrefix(name, "keyless") {
				d, _ := IDKeyDigest(&idKey.PublicKey)
				if info.IDKeyDigest != d {
					t.Fatal("ID key digest mismatch")
				}
			}
			a, err := ParseIDAuth(auth)
			if err != nil {
				t.Fatal(err)
			}
			again, err := a.MarshalBinary()
			if err != nil || !bytes.Equal(again, auth) {
				t.Fatalf("ParseIDAuth/MarshalBinary round trip differs (err %v)", err)
			}
		})
	}
}

func TestVerifyIDAuthRejectsBitFlips(t *testing.T) {
	b := idbTestBlock()
	block, err := b.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	signed, err := SignIDBlock(b, idbKey(t), idbKey(t))
	if err != nil {
		t.Fatal(err)
	}
	keyless, err := KeylessIDAuth(b)
	if err != nil {
		t.Fatal(err)
	}
	for name, auth := range map[string][]byte{"signed": signed, "keyless": keyless} {
		t.Run(name, func(t *testing.T) {
			for bit := 0; bit < len(block)*8; bit++ {
				bad := bytes.Clone(block)
				bad[bit/8] ^= 1 << (bit % 8)
				if _, err := VerifyIDAuth(bad, auth); err == nil {
					t.Fatalf("ID block with bit %d flipped verified", bit)
				}
			}
			// One bit in every byte of the ID auth (rotating through the 8 bit positions)
			// covers every key, signature and reserved field; all of them must matter.
			for i := range auth {
				bad := bytes.Clone(auth)
				bad[i] ^= 1 << (i % 8)
				if _, err := VerifyIDAuth(block, bad); err == nil {
					t.Fatalf("ID auth with byte %#x bit %d flipped verified", i, i%8)
				}
			}
			// Signature bit flips specifically fail the signature check, not parsing.
			for _, off := range []int{idAuthBlockSig, idAuthBlockSig + 0x48 + 5} {
				bad := bytes.Clone(auth)
				bad[off] ^= 0x10
				if _, err := VerifyIDAuth(block, bad); !errors.Is(err, ErrIDAuthSignature) {
					t.Fatalf("flip at %#x: err = %v, want ErrIDAuthSignature", off, err)
				}
			}
		})
	}
}

func TestKeylessIDAuthBindsBlock(t *testing.T) {
	b := idbTestBlock()
	a1, err := KeylessIDAuth(b)
	if err != nil {
		t.Fatal(err)
	}
	a2, err := KeylessIDAuth(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a1, a2) {
		t.Fatal("keyless ID auth is not deterministic")
	}
	other := idbTestBlock()
	other.LaunchDigest[0] ^= 1
	a3, err := KeylessIDAuth(other)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(a1[idAuthIDKey:idAuthIDKeySig], a3[idAuthIDKey:idAuthIDKeySig]) {
		t.Fatal("two ID blocks recovered the same keyless ID key")
	}
	if !bytes.Equal(a1[idAuthBlockSig:idAuthIDKey], a3[idAuthBlockSig:idAuthIDKey]) {
		t.Fatal("keyless signature is not fixed")
	}
	block, _ := b.MarshalBinary()
	if _, err := VerifyIDAuth(block, a3); !errors.Is(err, ErrIDAuthSignature) {
		t.Fatalf("keyless ID auth of another block: err = %v, want ErrIDAuthSignature", err)
	}
}

func TestIDBlockRoundTripAndBadInput(t *testing.T) {
	b := idbTestBlock()
	data, err := b.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if len(data) != IDBlockSize {
		t.Fatalf("ID block is %d bytes", len(data))
	}
	got, err := ParseIDBlock(data)
	if err != nil {
		t.Fatal(err)
	}
	if *got != *b {
		t.Fatalf("round trip: got %+v, want %+v", got, b)
	}
	for name, mut := range map[string]func(*IDBlock){
		"version 0":     func(b *IDBlock) { b.Version = 0 },
		"version 2":     func(b *IDBlock) { b.Version = 2 },
		"policy bit 17": func(b *IDBlock) { b.Policy = 0x10000 },
		"policy bit 63": func(b *IDBlock) { b.Policy |= 1 << 63 },
	} {
		bad := idbTestBlock()
		mut(bad)
		if _, err := bad.MarshalBinary(); err == nil {
			t.Errorf("%s: MarshalBinary accepted it", name)
		}
		if _, err := SignIDBlock(bad, idbKey(t), nil); err == nil {
			t.Errorf("%s: SignIDBlock accepted it", name)
		}
		if _, err := KeylessIDAuth(bad); err == nil {
			t.Errorf("%s: KeylessIDAuth accepted it", name)
		}
	}
	for _, n := range []int{0, 95, 97} {
		if _, err := ParseIDBlock(make([]byte, n)); err == nil || strings.Contains(err.Error(), "\n") {
			t.Errorf("ParseIDBlock(%d bytes) err = %v", n, err)
		}
	}
	if _, err := ParseIDAuth(make([]byte, IDAuthSize-1)); err == nil {
		t.Error("ParseIDAuth accepted 4095 bytes")
	}
	if _, err := ParseIDAuth(make([]byte, IDAuthSize)); err == nil {
		t.Error("ParseIDAuth accepted zeros")
	}
	p256, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := SignIDBlock(b, p256, nil); err == nil || !strings.Contains(err.Error(), "P-384") {
		t.Errorf("SignIDBlock with a P-256 ID key: err = %v", err)
	}
	if _, err := SignIDBlock(b, idbKey(t), p256); err == nil || !strings.Contains(err.Error(), "P-384") {
		t.Errorf("SignIDBlock with a P-256 author key: err = %v", err)
	}
	if _, err := SignIDBlock(b, nil, nil); err == nil {
		t.Error("SignIDBlock without an ID key succeeded")
	}
	if _, err := IDKeyDigest(&p256.PublicKey); err == nil {
		t.Error("IDKeyDigest accepted a P-256 key")
	}
}

func TestMarshalPublicKeyMatchesGoSevGuest(t *testing.T) {
	for range 4 {
		k := idbKey(t)
		ours, err := idMarshalPublicKey(&k.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		theirs, err := abi.EcdsaPublicKeyToBytes(&k.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(ours, theirs) {
			t.Fatal("AMD public key layout differs from go-sev-guest's abi.EcdsaPublicKeyToBytes")
		}
		back, err := idParsePublicKey(ours)
		if err != nil || !back.Equal(&k.PublicKey) {
			t.Fatalf("idParsePublicKey round trip: %v", err)
		}
	}
}

// idbSeedPair returns a valid (block, auth) pair for fuzz seeds.
func idbSeedPair(t testing.TB, author bool) ([]byte, []byte) {
	b := idbTestBlock()
	block, err := b.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var ak *ecdsa.PrivateKey
	if author {
		ak = idbKey(t)
	}
	auth, err := SignIDBlock(b, idbKey(t), ak)
	if err != nil {
		t.Fatal(err)
	}
	return block, auth
}

func FuzzParseIDBlock(f *testing.F) {
	block, _ := idbSeedPair(f, false)
	f.Add(block)
	f.Add(make([]byte, IDBlockSize))
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := ParseIDBlock(data)
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("multi-line error: %q", err)
			}
			return
		}
		out, err := b.MarshalBinary()
		if err != nil || !bytes.Equal(out, data) {
			t.Fatalf("accepted ID block does not round-trip (err %v)", err)
		}
	})
}

func FuzzParseIDAuth(f *testing.F) {
	_, auth := idbSeedPair(f, true)
	f.Add(auth)
	_, auth = idbSeedPair(f, false)
	f.Add(auth)
	f.Add(make([]byte, IDAuthSize))
	f.Fuzz(func(t *testing.T, data []byte) {
		a, err := ParseIDAuth(data)
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("multi-line error: %q", err)
			}
			return
		}
		out, err := a.MarshalBinary()
		if err != nil || !bytes.Equal(out, data) {
			t.Fatalf("accepted ID auth does not round-trip (err %v)", err)
		}
	})
}

func FuzzVerifyIDAuth(f *testing.F) {
	block, auth := idbSeedPair(f, true)
	f.Add(block, auth)
	keyless, err := KeylessIDAuth(idbTestBlock())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(block, keyless)
	f.Fuzz(func(t *testing.T, block, auth []byte) {
		info, err := VerifyIDAuth(block, auth)
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("multi-line error: %q", err)
			}
			return
		}
		if info.Block == nil || info.IDKeyDigest != sha512.Sum384(auth[idAuthIDKey:idAuthIDKey+ECDSAPublicKeySize]) {
			t.Fatalf("verified pair with inconsistent info %+v", info)
		}
	})
}

// Benchmarks: the cost of making and checking an ID auth, keyless recovery side by side
// with real signing (go test -run '^$' -bench 'IDAuth|SignIDBlock' ./snp/).
func BenchmarkSignIDBlock(b *testing.B) {
	idKey, authorKey := idbKey(b), idbKey(b)
	blk := idbTestBlock()
	for b.Loop() {
		if _, err := SignIDBlock(blk, idKey, authorKey); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkKeylessIDAuth(b *testing.B) {
	blk := idbTestBlock()
	for b.Loop() {
		if _, err := KeylessIDAuth(blk); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVerifyIDAuth(b *testing.B) {
	block, auth := idbSeedPair(b, true)
	for b.Loop() {
		if _, err := VerifyIDAuth(block, auth); err != nil {
			b.Fatal(err)
		}
	}
}
