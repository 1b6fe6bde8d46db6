package launch

import (
	"bytes"
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

func TestSealFile(t *testing.T) {
	data := bytes.Repeat([]byte("snpd firmware "), 3000)
	path := filepath.Join(t.TempDir(), "fw.bin")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := SealFile("firmware", path, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Size != int64(len(data)) || s.SHA256 != sha256.Sum256(data) || s.SHA384 != sha512.Sum384(data) {
		t.Fatalf("size %d digests %x: not those of the file", s.Size, s.SHA256)
	}
	seals, err := unix.FcntlInt(s.File.Fd(), unix.F_GET_SEALS, 0)
	if err != nil || seals&requiredSeals != requiredSeals {
		t.Fatalf("seals %#x (%v), want %#x", seals, err, requiredSeals)
	}
	// Nobody can change the bytes any more: not by write, truncate, or a writable mmap.
	if _, err := s.File.WriteAt([]byte("x"), 0); err == nil {
		t.Fatal("write to sealed memfd succeeded")
	}
	if err := s.File.Truncate(1); err == nil {
		t.Fatal("truncate of sealed memfd succeeded")
	}
	if _, err := unix.Mmap(int(s.File.Fd()), 0, 4096, unix.PROT_WRITE, unix.MAP_SHARED); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("writable shared mmap of sealed memfd: %v, want EPERM", err)
	}
	// Changing the source afterwards changes nothing in the sealed copy.
	if err := os.WriteFile(path, []byte("evil"), 0o600); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	if _, err := s.ReadAt(got, 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("sealed bytes changed with the source (%v)", err)
	}
	// Reopening through /proc/self/fd (what QEMU does) gives the same bytes.
	re, err := os.ReadFile("/proc/self/fd/" + strconv.Itoa(int(s.File.Fd())))
	if err != nil || !bytes.Equal(re, data) {
		t.Fatalf("reopened memfd: %d bytes, %v", len(re), err)
	}
}

func TestSealFileRefuses(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	big := filepath.Join(dir, "big")
	os.WriteFile(empty, nil, 0o600)
	os.WriteFile(big, make([]byte, 8193), 0o600)
	for _, c := range []struct{ path, want string }{
		{filepath.Join(dir, "missing"), "opening firmware"},
		{dir, "not a regular file"},
		{empty, "file is empty"},
		{big, "8193 bytes, more than the 8192 allowed"},
		{"/dev/zero", "not a regular file"},
	} {
		s, err := SealFile("firmware", c.path, 8192)
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			s.Close()
			t.Errorf("%s: %v, want one line with %q", c.path, err, c.want)
		}
	}
}

func TestSealBytes(t *testing.T) {
	s, err := SealBytes("kernel", []byte("abc"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.SHA256 != sha256.Sum256([]byte("abc")) {
		t.Fatal("digest")
	}
	if _, err := SealBytes("kernel", nil); err == nil {
		t.Fatal("empty accepted")
	}
}
