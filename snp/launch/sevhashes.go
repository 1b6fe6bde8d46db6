package launch

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
)

// SEVHashTableSize is the size of the padded SEV hashes table QEMU writes into the
// guest (and that SEV/SEV-ES measure): header + 3 entries, rounded up to 16 bytes.
const SEVHashTableSize = (16 + 2 + 3*(16+2+32) + 15) &^ 15

// SEVHashes holds the SHA-256 digests of the direct-boot inputs QEMU places in the
// SEV hashes table.
type SEVHashes struct {
	Kernel  [32]byte // SHA-256 of the kernel file
	Initrd  [32]byte // SHA-256 of the initrd; of the empty string when there is none
	Cmdline [32]byte // SHA-256 of the command line plus its NUL terminator
}

// HashDirectBoot hashes a kernel, an optional initrd (nil: none) and a command line
// the way QEMU does for the SEV hashes table. The readers are streamed, never held.
func HashDirectBoot(kernel, initrd io.Reader, cmdline string) (SEVHashes, error) {
	var h SEVHashes
	k := sha256.New()
	if _, err := io.Copy(k, kernel); err != nil {
		return h, fmt.Errorf("hashing kernel: %w", err)
	}
	copy(h.Kernel[:], k.Sum(nil))
	i := sha256.New()
	if initrd != nil {
		if _, err := io.Copy(i, initrd); err != nil {
			return h, fmt.Errorf("hashing initrd: %w", err)
		}
	}
	copy(h.Initrd[:], i.Sum(nil))
	h.Cmdline = sha256.Sum256(append([]byte(cmdline), 0))
	return h, nil
}

// Table returns the padded SEV hashes table (SEVHashTableSize bytes) exactly as QEMU
// builds it: cmdline, initrd, kernel entries.
func (h SEVHashes) Table() []byte {
	const entry = 16 + 2 + 32
	ht := make([]byte, SEVHashTableSize)
	copy(ht[0:16], guidSEVHashHeader[:])
	binary.LittleEndian.PutUint16(ht[16:18], 16+2+3*entry)
	e := 18
	for _, it := range []struct {
		g GUID
		d [32]byte
	}{{guidSEVCmdline, h.Cmdline}, {guidSEVInitrd, h.Initrd}, {guidSEVKernel, h.Kernel}} {
		copy(ht[e:e+16], it.g[:])
		binary.LittleEndian.PutUint16(ht[e+16:e+18], entry)
		copy(ht[e+18:e+entry], it.d[:])
		e += entry
	}
	return ht
}

// Page returns the 4096-byte page holding the table at offset (the low 12 bits of the
// table's GPA), zero elsewhere.
func (h SEVHashes) Page(offset uint32) ([]byte, error) {
	if int(offset)+SEVHashTableSize > PageSize {
		return nil, fmt.Errorf("SEV hashes table at page offset %#x does not fit in the page", offset)
	}
	p := make([]byte, PageSize)
	copy(p[offset:], h.Table())
	return p, nil
}
