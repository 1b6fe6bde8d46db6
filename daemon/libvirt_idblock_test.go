package daemon

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/snpd/snpd/daemon/api"
	"github.com/snpd/snpd/daemon/launch"
	"github.com/snpd/snpd/snp"
	"github.com/snpd/snpd/snp/snptest"
)

// idBlockDomain is snpDomain (named name) whose sev-snp launch security carries an ID
// block and ID auth (base64), with the author key enabled when author.
func idBlockDomain(name string, block, auth []byte, author bool) string {
	ls := "<launchSecurity type='sev-snp'"
	if author {
		ls += " authorKey='yes'"
	}
	ls += "><policy>0x30000</policy><idBlock>" + base64.StdEncoding.EncodeToString(block) +
		"</idBlock><idAuth>" + base64.StdEncoding.EncodeToString(auth) + "</idAuth></launchSecurity>"
	x := strings.Replace(snpDomain, "<name>lv2</name>", "<name>"+name+"</name>", 1)
	return strings.Replace(x, "<launchSecurity type='sev-snp'><policy>0x30000</policy></launchSecurity>", ls, 1)
}

// TestLibvirtDomainIDBlockChecked: a libvirt domain's own ID block, registered through
// the hook's route with a real snpd, is refused with rule id_block.matches_launch,
// reported like every other violation, unless its launch digest is snpd's expected
// digest for the domain, its policy the domain's, and its ID auth verifies (with the
// author key when the domain enables it). libvirt's own placeholder block is refused,
// alone and among the example policy's other violations of libvirt's test domain. A
// matching block is registered, and its key digests are in the registration's record.
func TestLibvirtDomainIDBlockChecked(t *testing.T) {
	needQEMU(t)
	e := newTestEnv(t, "")
	d := startDaemon(t, e)
	ctx := ctxT(t, 2*time.Minute)
	register := func(name, xml string) (*api.LibvirtDomainResponse, error) {
		var resp api.LibvirtDomainResponse
		err := d.Client.Do(ctx, http.MethodPost, api.LibvirtDomainsPath, api.LibvirtDomainRequest{Name: name, XML: xml}, &resp)
		return &resp, err
	}
	refused := func(what, name, xml, want string) {
		t.Helper()
		_, err := register(name, xml)
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Status != http.StatusUnprocessableEntity || !errors.Is(err, api.ErrPolicy) {
			t.Fatalf("%s: %v", what, err)
		}
		for _, v := range ae.Violations {
			if v.Rule == launch.RuleIDBlockMatchesLaunch && strings.Contains(v.Message, want) && strings.Contains(ae.Message, "rule id_block.matches_launch: ") {
				if _, err := d.Client.LibvirtDomain(ctx, name); !isKind(err, api.ErrNotFound) {
					t.Fatalf("%s: refused, yet registered (%v)", what, err)
				}
				return
			}
		}
		t.Fatalf("%s: violations %+v; want rule %s saying %q", what, ae.Violations, launch.RuleIDBlockMatchesLaunch, want)
	}

	// libvirt's placeholder ID block and ID auth ("libvirtlibvirt..."), in a domain that
	// is otherwise fine.
	shared := string(snptest.ReadShared(t, "testdata/libvirt/launch-security-sev-snp.xml"))
	b64 := func(elem string) []byte {
		m := regexp.MustCompile("<" + elem + ">([^<]+)</" + elem + ">").FindStringSubmatch(shared)
		if m == nil {
			t.Fatalf("no <%s> in libvirt's test domain", elem)
		}
		b, err := base64.StdEncoding.DecodeString(m[1])
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	refused("libvirt's placeholder", "lvph", idBlockDomain("lvph", b64("idBlock"), b64("idAuth"), true), "the ID block is not one the AMD-SP accepts")

	// The expected digest of the domain, from a registration without an ID block.
	plain, err := register("lv2", snpDomain)
	if err != nil {
		t.Fatal(err)
	}
	var digest [48]byte
	if n, err := hex.Decode(digest[:], []byte(plain.ExpectedDigest)); err != nil || n != 48 {
		t.Fatalf("expected digest %q", plain.ExpectedDigest)
	}
	idKey, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	authorKey, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sign := func(digest [48]byte, policy uint64, author *ecdsa.PrivateKey) ([]byte, []byte) {
		t.Helper()
		b := snp.NewIDBlock(digest, policy)
		auth, err := snp.SignIDBlock(b, idKey, author)
		if err != nil {
			t.Fatal(err)
		}
		raw, err := b.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		return raw, auth
	}

	block, auth := sign([48]byte{1, 2, 3}, 0x30000, nil)
	refused("another digest", "lvd", idBlockDomain("lvd", block, auth, false), "launch digest 0102030000000000… is not the expected digest "+plain.ExpectedDigest[:16])
	block, auth = sign(digest, 0x20000, nil)
	refused("another policy", "lvp", idBlockDomain("lvp", block, auth, false), "policy 0x20000 is not the launch's policy 0x30000")
	block, auth = sign(digest, 0x30000, nil)
	bad := append([]byte(nil), auth...)
	bad[0x10] ^= 1 // in the ID block signature's R
	refused("a signature that does not verify", "lvs", idBlockDomain("lvs", block, bad, false), "the ID auth does not verify")
	refused("author key enabled, none in the ID auth", "lva", idBlockDomain("lva", block, auth, true), "the author key is enabled but the ID auth carries none")

	// libvirt's own test domain against the example policy: the ID block's violation is
	// listed after the others.
	pol, err := filepath.Abs("../config/examples/policy.toml")
	if err != nil {
		t.Fatal(err)
	}
	e2 := newTestEnv(t, "policy_file = \""+pol+"\"\n")
	d2 := startDaemon(t, e2)
	err = d2.Client.Do(ctx, http.MethodPost, api.LibvirtDomainsPath, api.LibvirtDomainRequest{Name: "QEMUGuest1", XML: shared}, nil)
	var ae *api.Error
	if !errors.As(err, &ae) || len(ae.Violations) < 3 || ae.Violations[len(ae.Violations)-1].Rule != launch.RuleIDBlockMatchesLaunch {
		t.Fatalf("libvirt's test domain: %v %+v", err, ae)
	}

	// A matching block, with and without an author key, is registered with its digests.
	for _, author := range []*ecdsa.PrivateKey{nil, authorKey} {
		block, auth := sign(digest, 0x30000, author)
		if _, err := register("lvok", idBlockDomain("lvok", block, auth, author != nil)); err != nil {
			t.Fatalf("a matching ID block (author key %v): %v", author != nil, err)
		}
		info, err := snp.VerifyIDAuth(block, auth)
		if err != nil {
			t.Fatal(err)
		}
		dom, err := d.Client.LibvirtDomain(ctx, "lvok")
		if err != nil {
			t.Fatal(err)
		}
		r := dom.Record
		wantAuthor := ""
		if author != nil {
			wantAuthor = hex.EncodeToString(info.AuthorKeyDigest[:])
		}
		if r.IDKeyDigest != hex.EncodeToString(info.IDKeyDigest[:]) || r.AuthorKeyDigest != wantAuthor || r.IDBlockSHA256 == "" || r.ExpectedDigest != plain.ExpectedDigest {
			t.Fatalf("registration record (author key %v): %+v", author != nil, r)
		}
	}
}
