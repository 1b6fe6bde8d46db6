package snptest

import (
	"encoding/binary"
	"os"
	"testing"
)

// TestPEChecksum: the checksum of Debian's systemd-stub, as its linker wrote it, is
// what PEChecksum computes (so ResetPETimestamp writes a valid one).
func TestPEChecksum(t *testing.T) {
	b, err := os.ReadFile(DefaultUKIStub)
	if err != nil {
		t.Skipf("systemd-stub %s is absent (package systemd-boot-efi; run scripts/install-deps.sh as root): %v", DefaultUKIStub, err)
	}
	_, cs, err := peCheckSumOffset(b)
	if err != nil {
		t.Fatal(err)
	}
	got, err := PEChecksum(b)
	if err != nil {
		t.Fatal(err)
	}
	if want := binary.LittleEndian.Uint32(b[cs:]); got != want || want == 0 {
		t.Fatalf("checksum %#x, the stub says %#x", got, want)
	}
	if _, err := PEChecksum([]byte("MZ")); err == nil {
		t.Fatal("checksum of a non-PE file")
	}
}
