package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// goBuild builds the package pkg (a path relative to cmd/snpctl) into the file out as
// make build does: static (CGO_ENABLED=0), with the given build tags.
func goBuild(t *testing.T, out, pkg string, tags ...string) {
	t.Helper()
	args := []string{"build"}
	if len(tags) > 0 {
		args = append(args, "-tags", strings.Join(tags, ","))
	}
	cmd := exec.Command("go", append(args, "-o", out, pkg)...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(cmd.Args[1:], " "), err, b)
	}
}

// snpctlBuild builds the full snpctl into a temporary directory and returns its path.
func snpctlBuild(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "snpctl")
	goBuild(t, bin, ".")
	return bin
}
