package config

import (
	"strings"
	"testing"
)

func TestDecodeStrictUnknownKeyHasLine(t *testing.T) {
	var vm VM
	err := DecodeStrict("vm.toml", []byte("name = \"a\"\nvcpus = 2\nbogus = 1\n[snp]\npolicy = 0x30000\nwat = true\n"), &vm)
	if err == nil {
		t.Fatal("unknown keys accepted")
	}
	for _, want := range []string{`vm.toml:3: unknown key "bogus"`, `vm.toml:6: unknown key "snp.wat"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

func TestDecodeStrictSyntaxErrorHasPosition(t *testing.T) {
	var vm VM
	err := DecodeStrict("vm.toml", []byte("name = \"a\"\nvcpus = = 2\n"), &vm)
	if err == nil || !strings.HasPrefix(err.Error(), "vm.toml:2:") {
		t.Fatalf("got %v, want an error at vm.toml:2", err)
	}
}

func TestDecodeStrictHexPolicy(t *testing.T) {
	var vm VM
	if err := DecodeStrict("vm.toml", []byte("name = \"a\"\n[snp]\npolicy = 0x30000\n"), &vm); err != nil {
		t.Fatal(err)
	}
	if vm.SNP.Policy != 0x30000 {
		t.Fatalf("policy = %#x", vm.SNP.Policy)
	}
}
