package snp

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func idbPEM(t testing.TB, typ string, der []byte) []byte {
	t.Helper()
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

// idbOpenSSL runs openssl (no shell) and returns the file it wrote.
func idbOpenSSL(t *testing.T, out string, args ...string) []byte {
	t.Helper()
	path, err := exec.LookPath("openssl")
	if err != nil {
		t.Skipf("openssl not installed: %v", err)
	}
	cmd := exec.Command(path, args...)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v: %v\n%s", cmd.Args, err, b)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestParsePrivateKeyPEMOpenSSL(t *testing.T) {
	dir := t.TempDir()
	sec1 := filepath.Join(dir, "sec1.pem")
	// `openssl ecparam -genkey` writes an EC PARAMETERS block before the key.
	sec1Data := idbOpenSSL(t, sec1, "ecparam", "-name", "secp384r1", "-genkey", "-out", sec1)
	if !strings.Contains(string(sec1Data), "EC PARAMETERS") {
		t.Fatalf("openssl ecparam output has no EC PARAMETERS block:\n%s", sec1Data)
	}
	pkcs8 := filepath.Join(dir, "pkcs8.pem")
	pkcs8Data := idbOpenSSL(t, pkcs8, "pkcs8", "-topk8", "-nocrypt", "-in", sec1, "-out", pkcs8)
	enc := filepath.Join(dir, "enc.pem")
	encData := idbOpenSSL(t, enc, "pkcs8", "-topk8", "-passout", "pass:x", "-in", sec1, "-out", enc)
	pub := filepath.Join(dir, "pub.pem")
	pubData := idbOpenSSL(t, pub, "ec", "-in", sec1, "-pubout", "-out", pub)
	p256 := filepath.Join(dir, "p256.pem")
	p256Data := idbOpenSSL(t, p256, "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", p256)

	k1, err := ParsePrivateKeyPEM(sec1Data)
	if err != nil {
		t.Fatalf("SEC 1 key from openssl: %v", err)
	}
	k2, err := ParsePrivateKeyPEM(pkcs8Data)
	if err != nil {
		t.Fatalf("PKCS #8 key from openssl: %v", err)
	}
	if !k1.Equal(k2) {
		t.Fatal("SEC 1 and PKCS #8 forms of one key parse differently")
	}
	for name, tc := range map[string]struct {
		data []byte
		want string
	}{
		"encrypted":   {encData, "encrypted"},
		"public key":  {pubData, "a private key is needed"},
		"P-256":       {p256Data, "P-384"},
		"truncated":   {sec1Data[:len(sec1Data)-40], "no complete PEM"},
		"garbage DER": {idbPEM(t, "EC PRIVATE KEY", []byte("nope")), "parsing private key PEM"},
	} {
		_, err := ParsePrivateKeyPEM(tc.data)
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: err = %v, want one line containing %q", name, err, tc.want)
		}
	}
}

func TestParsePrivateKeyPEMBadInput(t *testing.T) {
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sec1, err := x509.MarshalECPrivateKey(p384)
	if err != nil {
		t.Fatal(err)
	}
	p521, err := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p521DER, err := x509.MarshalPKCS8PrivateKey(p521)
	if err != nil {
		t.Fatal(err)
	}
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	edDER, err := x509.MarshalPKCS8PrivateKey(edKey)
	if err != nil {
		t.Fatal(err)
	}
	good := idbPEM(t, "EC PRIVATE KEY", sec1)
	if k, err := ParsePrivateKeyPEM(good); err != nil || !k.Equal(p384) {
		t.Fatalf("valid SEC 1 key: %v", err)
	}
	for name, tc := range map[string]struct {
		data []byte
		want string
	}{
		"empty":          {nil, "no complete PEM"},
		"not PEM":        {[]byte("hello"), "no complete PEM"},
		"P-521 PKCS8":    {idbPEM(t, "PRIVATE KEY", p521DER), "P-384"},
		"ed25519 PKCS8":  {idbPEM(t, "PRIVATE KEY", edDER), "ECDSA P-384"},
		"two keys":       {append(append([]byte{}, good...), good...), "after the private key"},
		"certificate":    {idbPEM(t, "CERTIFICATE", []byte{1}), "private key is needed"},
		"unknown block":  {idbPEM(t, "RSA PRIVATE KEY", []byte{1}), "unexpected"},
		"params only":    {idbPEM(t, "EC PARAMETERS", []byte{1}), "no complete PEM"},
		"header damaged": {[]byte(strings.Replace(string(good), "-----END", "----END", 1)), "no complete PEM"},
	} {
		_, err := ParsePrivateKeyPEM(tc.data)
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: err = %v, want one line containing %q", name, err, tc.want)
		}
	}
}

func FuzzParsePrivateKeyPEM(f *testing.F) {
	k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	sec1, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		f.Fatal(err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(idbPEM(f, "EC PRIVATE KEY", sec1))
	f.Add(idbPEM(f, "PRIVATE KEY", pkcs8))
	f.Add([]byte("-----BEGIN EC PARAMETERS-----\nBgUrgQQAIg==\n-----END EC PARAMETERS-----\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		key, err := ParsePrivateKeyPEM(data)
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("multi-line error: %q", err)
			}
			return
		}
		if key.Curve != elliptic.P384() {
			t.Fatalf("accepted a key on %s", key.Curve.Params().Name)
		}
		if _, err := IDKeyDigest(&key.PublicKey); err != nil {
			t.Fatalf("accepted key has no digest: %v", err)
		}
	})
}
