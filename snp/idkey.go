package snp

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha512"
	"crypto/x509"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"sync"

	"filippo.io/nistec"
	"github.com/google/go-sev-guest/abi"
)

// Sizes and offsets of AMD's ECDSA P-384 structures (SEV-SNP firmware ABI specification
// 56860, chapter "Digital Signatures": ECDSA public key format and ECDSA signature format).
// Integers are little-endian and zero-extended to 72 bytes.
const (
	// ECDSAPublicKeySize is the size in bytes of AMD's ECDSA public key structure:
	// CURVE (4 bytes) + QX (72) + QY (72) + reserved (0x370).
	ECDSAPublicKeySize = abi.EcsdaPublicKeySize // 0x404 = 1028

	// ECDSASignatureSize is the size in bytes of AMD's ECDSA signature structure:
	// R (72 bytes) + S (72) + reserved (368).
	ECDSASignatureSize = 0x200

	// idAMDIntSize is the width of one little-endian integer field (QX, QY, R, S).
	idAMDIntSize = 72
	// idP384Size is the byte length of a P-384 field element or scalar.
	idP384Size = 48

	idKeyQXOffset = 0x04
	idKeyQYOffset = 0x4c
	idKeyEnd      = 0x94 // first reserved byte of the key structure
	idSigSOffset  = 0x48
	idSigEnd      = 0x90 // first reserved byte of the signature structure
)

// IDKeyDigest returns the SHA-384 digest of pub in AMD's 1028-byte public key layout,
// exactly as the AMD-SP reports it in ID_KEY_DIGEST (or AUTHOR_KEY_DIGEST for an author
// key). pub must be a valid P-384 key.
func IDKeyDigest(pub *ecdsa.PublicKey) ([48]byte, error) {
	b, err := idMarshalPublicKey(pub)
	if err != nil {
		return [48]byte{}, err
	}
	return sha512.Sum384(b), nil
}

// idMarshalPublicKey returns pub in AMD's 1028-byte ECDSA public key layout.
//
// go-sev-guest's abi.EcdsaPublicKeyToBytes produces the same bytes (a test checks that)
// but reads the deprecated big.Int coordinates; this version goes through
// PublicKey.Bytes, which also rejects keys that are not on the curve.
func idMarshalPublicKey(pub *ecdsa.PublicKey) ([]byte, error) {
	if pub == nil {
		return nil, errors.New("public key is missing")
	}
	if pub.Curve != elliptic.P384() {
		return nil, fmt.Errorf("key is on curve %s; SEV-SNP ID and author keys must be P-384", idCurveName(pub.Curve))
	}
	raw, err := pub.Bytes() // 0x04 || X (48, big-endian) || Y (48, big-endian)
	if err != nil {
		return nil, fmt.Errorf("encoding public key: %w", err)
	}
	out := make([]byte, ECDSAPublicKeySize)
	binary.LittleEndian.PutUint32(out[0:4], abi.EccP384)
	idPutLE(out[idKeyQXOffset:idKeyQXOffset+idP384Size], raw[1:1+idP384Size])
	idPutLE(out[idKeyQYOffset:idKeyQYOffset+idP384Size], raw[1+idP384Size:])
	return out, nil
}

// idParsePublicKey parses AMD's 1028-byte ECDSA public key layout. It accepts only curve
// P-384, coordinates that fit 48 bytes, a point on the curve and zero reserved bytes.
func idParsePublicKey(b []byte) (*ecdsa.PublicKey, error) {
	if len(b) != ECDSAPublicKeySize {
		return nil, fmt.Errorf("public key is %d bytes, want %d", len(b), ECDSAPublicKeySize)
	}
	if c := binary.LittleEndian.Uint32(b[0:4]); c != abi.EccP384 {
		return nil, fmt.Errorf("public key curve is %d, want %d (P-384)", c, abi.EccP384)
	}
	x, err := idGetLE(b[idKeyQXOffset:idKeyQYOffset])
	if err != nil {
		return nil, fmt.Errorf("reading QX: %w", err)
	}
	y, err := idGetLE(b[idKeyQYOffset:idKeyEnd])
	if err != nil {
		return nil, fmt.Errorf("reading QY: %w", err)
	}
	if !idAllZero(b[idKeyEnd:]) {
		return nil, errors.New("public key reserved bytes are not zero")
	}
	raw := make([]byte, 0, 1+2*idP384Size)
	raw = append(append(append(raw, 4), x...), y...)
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P384(), raw)
	if err != nil {
		return nil, fmt.Errorf("decoding public key point: %w", err)
	}
	return pub, nil
}

// ECDSASignature is an ECDSA P-384 signature. R and S are in [1, n-1] when parsed.
type ECDSASignature struct {
	R, S *big.Int
}

// idMarshalSignature returns sig in AMD's 512-byte signature layout.
func idMarshalSignature(sig ECDSASignature) []byte {
	out := make([]byte, ECDSASignatureSize)
	var buf [idP384Size]byte
	idPutLE(out[0:idP384Size], sig.R.FillBytes(buf[:]))
	idPutLE(out[idSigSOffset:idSigSOffset+idP384Size], sig.S.FillBytes(buf[:]))
	return out
}

// idParseSignature parses AMD's 512-byte signature layout: R and S must be in [1, n-1] and
// the reserved bytes zero.
func idParseSignature(b []byte) (ECDSASignature, error) {
	if len(b) != ECDSASignatureSize {
		return ECDSASignature{}, fmt.Errorf("signature is %d bytes, want %d", len(b), ECDSASignatureSize)
	}
	n := elliptic.P384().Params().N
	var sig ECDSASignature
	for _, part := range []struct {
		name string
		dst  **big.Int
		b    []byte
	}{{"R", &sig.R, b[0:idSigSOffset]}, {"S", &sig.S, b[idSigSOffset:idSigEnd]}} {
		be, err := idGetLE(part.b)
		if err != nil {
			return ECDSASignature{}, fmt.Errorf("reading signature %s: %w", part.name, err)
		}
		v := new(big.Int).SetBytes(be)
		if v.Sign() == 0 || v.Cmp(n) >= 0 {
			return ECDSASignature{}, fmt.Errorf("signature %s is out of range [1, n-1]", part.name)
		}
		*part.dst = v
	}
	if !idAllZero(b[idSigEnd:]) {
		return ECDSASignature{}, errors.New("signature reserved bytes are not zero")
	}
	return sig, nil
}

// idPutLE writes the big-endian idP384Size-byte integer be into dst little-endian.
func idPutLE(dst, be []byte) {
	for i := range be {
		dst[i] = be[len(be)-1-i]
	}
}

// idGetLE reads a 72-byte little-endian field and returns its value as 48 big-endian bytes;
// the 24 high bytes must be zero (a P-384 value never needs them).
func idGetLE(le []byte) ([]byte, error) {
	if len(le) != idAMDIntSize {
		return nil, fmt.Errorf("field is %d bytes, want %d", len(le), idAMDIntSize)
	}
	if !idAllZero(le[idP384Size:]) {
		return nil, errors.New("value does not fit 48 bytes")
	}
	be := make([]byte, idP384Size)
	for i := range be {
		be[i] = le[idP384Size-1-i]
	}
	return be, nil
}

func idAllZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func idCurveName(c elliptic.Curve) string {
	if c == nil || c.Params() == nil {
		return "<none>"
	}
	return c.Params().Name
}

// ParsePrivateKeyPEM parses a P-384 ECDSA private key from PEM: SEC 1 ("EC PRIVATE KEY",
// as `openssl ecparam -genkey` writes it, optionally after an "EC PARAMETERS" block) or
// unencrypted PKCS #8 ("PRIVATE KEY"). Public keys, certificates, encrypted keys, other
// curves and other algorithms are errors; so is any other PEM block in data.
func ParsePrivateKeyPEM(data []byte) (*ecdsa.PrivateKey, error) {
	var key *ecdsa.PrivateKey
	rest := data
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if key != nil {
			return nil, fmt.Errorf("parsing private key PEM: unexpected %q block after the private key", block.Type)
		}
		var err error
		switch block.Type {
		case "EC PARAMETERS":
			continue // written by `openssl ecparam -genkey`; the key block names its curve itself
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(block.Bytes)
		case "PRIVATE KEY":
			var k any
			k, err = x509.ParsePKCS8PrivateKey(block.Bytes)
			if err == nil {
				var ok bool
				if key, ok = k.(*ecdsa.PrivateKey); !ok {
					return nil, fmt.Errorf("parsing private key PEM: key is %T, want an ECDSA P-384 key", k)
				}
			}
		case "PUBLIC KEY", "EC PUBLIC KEY", "CERTIFICATE":
			return nil, fmt.Errorf("parsing private key PEM: found a %q block; a private key is needed", block.Type)
		case "ENCRYPTED PRIVATE KEY":
			return nil, errors.New("parsing private key PEM: encrypted keys are not supported; decrypt it first (openssl pkey)")
		default:
			return nil, fmt.Errorf("parsing private key PEM: unexpected %q block", block.Type)
		}
		if err != nil {
			return nil, fmt.Errorf("parsing private key PEM %q block: %w", block.Type, err)
		}
		if key.Curve != elliptic.P384() {
			return nil, fmt.Errorf("parsing private key PEM: key is on curve %s; SEV-SNP ID and author keys must be P-384", idCurveName(key.Curve))
		}
	}
	if key == nil {
		return nil, errors.New("parsing private key PEM: no complete PEM private key block found")
	}
	return key, nil
}

// Keyless ID keys.
//
// ECDSA public-key recovery: for any message digest e and any (r, s) where r is the
// x-coordinate of a curve point R, the point Q = r⁻¹(s·R − e·G) is a public key under
// which (r, s) is a valid signature of e. snpd fixes (r, s) once (below) and recovers Q
// for each ID block, so an ID auth structure can be made without any private key.
//
// R is derived by hashing a fixed label onto the curve, so nobody knows its discrete
// logarithm; then nobody knows Q's private key either, and Q (hence ID_KEY_DIGEST) is
// bound to this one ID block: a different block yields a different Q.
//
// Trade-off: anyone can make such an ID block and ID auth for any digest and policy. It
// makes the AMD-SP enforce the launch digest and policy at SNP_LAUNCH_FINISH; it does not
// authenticate who made the block. Use SignIDBlock with a real ID (and author) key when
// the ID key digest must identify an author.
//
// The point arithmetic comes from filippo.io/nistec (the standard library's own constant-
// time P-384 code, exported); crypto/ecdsa and crypto/ecdh do not expose point addition or
// multiplication by arbitrary points, and crypto/elliptic's are deprecated. Scalars are
// public here, so math/big is fine for the arithmetic modulo n.

const (
	keylessRLabel = "snpd keyless ID block signature R v1"
	keylessSLabel = "snpd keyless ID block signature S v1"
)

type idKeylessParamsT struct {
	r, s *big.Int
	R    *nistec.P384Point
}

var idKeylessParams = sync.OnceValues(func() (idKeylessParamsT, error) {
	n := elliptic.P384().Params().N
	for ctr := 0; ctr < 256; ctr++ {
		x := sha512.Sum384(append([]byte(keylessRLabel), byte(ctr)))
		if new(big.Int).SetBytes(x[:]).Cmp(n) >= 0 {
			continue // keep r == x exactly (n < p, so x < n is also a valid field element)
		}
		R, err := nistec.NewP384Point().SetBytes(append([]byte{2}, x[:]...))
		if err != nil {
			continue // x³ − 3x + b is not a square: no point with this x
		}
		sh := sha512.Sum384([]byte(keylessSLabel))
		s := new(big.Int).Mod(new(big.Int).SetBytes(sh[:]), n)
		if s.Sign() == 0 {
			return idKeylessParamsT{}, errors.New("deriving keyless signature: s is zero")
		}
		return idKeylessParamsT{r: new(big.Int).SetBytes(x[:]), s: s, R: R}, nil
	}
	return idKeylessParamsT{}, errors.New("deriving keyless signature: no curve point found")
})

// KeylessSignature returns the fixed (r, s) that every keyless ID auth carries as its
// ID block signature.
func KeylessSignature() (ECDSASignature, error) {
	p, err := idKeylessParams()
	if err != nil {
		return ECDSASignature{}, err
	}
	return ECDSASignature{R: new(big.Int).Set(p.r), S: new(big.Int).Set(p.s)}, nil
}

// idRecoverKeylessKey returns the public key Q under which the keyless signature is valid
// for the SHA-384 digest of msg: Q = r⁻¹·s·R − r⁻¹·e·G.
func idRecoverKeylessKey(msg []byte) (*ecdsa.PublicKey, error) {
	p, err := idKeylessParams()
	if err != nil {
		return nil, err
	}
	n := elliptic.P384().Params().N
	h := sha512.Sum384(msg)
	e := new(big.Int).SetBytes(h[:]) // SHA-384 is as long as n: no truncation
	rInv := new(big.Int).ModInverse(p.r, n)
	u1 := new(big.Int).Mul(e, rInv)
	u1.Neg(u1).Mod(u1, n)
	u2 := new(big.Int).Mul(p.s, rInv)
	u2.Mod(u2, n)

	var b1, b2 [idP384Size]byte
	a, err := nistec.NewP384Point().ScalarBaseMult(u1.FillBytes(b1[:]))
	if err != nil {
		return nil, fmt.Errorf("recovering keyless ID key: %w", err)
	}
	b, err := nistec.NewP384Point().ScalarMult(p.R, u2.FillBytes(b2[:]))
	if err != nil {
		return nil, fmt.Errorf("recovering keyless ID key: %w", err)
	}
	q := a.Add(a, b).Bytes()
	if len(q) == 1 {
		return nil, errors.New("recovering keyless ID key: point at infinity")
	}
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P384(), q)
	if err != nil {
		return nil, fmt.Errorf("recovering keyless ID key: %w", err)
	}
	return pub, nil
}
