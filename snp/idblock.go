package snp

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha512"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/go-sev-guest/abi"
)

// ID block and ID auth structures (SEV-SNP firmware ABI specification 56860, section
// "SNP_LAUNCH_FINISH": tables "ID_BLOCK Structure" and "ID_AUTH Structure"). With an ID
// block the AMD-SP refuses SNP_LAUNCH_FINISH unless the launch digest and policy match
// it, and reports the ID key digest (and author key digest, if enabled) in every
// attestation report.
const (
	// IDBlockSize is the size in bytes of the ID block.
	IDBlockSize = 0x60 // 96
	// IDAuthSize is the size in bytes of the ID authentication information structure.
	IDAuthSize = 0x1000 // 4096
	// IDBlockVersion is the only ID block format version (the VERSION field).
	IDBlockVersion = 1
	// KeyAlgoECDSAP384SHA384 is the ID_KEY_ALGO / AUTH_KEY_ALGO value for ECDSA P-384
	// with SHA-384, the only algorithm the ABI defines.
	KeyAlgoECDSAP384SHA384 = abi.SignEcdsaP384Sha384

	idAuthIDKeyAlgo     = 0x00
	idAuthAuthorKeyAlgo = 0x04
	idAuthBlockSig      = 0x40  // ID_BLOCK_SIG, 512 bytes
	idAuthIDKey         = 0x240 // ID_KEY, 1028 bytes, then 60 reserved
	idAuthIDKeySig      = 0x680 // ID_KEY_SIG, 512 bytes
	idAuthAuthorKey     = 0x880 // AUTHOR_KEY, 1028 bytes, then 892 reserved to 0x1000
)

// ErrIDAuthSignature is wrapped by VerifyIDAuth's error when a signature does not verify.
var ErrIDAuthSignature = errors.New("signature does not verify")

// IDBlock is the 96-byte ID block given to SNP_LAUNCH_FINISH. All multi-byte integers are
// little-endian in the binary form.
type IDBlock struct {
	// LaunchDigest (offset 0x00) is the SHA-384 launch digest (MEASUREMENT) the AMD-SP
	// must compute for the launch to finish.
	LaunchDigest [48]byte
	// FamilyID (0x30) and ImageID (0x40) are opaque 16-byte identifiers reported back in
	// FAMILY_ID and IMAGE_ID of attestation reports.
	FamilyID, ImageID [16]byte
	// Version (0x50) must be IDBlockVersion.
	Version uint32
	// GuestSVN (0x54) is the guest security version number, reported in GUEST_SVN.
	GuestSVN uint32
	// Policy (0x58) is the SNP guest policy; it must equal the policy of the launch and
	// be a valid policy (bit 17 set, reserved bits clear).
	Policy uint64
}

// NewIDBlock returns an ID block for digest and policy with version IDBlockVersion and
// zero IDs and SVN.
func NewIDBlock(digest [48]byte, policy uint64) *IDBlock {
	return &IDBlock{LaunchDigest: digest, Version: IDBlockVersion, Policy: policy}
}

func (b *IDBlock) validate() error {
	if b.Version != IDBlockVersion {
		return fmt.Errorf("ID block version is %d, want %d", b.Version, IDBlockVersion)
	}
	if _, err := abi.ParseSnpPolicy(b.Policy); err != nil {
		return fmt.Errorf("checking ID block policy %#x: %w", b.Policy, err)
	}
	return nil
}

// MarshalBinary returns the 96-byte ABI form of b. It fails if b.Version is not
// IDBlockVersion or b.Policy is not a valid SNP guest policy.
func (b *IDBlock) MarshalBinary() ([]byte, error) {
	if err := b.validate(); err != nil {
		return nil, err
	}
	out := make([]byte, IDBlockSize)
	copy(out[0x00:0x30], b.LaunchDigest[:])
	copy(out[0x30:0x40], b.FamilyID[:])
	copy(out[0x40:0x50], b.ImageID[:])
	binary.LittleEndian.PutUint32(out[0x50:0x54], b.Version)
	binary.LittleEndian.PutUint32(out[0x54:0x58], b.GuestSVN)
	binary.LittleEndian.PutUint64(out[0x58:0x60], b.Policy)
	return out, nil
}

// ParseIDBlock parses a 96-byte ID block; it rejects any other length, a version other
// than IDBlockVersion and an invalid policy.
func ParseIDBlock(data []byte) (*IDBlock, error) {
	if len(data) != IDBlockSize {
		return nil, fmt.Errorf("parsing ID block: %d bytes, want %d", len(data), IDBlockSize)
	}
	var b IDBlock
	copy(b.LaunchDigest[:], data[0x00:0x30])
	copy(b.FamilyID[:], data[0x30:0x40])
	copy(b.ImageID[:], data[0x40:0x50])
	b.Version = binary.LittleEndian.Uint32(data[0x50:0x54])
	b.GuestSVN = binary.LittleEndian.Uint32(data[0x54:0x58])
	b.Policy = binary.LittleEndian.Uint64(data[0x58:0x60])
	if err := b.validate(); err != nil {
		return nil, fmt.Errorf("parsing ID block: %w", err)
	}
	return &b, nil
}

// IDAuth is the parsed 4096-byte ID authentication information structure.
type IDAuth struct {
	// IDKeyAlgo (offset 0x00) is KeyAlgoECDSAP384SHA384.
	IDKeyAlgo uint32
	// AuthorKeyAlgo (0x04) is KeyAlgoECDSAP384SHA384 when an author key is present and
	// 0 when not.
	AuthorKeyAlgo uint32
	// BlockSignature (0x40) is the ID key's signature over the 96-byte ID block.
	BlockSignature ECDSASignature
	// IDKey (0x240) is the ID key; never nil in a parsed structure.
	IDKey *ecdsa.PublicKey
	// IDKeySignature (0x680) is the author key's signature over the 1028-byte ID key
	// structure; R and S are nil when there is no author key.
	IDKeySignature ECDSASignature
	// AuthorKey (0x880) is the author key, nil when there is none.
	AuthorKey *ecdsa.PublicKey
}

// MarshalBinary returns the 4096-byte ABI form of a.
func (a *IDAuth) MarshalBinary() ([]byte, error) {
	if a.IDKeyAlgo != KeyAlgoECDSAP384SHA384 {
		return nil, fmt.Errorf("ID key algorithm is %d, want %d", a.IDKeyAlgo, KeyAlgoECDSAP384SHA384)
	}
	if a.BlockSignature.R == nil || a.BlockSignature.S == nil {
		return nil, errors.New("ID block signature is missing")
	}
	out := make([]byte, IDAuthSize)
	binary.LittleEndian.PutUint32(out[idAuthIDKeyAlgo:], a.IDKeyAlgo)
	binary.LittleEndian.PutUint32(out[idAuthAuthorKeyAlgo:], a.AuthorKeyAlgo)
	copy(out[idAuthBlockSig:], idMarshalSignature(a.BlockSignature))
	idKey, err := idMarshalPublicKey(a.IDKey)
	if err != nil {
		return nil, fmt.Errorf("encoding ID key: %w", err)
	}
	copy(out[idAuthIDKey:], idKey)
	switch {
	case a.AuthorKeyAlgo == 0 && a.AuthorKey == nil:
	case a.AuthorKeyAlgo == KeyAlgoECDSAP384SHA384 && a.AuthorKey != nil:
		if a.IDKeySignature.R == nil || a.IDKeySignature.S == nil {
			return nil, errors.New("ID key signature is missing")
		}
		copy(out[idAuthIDKeySig:], idMarshalSignature(a.IDKeySignature))
		author, err := idMarshalPublicKey(a.AuthorKey)
		if err != nil {
			return nil, fmt.Errorf("encoding author key: %w", err)
		}
		copy(out[idAuthAuthorKey:], author)
	default:
		return nil, fmt.Errorf("author key algorithm %d does not match author key presence (%t)", a.AuthorKeyAlgo, a.AuthorKey != nil)
	}
	return out, nil
}

// ParseIDAuth parses a 4096-byte ID auth structure. It accepts only ECDSA P-384 keys and
// signatures in AMD's layout, AuthorKeyAlgo 0 (then the ID key signature and author key
// fields must be zero) or 1, and zero reserved bytes. It does not check signatures: use
// VerifyIDAuth for that.
func ParseIDAuth(data []byte) (*IDAuth, error) {
	a, err := parseIDAuth(data)
	if err != nil {
		return nil, fmt.Errorf("parsing ID auth: %w", err)
	}
	return a, nil
}

func parseIDAuth(data []byte) (*IDAuth, error) {
	if len(data) != IDAuthSize {
		return nil, fmt.Errorf("%d bytes, want %d", len(data), IDAuthSize)
	}
	a := &IDAuth{
		IDKeyAlgo:     binary.LittleEndian.Uint32(data[idAuthIDKeyAlgo:]),
		AuthorKeyAlgo: binary.LittleEndian.Uint32(data[idAuthAuthorKeyAlgo:]),
	}
	if a.IDKeyAlgo != KeyAlgoECDSAP384SHA384 {
		return nil, fmt.Errorf("ID key algorithm is %d, want %d (ECDSA P-384 SHA-384)", a.IDKeyAlgo, KeyAlgoECDSAP384SHA384)
	}
	if !idAllZero(data[0x08:idAuthBlockSig]) {
		return nil, errors.New("reserved bytes 0x08-0x3f are not zero")
	}
	var err error
	if a.BlockSignature, err = idParseSignature(data[idAuthBlockSig:idAuthIDKey]); err != nil {
		return nil, fmt.Errorf("reading ID block signature: %w", err)
	}
	if a.IDKey, err = idParsePublicKey(data[idAuthIDKey : idAuthIDKey+ECDSAPublicKeySize]); err != nil {
		return nil, fmt.Errorf("reading ID key: %w", err)
	}
	if !idAllZero(data[idAuthIDKey+ECDSAPublicKeySize : idAuthIDKeySig]) {
		return nil, errors.New("reserved bytes after the ID key are not zero")
	}
	authorEnd := idAuthAuthorKey + ECDSAPublicKeySize
	switch a.AuthorKeyAlgo {
	case 0:
		if !idAllZero(data[idAuthIDKeySig:authorEnd]) {
			return nil, errors.New("author key algorithm is 0 but the ID key signature or author key fields are not zero")
		}
	case KeyAlgoECDSAP384SHA384:
		if a.IDKeySignature, err = idParseSignature(data[idAuthIDKeySig:idAuthAuthorKey]); err != nil {
			return nil, fmt.Errorf("reading ID key signature: %w", err)
		}
		if a.AuthorKey, err = idParsePublicKey(data[idAuthAuthorKey:authorEnd]); err != nil {
			return nil, fmt.Errorf("reading author key: %w", err)
		}
	default:
		return nil, fmt.Errorf("author key algorithm is %d, want 0 (none) or %d (ECDSA P-384 SHA-384)", a.AuthorKeyAlgo, KeyAlgoECDSAP384SHA384)
	}
	if !idAllZero(data[authorEnd:]) {
		return nil, errors.New("reserved bytes after the author key are not zero")
	}
	return a, nil
}

// IDAuthInfo is what VerifyIDAuth learned from a verified ID block and ID auth pair.
type IDAuthInfo struct {
	// Block is the parsed ID block.
	Block *IDBlock
	// IDKeyDigest is SHA-384 of the ID key structure: the report's ID_KEY_DIGEST.
	IDKeyDigest [48]byte
	// AuthorKeyDigest is SHA-384 of the author key structure, the report's
	// AUTHOR_KEY_DIGEST when the launch sets author-key-enabled; zero without author key.
	AuthorKeyDigest [48]byte
	// HasAuthorKey is true when the ID auth carries an author key and its signature over
	// the ID key verified. QEMU's author-key-enabled must then be on.
	HasAuthorKey bool
	// Keyless is true when the ID block signature is snpd's fixed keyless signature (see
	// KeylessIDAuth): the ID key then authenticates nobody, it only pins the block.
	Keyless bool
}

// VerifyIDAuth parses the 96-byte ID block and 4096-byte ID auth, checks the ID key's
// signature over the block and, when present, the author key's signature over the ID
// key, and returns the key digests the AMD-SP will report. A signature that does not
// verify gives an error wrapping ErrIDAuthSignature.
func VerifyIDAuth(block, auth []byte) (*IDAuthInfo, error) {
	b, err := ParseIDBlock(block)
	if err != nil {
		return nil, fmt.Errorf("verifying ID auth: %w", err)
	}
	a, err := ParseIDAuth(auth)
	if err != nil {
		return nil, fmt.Errorf("verifying ID auth: %w", err)
	}
	info := &IDAuthInfo{Block: b}
	h := sha512.Sum384(block)
	if !ecdsa.Verify(a.IDKey, h[:], a.BlockSignature.R, a.BlockSignature.S) {
		return nil, fmt.Errorf("verifying ID block signature: %w", ErrIDAuthSignature)
	}
	idKey := auth[idAuthIDKey : idAuthIDKey+ECDSAPublicKeySize]
	info.IDKeyDigest = sha512.Sum384(idKey)
	if a.AuthorKey != nil {
		h := sha512.Sum384(idKey)
		if !ecdsa.Verify(a.AuthorKey, h[:], a.IDKeySignature.R, a.IDKeySignature.S) {
			return nil, fmt.Errorf("verifying ID key signature by the author key: %w", ErrIDAuthSignature)
		}
		info.HasAuthorKey = true
		info.AuthorKeyDigest = sha512.Sum384(auth[idAuthAuthorKey : idAuthAuthorKey+ECDSAPublicKeySize])
	}
	if k, err := idKeylessParams(); err == nil {
		info.Keyless = a.BlockSignature.R.Cmp(k.r) == 0 && a.BlockSignature.S.Cmp(k.s) == 0
	}
	return info, nil
}

// SignIDBlock signs b with idKey and, when authorKey is not nil, signs the ID key with
// authorKey, and returns the 4096-byte ID auth. Both keys must be P-384. The result is
// verified before it is returned.
func SignIDBlock(b *IDBlock, idKey, authorKey *ecdsa.PrivateKey) (auth []byte, err error) {
	if idKey == nil {
		return nil, errors.New("signing ID block: ID key is missing")
	}
	block, err := b.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("signing ID block: %w", err)
	}
	h := sha512.Sum384(block)
	// Checked here so a wrong curve is reported as such, not as a signing failure.
	if _, err := idMarshalPublicKey(&idKey.PublicKey); err != nil {
		return nil, fmt.Errorf("signing ID block: ID key: %w", err)
	}
	r, s, err := ecdsa.Sign(rand.Reader, idKey, h[:])
	if err != nil {
		return nil, fmt.Errorf("signing ID block: %w", err)
	}
	return finishIDAuth(block, &idKey.PublicKey, ECDSASignature{R: r, S: s}, authorKey)
}

// KeylessIDAuth returns an ID auth for b that needs no private key: its ID block
// signature is the fixed KeylessSignature and its ID key is recovered from that signature
// and b (ECDSA public-key recovery), so it has no author key.
//
// Trade-off: anyone can make such an ID auth for any ID block. It makes the AMD-SP
// enforce b's launch digest and policy; it does not authenticate who made b. The ID key
// digest is still unique to b.
func KeylessIDAuth(b *IDBlock) (auth []byte, err error) {
	return KeylessIDAuthWithAuthor(b, nil)
}

// KeylessIDAuthWithAuthor is KeylessIDAuth plus an author key signature over the
// recovered ID key when authorKey is not nil, so the author key digest identifies who
// endorsed this ID block.
func KeylessIDAuthWithAuthor(b *IDBlock, authorKey *ecdsa.PrivateKey) (auth []byte, err error) {
	block, err := b.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("making keyless ID auth: %w", err)
	}
	sig, err := KeylessSignature()
	if err != nil {
		return nil, fmt.Errorf("making keyless ID auth: %w", err)
	}
	pub, err := idRecoverKeylessKey(block)
	if err != nil {
		return nil, fmt.Errorf("making keyless ID auth: %w", err)
	}
	return finishIDAuth(block, pub, sig, authorKey)
}

// finishIDAuth adds the optional author signature, encodes the ID auth and verifies the
// result against block, so no unverifiable structure ever leaves this package.
func finishIDAuth(block []byte, idPub *ecdsa.PublicKey, blockSig ECDSASignature, authorKey *ecdsa.PrivateKey) ([]byte, error) {
	a := &IDAuth{IDKeyAlgo: KeyAlgoECDSAP384SHA384, BlockSignature: blockSig, IDKey: idPub}
	if authorKey != nil {
		idKeyBytes, err := idMarshalPublicKey(idPub)
		if err != nil {
			return nil, fmt.Errorf("encoding ID key: %w", err)
		}
		if _, err := idMarshalPublicKey(&authorKey.PublicKey); err != nil {
			return nil, fmt.Errorf("signing ID key: author key: %w", err)
		}
		h := sha512.Sum384(idKeyBytes)
		r, s, err := ecdsa.Sign(rand.Reader, authorKey, h[:])
		if err != nil {
			return nil, fmt.Errorf("signing ID key with the author key: %w", err)
		}
		a.AuthorKeyAlgo = KeyAlgoECDSAP384SHA384
		a.IDKeySignature = ECDSASignature{R: r, S: s}
		a.AuthorKey = &authorKey.PublicKey
	}
	auth, err := a.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("encoding ID auth: %w", err)
	}
	if _, err := VerifyIDAuth(block, auth); err != nil {
		return nil, fmt.Errorf("checking the new ID auth: %w", err)
	}
	return auth, nil
}
