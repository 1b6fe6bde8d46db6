package main

import (
	"os/exec"
	"path/filepath"
	"testing"
)

// TestVersionFlag builds snp-agent as go build does (no -ldflags) and checks --version
// prints "snp-agent dev" (TestMakeBuildStampsVersion in cmd/snpd checks make's builds).
func TestVersionFlag(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "snp-agent")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "--version").CombinedOutput()
	if err != nil || string(out) != "snp-agent dev\n" {
		t.Fatalf("--version: %v, %q", err, out)
	}
}
