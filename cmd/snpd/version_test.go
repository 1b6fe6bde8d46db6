package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestVersionFlag: snpd --version prints its version ("dev" in a build without the
// Makefile's -ldflags) and exits 0 without starting.
func TestVersionFlag(t *testing.T) {
	var buf bytes.Buffer
	stdout = &buf
	defer func() { stdout = os.Stdout }()
	if code := run([]string{"--version"}); code != 0 || buf.String() != "snpd dev\n" {
		t.Fatalf("exit %d, output %q; want 0 and \"snpd dev\\n\"", code, buf.String())
	}
}

// TestMakeBuildStampsVersion runs make build with VERSION set and checks every binary it
// builds reports that version with --version (snpd, snpctl, snp-agent), and that without
// VERSION the Makefile takes git describe's.
func TestMakeBuildStampsVersion(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Skipf("make is not installed: %v", err)
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	cmd := exec.Command("make", "-s", "-C", root, "build", "BIN="+bin, "VERSION=1.2.3-test")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make build: %v\n%s", err, out)
	}
	for _, b := range []string{"snpd", "snp-agent", "snpctl"} {
		out, err := exec.Command(filepath.Join(bin, b), "--version").CombinedOutput()
		if err != nil || string(out) != b+" 1.2.3-test\n" {
			t.Errorf("%s --version: %v, %q; want %q", b, err, out, b+" 1.2.3-test\n")
		}
	}

	want := "dev"
	if out, err := exec.Command("git", "-C", root, "describe", "--tags", "--always", "--dirty").Output(); err == nil {
		want = strings.TrimSpace(string(out))
	}
	out, err := exec.Command("make", "-n", "-C", root, "build").CombinedOutput()
	if err != nil {
		t.Fatalf("make -n build: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "-X main.version="+want+" -X github.com/snpd/snpd/daemon.Version="+want) {
		t.Errorf("make build does not stamp git describe's %q:\n%s", want, out)
	}
}
