package launch

import (
	"bytes"
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/snpd/snpd/config"
	"github.com/snpd/snpd/daemon/api"
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

// openSource opens the file to seal (OpenBootFile) and checks it is 1..maxSize bytes.
func openSource(name, path string, maxSize int64) (*os.File, error) {
	src, st, err := OpenBootFile(name, path)
	if err != nil {
		return nil, err
	}
	switch {
	case st.Size() == 0:
		err = fmt.Errorf("%s %s: file is empty: %w", name, path, api.ErrInvalid)
	case st.Size() > maxSize:
		err = fmt.Errorf("%s %s: %d bytes, more than the %d allowed: %w", name, path, st.Size(), maxSize, api.ErrInvalid)
	}
	if err != nil {
		src.Close()
		return nil, err
	}
	return src, nil
}

// OpenBootFile opens a file a definition names (firmware, kernel, initrd, a key; name
// says which) for reading without ever blocking: anything but a regular file is refused
// by stat before it is opened, and the open itself is O_NONBLOCK, so a FIFO or device
// swapped in after that stat is opened at once and refused by fstat instead of hanging
// the launch (a FIFO opened for reading blocks until a writer appears, forever if none
// does). A path that is missing or not a regular file is a definition problem: the
// error wraps api.ErrInvalid and names the file. The caller closes the file.
func OpenBootFile(name, path string) (*os.File, os.FileInfo, error) {
	if st, err := os.Stat(path); err == nil && !st.Mode().IsRegular() {
		return nil, nil, fmt.Errorf("%w: %w", notRegular(name, path, st.Mode()), api.ErrInvalid)
	}
	if testHookBeforeOpen != nil {
		testHookBeforeOpen(path)
	}
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY, 0)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ELOOP) {
			return nil, nil, fmt.Errorf("opening %s: %w: %w", name, err, api.ErrInvalid)
		}
		return nil, nil, fmt.Errorf("opening %s: %w", name, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("reading %s %s: %w", name, path, err)
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, nil, fmt.Errorf("%w: %w", notRegular(name, path, st.Mode()), api.ErrInvalid)
	}
	return f, st, nil
}

// testHookBeforeOpen, when set (tests only), runs between OpenBootFile's stat and open.
var testHookBeforeOpen func(path string)

// CheckBootFile refuses a boot file path that exists and is not a regular file (by
// stat: nothing is opened), as OpenBootFile would; a missing file is no error here (it
// is one at start). For checking definitions when they are defined: the error has no
// kind (the caller's validation error wraps api.ErrInvalid).
func CheckBootFile(name, path string) error {
	if st, err := os.Stat(path); err == nil && !st.Mode().IsRegular() {
		return notRegular(name, path, st.Mode())
	}
	return nil
}

// CheckBootFiles is CheckBootFile for a definition's firmware, kernel, initrd and key
// files (absolute paths only; Validate reports the others), every problem joined.
func CheckBootFiles(vm *config.VM) error {
	var errs []error
	for _, f := range []struct{ name, path string }{
		{"firmware", vm.Firmware}, {"kernel", vm.Kernel}, {"initrd", vm.Initrd},
		{"snp.id_key_file", vm.SNP.IDKeyFile}, {"snp.author_key_file", vm.SNP.AuthorKeyFile},
	} {
		if filepath.IsAbs(f.path) {
			errs = append(errs, CheckBootFile(f.name, f.path))
		}
	}
	return errors.Join(errs...)
}

func notRegular(name, path string, m fs.FileMode) error {
	return fmt.Errorf("%s %s: not a regular file (%s)", name, path, fileKind(m))
}

// fileKind names what a non-regular file is.
func fileKind(m fs.FileMode) string {
	switch {
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe (FIFO), which would block the launch"
	case m.IsDir():
		return "a directory"
	case m&fs.ModeCharDevice != 0:
		return "a character device"
	case m&fs.ModeDevice != 0:
		return "a block device"
	case m&fs.ModeSocket != 0:
		return "a socket"
	}
	return "mode " + m.Type().String()
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
