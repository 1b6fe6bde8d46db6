package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"encoding/xml"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/snpd/snpd/snp"
	"github.com/snpd/snpd/snp/snptest"
	"libvirt.org/go/libvirtxml"
)

// idbRun runs the binary and returns stdout, stderr and the exit status.
func idbRun(t *testing.T, bin string, args ...string) (string, string, int) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("running %v: %v", cmd.Args, err)
		}
		code = ee.ExitCode()
	}
	return stdout.String(), stderr.String(), code
}

// idbShared returns <repo root>/../shared/testdata/snp, or skips when it is absent.
func idbShared(t *testing.T) string {
	t.Helper()
	return filepath.Join(snptest.SharedDir(t, "testdata/snp/vectors.tsv"), "testdata", "snp")
}

func idbWriteKey(t *testing.T, k *ecdsa.PrivateKey) string {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "key.pem")
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func idbGenKey(t *testing.T, c elliptic.Curve) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(c, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestIDBlockCmdKnownAnswer runs the reference's own command line (vectors.tsv id-block
// row) and compares the deterministic parts of the output byte for byte.
func TestIDBlockCmdKnownAnswer(t *testing.T) {
	shared := idbShared(t)
	data, err := os.ReadFile(filepath.Join(shared, "vectors.tsv"))
	if err != nil {
		t.Fatal(err)
	}
	var args []string
	var want []string
	for _, line := range strings.Split(string(data), "\n") {
		cols := strings.Split(line, "\t")
		if len(cols) >= 7 && strings.HasPrefix(cols[0], "id-block-") {
			args = strings.Fields(cols[4])
			want = strings.Split(strings.ReplaceAll(cols[6], `\n`, "\n"), "\n")
		}
	}
	if len(args) < 2 || args[0] != "snp-create-id-block" || len(want) != 3 {
		t.Fatalf("id-block row of vectors.tsv not found or malformed: %q", args)
	}
	args = args[1:]
	for i, a := range args {
		if strings.HasPrefix(a, "upstream/") {
			args[i] = filepath.Join(shared, a)
		}
	}
	bin := snpctlBuild(t)
	out, stderr, code := idbRun(t, bin, append([]string{"id-block"}, args...)...)
	t.Logf("snpctl id-block %q", args)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	got := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(got) != 3 {
		t.Fatalf("got %d lines, want 3:\n%s", len(got), out)
	}
	wantBlock, _, _ := strings.Cut(want[0], ",")
	gotBlock, gotAuth, _ := strings.Cut(got[0], ",")
	if gotBlock != wantBlock || got[1] != want[1] || got[2] != want[2] {
		t.Fatalf("output differs from the reference:\n got %q\nwant %q", []string{gotBlock, got[1], got[2]}, []string{wantBlock, want[1], want[2]})
	}
	block, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(gotBlock, "id-block="))
	auth, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(gotAuth, "id-auth="))
	if err != nil {
		t.Fatalf("id-auth is not base64: %v", err)
	}
	if _, err := snp.VerifyIDAuth(block, auth); err != nil {
		t.Fatalf("printed ID auth does not verify: %v", err)
	}

	// `id-block verify` accepts the reference's own pair and prints its key digests.
	refBlock := strings.TrimPrefix(wantBlock, "id-block=")
	_, refAuth, _ := strings.Cut(want[0], ",id-auth=")
	out, stderr, code = idbRun(t, bin, "id-block", "verify", "--id-block", refBlock, "--id-auth", refAuth, "--json")
	if code != 0 {
		t.Fatalf("verify of the reference's pair: exit %d: %s", code, stderr)
	}
	var v idBlockVerifyOutput
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatal(err)
	}
	b64hex := func(line, prefix string) string {
		raw, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(line, prefix))
		return hex.EncodeToString(raw)
	}
	if v.IDKeyDigest != b64hex(want[1], "id_key_hash: ") || v.AuthorKeyDigest != b64hex(want[2], "author_key: ") ||
		v.Policy != "0x30000" || v.Keyless {
		t.Fatalf("verify output %+v does not match the reference digests", v)
	}
	// A changed ID block no longer verifies: exit 1, one line.
	badBlock := []byte(refBlock)
	badBlock[0] ^= 'B' ^ 'C'
	out, stderr, code = idbRun(t, bin, "id-block", "verify", "--id-block", string(badBlock), "--id-auth", refAuth)
	if code != 1 || out != "" || !strings.HasPrefix(stderr, "Error: verifying ID block signature") || strings.Count(stderr, "\n") != 1 {
		t.Fatalf("verify of a changed block: exit %d, stdout %q, stderr %q", code, out, stderr)
	}
}

// idbQOMGet starts QEMU paused with objectJSON (-object, JSON syntax) and reads props of
// /objects/<id> back over QMP on stdio.
func idbQOMGet(t *testing.T, objectJSON, id string, props ...string) (map[string]json.RawMessage, string) {
	t.Helper()
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skipf("qemu-system-x86_64 not installed (scripts/install-deps.sh installs it): %v", err)
	}
	var in strings.Builder
	in.WriteString(`{"execute":"qmp_capabilities"}` + "\n")
	for i, p := range props {
		cmd, _ := json.Marshal(map[string]any{"execute": "qom-get", "id": i, "arguments": map[string]string{"path": "/objects/" + id, "property": p}})
		in.Write(append(cmd, '\n'))
	}
	in.WriteString(`{"execute":"quit"}` + "\n")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, qemu, "-machine", "none", "-nodefaults", "-no-user-config",
		"-display", "none", "-S", "-object", objectJSON, "-qmp", "stdio")
	t.Logf("argv: %q", cmd.Args)
	cmd.Stdin = strings.NewReader(in.String())
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, strings.TrimSpace(stderr.String())
	}
	got := map[string]json.RawMessage{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var reply struct {
			ID     *int            `json:"id"`
			Return json.RawMessage `json:"return"`
			Error  json.RawMessage `json:"error"`
		}
		if json.Unmarshal(sc.Bytes(), &reply) != nil || reply.ID == nil {
			continue
		}
		if reply.Error != nil {
			t.Fatalf("qom-get %s: %s", props[*reply.ID], reply.Error)
		}
		got[props[*reply.ID]] = reply.Return
	}
	return got, ""
}

func TestIDBlockCmdFormats(t *testing.T) {
	bin := snpctlBuild(t)
	author := idbGenKey(t, elliptic.P384())
	authorPath := idbWriteKey(t, author)
	idPath := idbWriteKey(t, idbGenKey(t, elliptic.P384()))
	m := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{0xab}, 48))
	common := []string{"id-block", "--measurement", m, "--policy", "0x30000", "--guest-svn", "3",
		"--family-id", "00112233-4455-6677-8899-aabbccddeeff", "--image-id", "0102030405060708090a0b0c0d0e0f10"}

	checkPair := func(t *testing.T, block, auth string, wantAuthor, wantKeyless bool) *snp.IDAuthInfo {
		t.Helper()
		b, err1 := base64.StdEncoding.DecodeString(block)
		a, err2 := base64.StdEncoding.DecodeString(auth)
		if err1 != nil || err2 != nil {
			t.Fatalf("blobs are not base64: %v %v", err1, err2)
		}
		info, err := snp.VerifyIDAuth(b, a)
		if err != nil {
			t.Fatal(err)
		}
		if info.HasAuthorKey != wantAuthor || info.Keyless != wantKeyless || info.Block.GuestSVN != 3 ||
			info.Block.FamilyID != [16]byte{0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff} ||
			info.Block.ImageID != [16]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16} {
			t.Fatalf("info = %+v", info)
		}
		return info
	}

	t.Run("qemu", func(t *testing.T) {
		for _, tc := range []struct {
			args       []string
			author     bool
			keyless    bool
			wantEnable string
		}{
			{[]string{"--keyless", "--authorkey", authorPath}, true, true, "true"},
			{[]string{"--idkey", idPath}, false, false, "false"},
		} {
			out, stderr, code := idbRun(t, bin, append(append(common, tc.args...), "--format", "qemu")...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			var frag map[string]any
			if err := json.Unmarshal([]byte("{"+strings.TrimSpace(out)+"}"), &frag); err != nil {
				t.Fatalf("fragment is not JSON members: %v\n%s", err, out)
			}
			checkPair(t, frag["id-block"].(string), frag["id-auth"].(string), tc.author, tc.keyless)
			// Real QEMU accepts the fragment in its JSON -object syntax and stores the
			// values unchanged (it checks the ID block and ID auth lengths itself).
			obj := `{"qom-type":"sev-snp-guest","id":"lsec0","cbitpos":51,"reduced-phys-bits":1,"policy":196608,` + strings.TrimSpace(out) + "}"
			got, qerr := idbQOMGet(t, obj, "lsec0", "id-block", "id-auth", "author-key-enabled")
			if qerr != "" {
				t.Fatalf("QEMU rejected the fragment: %s", qerr)
			}
			if string(got["id-block"]) != `"`+frag["id-block"].(string)+`"` ||
				string(got["id-auth"]) != `"`+frag["id-auth"].(string)+`"` ||
				string(got["author-key-enabled"]) != tc.wantEnable {
				t.Fatalf("QEMU holds different values: %s", got)
			}
		}
		// The QEMU check above can fail: a 95-byte ID block is refused.
		short := base64.StdEncoding.EncodeToString(make([]byte, 95))
		if _, qerr := idbQOMGet(t, `{"qom-type":"sev-snp-guest","id":"x","cbitpos":51,"reduced-phys-bits":1,"id-block":"`+short+`"}`, "x", "id-block"); qerr == "" {
			t.Fatal("QEMU accepted a 95-byte id-block; the check above proves nothing")
		}
	})

	t.Run("libvirt", func(t *testing.T) {
		out, stderr, code := idbRun(t, bin, append(append(common, "--idkey", idPath, "--authorkey", authorPath), "--format", "libvirt")...)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		var ls libvirtxml.DomainLaunchSecurity
		if err := xml.Unmarshal([]byte(out), &ls); err != nil {
			t.Fatalf("not a launchSecurity element: %v\n%s", err, out)
		}
		if !strings.HasPrefix(out, "<launchSecurity ") || ls.SEVSNP == nil || ls.SEVSNP.AuthorKey != "yes" ||
			ls.SEVSNP.Policy == nil || *ls.SEVSNP.Policy != 0x30000 {
			t.Fatalf("unexpected launchSecurity:\n%s", out)
		}
		checkPair(t, ls.SEVSNP.IDBlock, ls.SEVSNP.IDAuth, true, false)
	})

	t.Run("json", func(t *testing.T) {
		out, stderr, code := idbRun(t, bin, append(append(common, "--idkey", idPath, "--authorkey", authorPath), "--format", "json")...)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		var v struct {
			IDBlock, IDAuth, IDKeyDigest, AuthorKeyDigest, Policy string
			AuthorKeyEnabled, Keyless                             bool
		}
		dec := json.NewDecoder(strings.NewReader(out))
		if err := dec.Decode(&struct {
			IDBlock          *string `json:"id_block"`
			IDAuth           *string `json:"id_auth"`
			IDKeyDigest      *string `json:"id_key_digest"`
			AuthorKeyDigest  *string `json:"author_key_digest"`
			AuthorKeyEnabled *bool   `json:"author_key_enabled"`
			Keyless          *bool   `json:"keyless"`
			Policy           *string `json:"policy"`
		}{&v.IDBlock, &v.IDAuth, &v.IDKeyDigest, &v.AuthorKeyDigest, &v.AuthorKeyEnabled, &v.Keyless, &v.Policy}); err != nil {
			t.Fatal(err)
		}
		info := checkPair(t, v.IDBlock, v.IDAuth, true, false)
		wantAuthor, _ := snp.IDKeyDigest(&author.PublicKey)
		if v.IDKeyDigest != hex.EncodeToString(info.IDKeyDigest[:]) || v.AuthorKeyDigest != hex.EncodeToString(wantAuthor[:]) ||
			!v.AuthorKeyEnabled || v.Keyless || v.Policy != "0x30000" {
			t.Fatalf("json = %+v", v)
		}
	})
}

func TestIDBlockCmdBadInput(t *testing.T) {
	bin := snpctlBuild(t)
	dir := t.TempDir()
	good := idbWriteKey(t, idbGenKey(t, elliptic.P384()))
	p256 := idbWriteKey(t, idbGenKey(t, elliptic.P256()))
	goodPEM, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	truncated := filepath.Join(dir, "truncated.pem")
	if err := os.WriteFile(truncated, goodPEM[:len(goodPEM)/2], 0o600); err != nil {
		t.Fatal(err)
	}
	k := idbGenKey(t, elliptic.P384())
	pubDER, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	public := filepath.Join(dir, "public.pem")
	if err := os.WriteFile(public, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	m := base64.StdEncoding.EncodeToString(make([]byte, 48))
	m47 := base64.StdEncoding.EncodeToString(make([]byte, 47))
	for name, tc := range map[string]struct {
		args []string
		want string
	}{
		"wrong curve":             {[]string{"--measurement", m, "--idkey", p256}, "P-384"},
		"wrong curve author":      {[]string{"--measurement", m, "--idkey", good, "--authorkey", p256}, "P-384"},
		"truncated PEM":           {[]string{"--measurement", m, "--idkey", truncated}, "PEM"},
		"public key":              {[]string{"--measurement", m, "--idkey", public}, "private key is needed"},
		"measurement 47 bytes":    {[]string{"--measurement", m47, "--idkey", good}, "47 bytes, want 48"},
		"measurement hex 47":      {[]string{"--measurement", strings.Repeat("ab", 47), "--idkey", good}, "96 hex digits"},
		"author without ID key":   {[]string{"--measurement", m, "--authorkey", good}, "--authorkey needs --idkey"},
		"bad base64":              {[]string{"--measurement", "not*base64", "--idkey", good}, "base64"},
		"no measurement":          {[]string{"--idkey", good}, "--measurement is required"},
		"no key":                  {[]string{"--measurement", m}, "--idkey or --keyless"},
		"keyless and idkey":       {[]string{"--measurement", m, "--keyless", "--idkey", good}, "exclude"},
		"missing key file":        {[]string{"--measurement", m, "--idkey", filepath.Join(dir, "nope.pem")}, "no such file"},
		"policy reserved bit":     {[]string{"--measurement", m, "--keyless", "--policy", "0x10000"}, "policy"},
		"policy not a number":     {[]string{"--measurement", m, "--keyless", "--policy", "strict"}, "--policy"},
		"family id short":         {[]string{"--measurement", m, "--keyless", "--family-id", "0011"}, "--family-id"},
		"image id not hex":        {[]string{"--measurement", m, "--keyless", "--image-id", strings.Repeat("z", 32)}, "--image-id"},
		"unknown format":          {[]string{"--measurement", m, "--keyless", "--format", "yaml"}, "--format"},
		"positional argument":     {[]string{"--measurement", m, "--keyless", "extra"}, "unknown command"},
		"guest svn out of range":  {[]string{"--measurement", m, "--keyless", "--guest-svn", "4294967296"}, "guest-svn"},
		"measurement with spaces": {[]string{"--measurement", " " + m, "--keyless"}, "base64"},
	} {
		t.Run(name, func(t *testing.T) {
			out, stderr, code := idbRun(t, bin, append([]string{"id-block"}, tc.args...)...)
			if code != 1 || out != "" {
				t.Fatalf("exit %d, stdout %q; want exit 1 and no output", code, out)
			}
			if !strings.HasPrefix(stderr, "Error: ") || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, tc.want) {
				t.Fatalf("stderr = %q, want one line \"Error: ...%s...\"", stderr, tc.want)
			}
		})
	}
}
