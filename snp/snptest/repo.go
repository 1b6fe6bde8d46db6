package snptest

import (
	"os"
	"path/filepath"
	"testing"
)

// RepoRoot returns the module root (the directory holding go.mod), found upward from the
// test's working directory (its package directory under go test).
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("repository root (go.mod) not found above the test directory")
		}
		dir = parent
	}
}

// SharedDir returns <repo root>/../shared, the project's shared test data (beside the
// clone, never committed), skipping the test with a message naming the missing path when
// any of need (paths relative to shared/) is absent.
func SharedDir(t testing.TB, need ...string) string {
	t.Helper()
	dir := filepath.Join(filepath.Dir(RepoRoot(t)), "shared")
	for _, rel := range append([]string{""}, need...) {
		p := filepath.Join(dir, rel)
		if _, err := os.Stat(p); err != nil {
			t.Skipf("shared test data %s is absent (clone shared/ beside the repository): %v", p, err)
		}
	}
	return dir
}

// ReadShared reads the file rel (relative to shared/), skipping the test when it is
// absent as SharedDir does.
func ReadShared(t testing.TB, rel string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(SharedDir(t, rel), rel))
	if err != nil {
		t.Fatal(err)
	}
	return b
}
