package main

import (
	"crypto/ecdsa"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/snpd/snpd/snp"
	"github.com/spf13/cobra"
	"libvirt.org/go/libvirtxml"
)

func init() { addCommand(newIDBlockCmd) }

// idBlockOptions are the flags of `snpctl id-block`.
type idBlockOptions struct {
	measurement string
	idKey       string
	authorKey   string
	keyless     bool
	familyID    string
	imageID     string
	guestSVN    uint32
	policy      string
	format      string
}

func newIDBlockCmd() *cobra.Command {
	var o idBlockOptions
	cmd := &cobra.Command{
		Use:   "id-block --measurement B64 (--idkey PEM [--authorkey PEM] | --keyless [--authorkey PEM])",
		Short: "Build an SEV-SNP ID block and ID auth so the AMD-SP refuses any launch whose digest differs",
		Long: `Build the 96-byte ID block (launch digest, family and image id, guest SVN, policy) and
the 4096-byte ID auth (ECDSA P-384 signatures in AMD's layout) for SNP_LAUNCH_FINISH.
With them the AMD Secure Processor itself refuses to finish a launch whose measurement
or policy differs, and every attestation report carries the ID key digest (and author
key digest when author-key-enabled is on).

Keys are P-384 private keys in PEM (SEC 1 "EC PRIVATE KEY", as written by
'openssl ecparam -name secp384r1 -genkey', or unencrypted PKCS #8).

--keyless needs no ID private key: the ID key is recovered from a fixed signature over
the block (ECDSA public-key recovery), so its digest is unique to this block. Trade-off:
anyone can make such a block for any digest. It makes the hardware enforce the digest
and policy; it does not authenticate who made the block. Add --authorkey to sign the
recovered ID key if the report must name an author.

Output formats (--format):
  reference  the lines snp-create-id-block (sev-snp-measure) prints:
             id-block=B64,id-auth=B64 / id_key_hash: B64 / author_key: B64
             (the author_key line only with an author key)
  qemu       members for QEMU's JSON -object syntax (the form libvirt uses), to put
             inside -object '{"qom-type":"sev-snp-guest",...}':
             "id-block":"B64","id-auth":"B64","author-key-enabled":true|false
             The object's "policy" must equal --policy.
  libvirt    a <launchSecurity type='sev-snp'> element with <policy>, <idBlock>,
             <idAuth> and the authorKey attribute
  json       {"id_block","id_auth" (base64), "id_key_digest","author_key_digest" (hex),
             "author_key_enabled","keyless","policy"}`,
		Example: `  # An ID key, and the launch digest to enforce (base64, as measure prints it)
  openssl ecparam -name secp384r1 -genkey -noout -out id-key.pem
  D=$(snpctl measure --mode snp --vcpus 2 --vcpu-type EPYC-v4 --ovmf OVMF.fd --output-format base64)
  snpctl id-block --idkey id-key.pem --measurement "$D"

  # Signed by an author key too, as a libvirt <launchSecurity> element
  snpctl id-block --idkey id-key.pem --authorkey author-key.pem --measurement "$D" --format libvirt

  # No ID key: the AMD-SP still enforces digest and policy; nobody is authenticated
  snpctl id-block --keyless --measurement "$D" --policy 0x30000 --format qemu`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runIDBlock(cmd.OutOrStdout(), &o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.measurement, "measurement", "", "expected launch digest: base64 of the 48 bytes (as sev-snp-measure --output-format base64), or 96 hex digits")
	f.StringVar(&o.idKey, "idkey", "", "ID private key, PEM file (P-384)")
	f.StringVar(&o.authorKey, "authorkey", "", "author private key, PEM file (P-384); signs the ID key")
	f.BoolVar(&o.keyless, "keyless", false, "no ID private key: recover the ID key from a fixed signature (enforces the digest, authenticates no author)")
	f.StringVar(&o.familyID, "family-id", "", "FAMILY_ID, 16 bytes as 32 hex digits (dashes allowed); default zero")
	f.StringVar(&o.imageID, "image-id", "", "IMAGE_ID, 16 bytes as 32 hex digits (dashes allowed); default zero")
	f.Uint32Var(&o.guestSVN, "guest-svn", 0, "guest security version number (GUEST_SVN)")
	f.StringVar(&o.policy, "policy", "0x30000", "SNP guest policy (must equal the launch's policy)")
	f.StringVar(&o.format, "format", "reference", "output format: reference, qemu, libvirt or json")
	cmd.AddCommand(newIDBlockVerifyCmd())
	return cmd
}

func newIDBlockVerifyCmd() *cobra.Command {
	var block, auth string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "verify --id-block B64 --id-auth B64",
		Short: "Check an ID block and ID auth made elsewhere and print the digests the AMD-SP will report",
		Long: `Parse an ID block (96 bytes) and ID auth (4096 bytes), both base64 as QEMU and libvirt
take them, verify the ID key's signature over the block and the author key's signature
over the ID key, and print the block's fields and the ID/author key digests that
attestation reports will carry. Exit status 1 when anything does not verify.`,
		Example: `  snpctl id-block verify --id-block "$ID_BLOCK_B64" --id-auth "$ID_AUTH_B64"
  snpctl id-block verify --json --id-block "$ID_BLOCK_B64" --id-auth "$ID_AUTH_B64"`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			b, err := base64.StdEncoding.Strict().DecodeString(block)
			if err != nil {
				return fmt.Errorf("--id-block: decoding base64: %w", err)
			}
			a, err := base64.StdEncoding.Strict().DecodeString(auth)
			if err != nil {
				return fmt.Errorf("--id-auth: decoding base64: %w", err)
			}
			info, err := snp.VerifyIDAuth(b, a)
			if err != nil {
				return err
			}
			v := idBlockVerifyOutput{
				LaunchDigest: hex.EncodeToString(info.Block.LaunchDigest[:]),
				FamilyID:     hex.EncodeToString(info.Block.FamilyID[:]),
				ImageID:      hex.EncodeToString(info.Block.ImageID[:]),
				GuestSVN:     info.Block.GuestSVN,
				Policy:       fmt.Sprintf("%#x", info.Block.Policy),
				IDKeyDigest:  hex.EncodeToString(info.IDKeyDigest[:]),
				Keyless:      info.Keyless,
			}
			if info.HasAuthorKey {
				v.AuthorKeyDigest = hex.EncodeToString(info.AuthorKeyDigest[:])
			}
			w := cmd.OutOrStdout()
			if asJSON {
				out, err := json.MarshalIndent(v, "", "  ")
				if err != nil {
					return fmt.Errorf("encoding JSON: %w", err)
				}
				_, err = fmt.Fprintf(w, "%s\n", out)
				return err
			}
			author := v.AuthorKeyDigest
			if author == "" {
				author = "none (author-key-enabled must be off)"
			}
			_, err = fmt.Fprintf(w, "launch_digest: %s\nfamily_id: %s\nimage_id: %s\nguest_svn: %d\npolicy: %s\nid_key_digest: %s\nauthor_key_digest: %s\nkeyless: %t\n",
				v.LaunchDigest, v.FamilyID, v.ImageID, v.GuestSVN, v.Policy, v.IDKeyDigest, author, v.Keyless)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&block, "id-block", "", "ID block, base64 (96 bytes)")
	f.StringVar(&auth, "id-auth", "", "ID auth, base64 (4096 bytes)")
	f.BoolVar(&asJSON, "json", false, "print JSON instead of text")
	return cmd
}

// idBlockVerifyOutput is the JSON form of `snpctl id-block verify`; digests are hex.
type idBlockVerifyOutput struct {
	LaunchDigest    string `json:"launch_digest"`
	FamilyID        string `json:"family_id"`
	ImageID         string `json:"image_id"`
	GuestSVN        uint32 `json:"guest_svn"`
	Policy          string `json:"policy"`
	IDKeyDigest     string `json:"id_key_digest"`
	AuthorKeyDigest string `json:"author_key_digest,omitempty"`
	Keyless         bool   `json:"keyless"`
}

// idBlockResult is what every output format is rendered from.
type idBlockResult struct {
	block, auth []byte
	info        *snp.IDAuthInfo
}

func runIDBlock(w io.Writer, o *idBlockOptions) error {
	b, err := o.idBlock()
	if err != nil {
		return err
	}
	switch o.format {
	case "reference", "qemu", "libvirt", "json":
	default:
		return fmt.Errorf("--format %q: want reference, qemu, libvirt or json", o.format)
	}
	switch {
	case o.keyless && o.idKey != "":
		return errors.New("--keyless and --idkey exclude each other")
	case !o.keyless && o.idKey == "" && o.authorKey != "":
		return errors.New("--authorkey needs --idkey (or --keyless): the author key signs the ID key")
	case !o.keyless && o.idKey == "":
		return errors.New("one of --idkey or --keyless is required")
	}
	var authorKey *ecdsa.PrivateKey
	if o.authorKey != "" {
		if authorKey, err = readKeyFile("--authorkey", o.authorKey); err != nil {
			return err
		}
	}
	var auth []byte
	if o.keyless {
		auth, err = snp.KeylessIDAuthWithAuthor(b, authorKey)
	} else {
		var idKey *ecdsa.PrivateKey
		if idKey, err = readKeyFile("--idkey", o.idKey); err != nil {
			return err
		}
		auth, err = snp.SignIDBlock(b, idKey, authorKey)
	}
	if err != nil {
		return err
	}
	block, err := b.MarshalBinary()
	if err != nil {
		return err
	}
	info, err := snp.VerifyIDAuth(block, auth)
	if err != nil {
		return err
	}
	out, err := formatIDBlock(o.format, idBlockResult{block: block, auth: auth, info: info})
	if err != nil {
		return err
	}
	_, err = io.WriteString(w, out)
	return err
}

// idBlock builds the ID block from the flags.
func (o *idBlockOptions) idBlock() (*snp.IDBlock, error) {
	if o.measurement == "" {
		return nil, errors.New("--measurement is required (base64 of the 48-byte launch digest)")
	}
	digest, err := decodeMeasurement(o.measurement)
	if err != nil {
		return nil, fmt.Errorf("--measurement: %w", err)
	}
	policy, err := strconv.ParseUint(o.policy, 0, 64)
	if err != nil {
		return nil, fmt.Errorf("--policy %q: want a 64-bit number such as 0x30000", o.policy)
	}
	b := snp.NewIDBlock(digest, policy)
	b.GuestSVN = o.guestSVN
	if b.FamilyID, err = decodeID(o.familyID); err != nil {
		return nil, fmt.Errorf("--family-id: %w", err)
	}
	if b.ImageID, err = decodeID(o.imageID); err != nil {
		return nil, fmt.Errorf("--image-id: %w", err)
	}
	if _, err := b.MarshalBinary(); err != nil { // reports a bad policy before keys are read
		return nil, fmt.Errorf("--policy: %w", err)
	}
	return b, nil
}

// decodeMeasurement accepts standard padded base64 (what the reference tool takes) or 96
// hex digits (what sev-snp-measure prints by default); both must give 48 bytes. The two
// cannot be confused: 48 bytes are 64 base64 characters.
func decodeMeasurement(s string) ([48]byte, error) {
	var d [48]byte
	var raw []byte
	var err error
	if len(s) == 2*len(d) {
		raw, err = hex.DecodeString(s)
		if err != nil {
			return d, fmt.Errorf("decoding hex: %w", err)
		}
	} else {
		raw, err = base64.StdEncoding.Strict().DecodeString(s)
		if err != nil {
			return d, fmt.Errorf("want base64 or 96 hex digits: decoding base64: %w", err)
		}
	}
	if len(raw) != len(d) {
		return d, fmt.Errorf("%d bytes, want %d (a SHA-384 launch digest)", len(raw), len(d))
	}
	copy(d[:], raw)
	return d, nil
}

// decodeID decodes a 16-byte FAMILY_ID or IMAGE_ID from 32 hex digits, dashes ignored
// (so a UUID's text form works, bytes in text order); "" is all zeros.
func decodeID(s string) ([16]byte, error) {
	var id [16]byte
	if s == "" {
		return id, nil
	}
	raw, err := hex.DecodeString(strings.ReplaceAll(s, "-", ""))
	if err != nil {
		return id, fmt.Errorf("decoding hex: %w", err)
	}
	if len(raw) != len(id) {
		return id, fmt.Errorf("%d bytes, want %d", len(raw), len(id))
	}
	copy(id[:], raw)
	return id, nil
}

func readKeyFile(flag, path string) (*ecdsa.PrivateKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%s: reading key: %w", flag, err)
	}
	k, err := snp.ParsePrivateKeyPEM(data)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", flag, path, err)
	}
	return k, nil
}

// formatIDBlock renders r in one of the --format forms; the result ends in a newline.
func formatIDBlock(format string, r idBlockResult) (string, error) {
	b64 := base64.StdEncoding.EncodeToString
	switch format {
	case "reference":
		s := fmt.Sprintf("id-block=%s,id-auth=%s\nid_key_hash: %s\n", b64(r.block), b64(r.auth), b64(r.info.IDKeyDigest[:]))
		if r.info.HasAuthorKey {
			s += fmt.Sprintf("author_key: %s\n", b64(r.info.AuthorKeyDigest[:]))
		}
		return s, nil
	case "qemu":
		// Members of QEMU's JSON -object syntax, marshalled one by one to keep the order
		// QEMU's and libvirt's documentation use.
		var parts []string
		for _, kv := range []struct {
			k string
			v any
		}{{"id-block", b64(r.block)}, {"id-auth", b64(r.auth)}, {"author-key-enabled", r.info.HasAuthorKey}} {
			k, _ := json.Marshal(kv.k)
			v, err := json.Marshal(kv.v)
			if err != nil {
				return "", fmt.Errorf("encoding %s: %w", kv.k, err)
			}
			parts = append(parts, string(k)+":"+string(v))
		}
		return strings.Join(parts, ",") + "\n", nil
	case "libvirt":
		authorKey := "no"
		if r.info.HasAuthorKey {
			authorKey = "yes"
		}
		policy := r.info.Block.Policy
		ls := libvirtxml.DomainLaunchSecurity{SEVSNP: &libvirtxml.DomainLaunchSecuritySEVSNP{
			AuthorKey: authorKey,
			Policy:    &policy,
			IDBlock:   b64(r.block),
			IDAuth:    b64(r.auth),
		}}
		var sb strings.Builder
		enc := xml.NewEncoder(&sb)
		enc.Indent("", "  ")
		if err := enc.EncodeElement(&ls, xml.StartElement{Name: xml.Name{Local: "launchSecurity"}}); err != nil {
			return "", fmt.Errorf("encoding libvirt launchSecurity: %w", err)
		}
		return sb.String() + "\n", nil
	case "json":
		v := struct {
			IDBlock          string `json:"id_block"`
			IDAuth           string `json:"id_auth"`
			IDKeyDigest      string `json:"id_key_digest"`
			AuthorKeyDigest  string `json:"author_key_digest,omitempty"`
			AuthorKeyEnabled bool   `json:"author_key_enabled"`
			Keyless          bool   `json:"keyless"`
			Policy           string `json:"policy"`
		}{
			IDBlock:          b64(r.block),
			IDAuth:           b64(r.auth),
			IDKeyDigest:      hex.EncodeToString(r.info.IDKeyDigest[:]),
			AuthorKeyEnabled: r.info.HasAuthorKey,
			Keyless:          r.info.Keyless,
			Policy:           fmt.Sprintf("%#x", r.info.Block.Policy),
		}
		if r.info.HasAuthorKey {
			v.AuthorKeyDigest = hex.EncodeToString(r.info.AuthorKeyDigest[:])
		}
		out, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return "", fmt.Errorf("encoding JSON: %w", err)
		}
		return string(out) + "\n", nil
	}
	return "", fmt.Errorf("--format %q: want reference, qemu, libvirt or json", format)
}
