package launch

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"testing"

	"github.com/snpd/snpd/config"
	"github.com/snpd/snpd/snp"
)

// FuzzCheckIDBlock feeds arbitrary ID blocks, ID auths, digests and policies to
// CheckIDBlock: it never panics, every violation is RuleIDBlockMatchesLaunch, and it
// passes only a block the AMD-SP would accept: it parses, its signature verifies, its
// policy is the launch's and its digest the expected one.
func FuzzCheckIDBlock(f *testing.F) {
	key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	digest := bytes.Repeat([]byte{7}, 48)
	b := snp.NewIDBlock([48]byte(digest), 0x30000)
	auth, err := snp.SignIDBlock(b, key, key)
	if err != nil {
		f.Fatal(err)
	}
	raw, _ := b.MarshalBinary()
	f.Add(raw, auth, digest, uint64(0x30000), true)
	f.Add(raw, auth, digest[:47], uint64(0x30000), false)
	f.Add(bytes.Repeat([]byte("libvirt"), 14)[:96], bytes.Repeat([]byte("libvirt"), 600)[:4096], digest, uint64(0x30000), true)
	f.Fuzz(func(t *testing.T, block, auth, digest []byte, policy uint64, author bool) {
		vm := &config.VM{SNP: config.SNP{Policy: policy, AuthorKeyEnabled: author,
			IDBlock: base64.StdEncoding.EncodeToString(block), IDAuth: base64.StdEncoding.EncodeToString(auth)}}
		if len(digest) != 48 {
			digest = nil
		}
		v := CheckIDBlock(vm, digest)
		for _, x := range v {
			if x.Rule != RuleIDBlockMatchesLaunch || x.Message == "" {
				t.Fatalf("violation %+v", x)
			}
		}
		if len(v) > 0 {
			return
		}
		info, err := snp.VerifyIDAuth(block, auth)
		if err != nil || info.Block.Policy != policy || digest != nil && !bytes.Equal(info.Block.LaunchDigest[:], digest) || author && !info.HasAuthorKey {
			t.Fatalf("passed a block the AMD-SP would refuse: %v %+v", err, info)
		}
	})
}

// TestCheckIDBlockNothingToCheck: a definition without a ready-made ID block (none, or
// one snpd builds from snp.id_key_file) has nothing to check.
func TestCheckIDBlockNothingToCheck(t *testing.T) {
	for _, vm := range []*config.VM{{}, {SNP: config.SNP{IDKeyFile: "keyless"}}} {
		if v := CheckIDBlock(vm, bytes.Repeat([]byte{1}, 48)); v != nil {
			t.Fatalf("%+v: %+v", vm.SNP, v)
		}
	}
}
