package launch

import (
	"bytes"
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// Size limits for the files snpd seals into memfds (bytes). They bound host memory used
// per launch; anything larger is refused before copying.
const (
	MaxFirmwareSize = 64 << 20
	MaxKernelSize   = 256 << 20
	MaxInitrdSize   = 1 << 30
)

// requiredSeals are the seals every SealedFile carries: nothing can change its bytes or
// size, and no seal can be removed or added afterwards.
const requiredSeals = unix.F_SEAL_WRITE | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_SEAL

// SealedFile is an immutable in-memory copy of a host file (firmware, kernel, initrd):
// a memfd with write, shrink, grow and seal seals. The digests are computed from the
// sealed memfd itself, and QEMU is handed the same memfd, so the bytes measured are the
// bytes loaded.
type SealedFile struct {
	// File is the sealed memfd (close-on-exec; passed to QEMU through ExtraFiles).
	// It is nil only in specs built by tests that never start QEMU.
	File *os.File
	// Path is the host path the bytes were copied from (informational).
	Path string
	// Size is the length in bytes.
	Size int64
	// SHA256 and SHA384 are digests of the sealed bytes.
	SHA256 [32]byte
	SHA384 [48]byte
}

// ReadAt reads from the sealed bytes (io.ReaderAt), for the measurement.
func (s *SealedFile) ReadAt(p []byte, off int64) (int, error) { return s.File.ReadAt(p, off) }

// Reader returns a fresh reader over all sealed bytes.
func (s *SealedFile) Reader() io.Reader { return io.NewSectionReader(s.File, 0, s.Size) }

// Close releases the memfd. Safe on nil.
func (s *SealedFile) Close() error {
	if s == nil || s.File == nil {
		return nil
	}
	return s.File.Close()
}

// SealFile opens path once, copies at most maxSize bytes of it into a new sealed memfd
// named name, and hashes the sealed copy. The source must be a regular file of 1..maxSize
// bytes. On error nothing is left open.
func SealFile(name, path string, maxSize int64) (*SealedFile, error) {
	src, err := openSource(name, path, maxSize)
	if err != nil {
		return nil, err
	}
	defer src.Close()
	s, err := sealReader(name, src, maxSize)
	if err != nil {
		return nil, err
	}
	s.Path = path
	return s, nil
}

// openSource opens the file to seal and checks it is a regular file of 1..maxSize bytes.
func openSource(name, path string, maxSize int64) (*os.File, error) {
	src, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", name, err)
	}
	st, err := src.Stat()
	switch {
	case err != nil:
		err = fmt.Errorf("reading %s: %w", name, err)
	case !st.Mode().IsRegular():
		err = fmt.Errorf("%s %s: not a regular file", name, path)
	case st.Size() == 0:
		err = fmt.Errorf("%s %s: file is empty", name, path)
	case st.Size() > maxSize:
		err = fmt.Errorf("%s %s: %d bytes, more than the %d allowed", name, path, st.Size(), maxSize)
	}
	if err != nil {
		src.Close()
		return nil, err
	}
	return src, nil
}

// SealBytes is SealFile for bytes already in memory (tests, generated images).
func SealBytes(name string, data []byte) (*SealedFile, error) {
	if len(data) == 0 {
		return nil, fmt.Errorf("%s: empty", name)
	}
	return sealReader(name, bytes.NewReader(data), int64(len(data)))
}

func sealReader(name string, src io.Reader, maxSize int64) (_ *SealedFile, err error) {
	fd, err := unix.MemfdCreate("snpd-"+name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("creating memfd for %s: %w", name, err)
	}
	f := os.NewFile(uintptr(fd), "memfd:snpd-"+name)
	defer func() {
		if err != nil {
			f.Close()
		}
	}()
	n, err := io.Copy(f, io.LimitReader(src, maxSize+1))
	if err != nil {
		return nil, fmt.Errorf("copying %s into memfd: %w", name, err)
	}
	if n > maxSize {
		return nil, fmt.Errorf("%s: more than the %d bytes allowed", name, maxSize)
	}
	if n == 0 {
		return nil, fmt.Errorf("%s: empty", name)
	}
	if _, err := unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, requiredSeals); err != nil {
		return nil, fmt.Errorf("sealing %s memfd: %w", name, err)
	}
	seals, err := unix.FcntlInt(f.Fd(), unix.F_GET_SEALS, 0)
	if err != nil {
		return nil, fmt.Errorf("reading %s memfd seals: %w", name, err)
	}
	if seals&requiredSeals != requiredSeals {
		return nil, errors.New("sealing " + name + " memfd: seals not in effect")
	}
	s := &SealedFile{File: f, Size: n}
	// The two digests are computed concurrently, each reading the sealed memfd.
	var wg sync.WaitGroup
	var err256, err384 error
	wg.Go(func() { err256 = hashSection(f, n, sha256.New(), s.SHA256[:0]) })
	wg.Go(func() { err384 = hashSection(f, n, sha512.New384(), s.SHA384[:0]) })
	wg.Wait()
	if err := errors.Join(err256, err384); err != nil {
		return nil, fmt.Errorf("hashing sealed %s: %w", name, err)
	}
	return s, nil
}

// hashSection hashes the first n bytes of r into h and appends the sum to dst (a
// zero-length slice of the digest array, so the sum lands in the array).
func hashSection(r io.ReaderAt, n int64, h hash.Hash, dst []byte) error {
	m, err := io.Copy(h, io.NewSectionReader(r, 0, n))
	if err != nil {
		return err
	}
	if m != n {
		return fmt.Errorf("read %d of %d bytes", m, n)
	}
	h.Sum(dst)
	return nil
}
