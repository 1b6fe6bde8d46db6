package launch

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"fmt"

	"github.com/snpd/snpd/config"
	"github.com/snpd/snpd/snp"
)

// RuleIDBlockMatchesLaunch is the host-policy rule a ready-made ID block breaks when the
// AMD-SP would not accept it for the launch it comes with: it does not parse, its launch
// digest is not snpd's expected digest, its policy is not the launch's, or its ID auth
// does not verify. It is always enforced, with or without a policy file: such a block
// makes an SEV-SNP launch fail ("bad measurement") and its key digests mean nothing.
const RuleIDBlockMatchesLaunch = "id_block.matches_launch"

// CheckIDBlock checks vm's ready-made ID block and ID auth (snp.id_block and id_auth, or a
// libvirt domain's <idBlock> and <idAuth>) against the launch, as SNP_LAUNCH_FINISH will:
// the block parses (96 bytes, version 1, a valid policy) and its policy is vm's policy;
// the ID auth's ID key signature over the block verifies, and so does the author key's
// over the ID key when vm enables the author key (which the ID auth must then carry);
// and, when digest (the expected launch digest, 48 bytes) is given, the block's launch
// digest is digest. Without digest the block alone is checked. Every problem is one
// violation of RuleIDBlockMatchesLaunch; none without a ready-made block (an ID block
// snpd builds from snp.id_key_file is made for the digest and policy).
func CheckIDBlock(vm *config.VM, digest []byte) []config.Violation {
	if vm.SNP.IDBlock == "" && vm.SNP.IDAuth == "" {
		return nil
	}
	var out []config.Violation
	add := func(value, format string, a ...any) {
		out = append(out, config.Violation{Rule: RuleIDBlockMatchesLaunch, Value: value, Message: fmt.Sprintf(format, a...)})
	}
	block, err := base64.StdEncoding.DecodeString(vm.SNP.IDBlock)
	if err != nil || vm.SNP.IDBlock == "" {
		add("id_block", "the ID block is not base64 of %d bytes", snp.IDBlockSize)
		return out
	}
	auth, err := base64.StdEncoding.DecodeString(vm.SNP.IDAuth)
	if err != nil || vm.SNP.IDAuth == "" {
		add("id_auth", "the ID auth is not base64 of %d bytes", snp.IDAuthSize)
		return out
	}
	b, err := snp.ParseIDBlock(block)
	if err != nil {
		add(shortHex(block), "the ID block is not one the AMD-SP accepts: %v", err)
		return out
	}
	if b.Policy != vm.SNP.Policy {
		add(fmt.Sprintf("%#x", b.Policy), "the ID block's policy %#x is not the launch's policy %#x", b.Policy, vm.SNP.Policy)
	}
	if digest != nil && !bytes.Equal(b.LaunchDigest[:], digest) {
		add(hex.EncodeToString(b.LaunchDigest[:]), "the ID block's launch digest %s is not the expected digest %s", shortHex(b.LaunchDigest[:]), shortHex(digest))
	}
	info, err := snp.VerifyIDAuth(block, auth)
	switch {
	case err != nil:
		add("id_auth", "the ID auth does not verify: %v", err)
	case vm.SNP.AuthorKeyEnabled && !info.HasAuthorKey:
		add("id_auth", "the author key is enabled but the ID auth carries none")
	}
	return out
}

// shortHex is the first 16 hex digits of b and an ellipsis.
func shortHex(b []byte) string {
	h := hex.EncodeToString(b)
	if len(h) > 16 {
		return h[:16] + "…"
	}
	return h
}
