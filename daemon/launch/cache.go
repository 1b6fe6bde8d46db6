package launch

import (
	"container/list"
	"errors"
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// Launches of many VMs from the same firmware, kernel and initrd repeat the same work:
// copying each file into a memfd, hashing it twice, and hashing it page by page again for
// the launch digest. On a host starting 20 guests at once that work, not QEMU, was most
// of snpd's CPU time, and it competed with the API (BenchmarkStart20WhileListing). Two
// caches remove it without weakening what a launch guarantees:
//
//   - sealCache keeps sealed memfds. A sealed memfd cannot change (F_SEAL_WRITE, SHRINK,
//     GROW, SEAL), so its digests stay true for as long as it exists, and several QEMUs
//     may read it (each opens /proc/self/fd/N anew, with its own offset). A launch reuses
//     one only while the file it was copied from is the same file, unchanged: same
//     device, inode, size, modification and change time (fstat of the opened file). Any
//     write or replacement changes the change time or inode, and the next launch seals
//     the file anew. Whatever is reused, the launch record describes exactly the bytes
//     QEMU gets.
//   - measureCache keeps launch digests by everything the digest depends on, with the
//     boot files identified by the SHA-384 of their sealed bytes.

// sealKey identifies a source file's contents by its metadata (see above).
type sealKey struct {
	name         string // firmware, kernel, initrd: the size limit differs
	dev, ino     uint64
	size         int64
	mtime, ctime unix.Timespec
}

func statKey(name string, f *os.File) (sealKey, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return sealKey{}, err
	}
	return sealKey{name: name, dev: st.Dev, ino: st.Ino, size: st.Size, mtime: st.Mtim, ctime: st.Ctim}, nil
}

// sealCache is a bounded LRU of sealed memfds. The zero value is ready; safe for
// concurrent use.
type sealCache struct {
	// MaxBytes bounds the sealed bytes kept (memfd memory); 0 means defaultSealCacheBytes.
	// Files larger than a quarter of it are sealed but never kept.
	MaxBytes int64

	mu    sync.Mutex
	lru   list.List // of *sealEntry, most recently used first
	byKey map[sealKey]*list.Element
	bytes int64
}

// defaultSealCacheBytes bounds sealCache: the firmware, kernel and initrd of a few
// distinct guests.
const defaultSealCacheBytes = 256 << 20

type sealEntry struct {
	key  sealKey
	file *SealedFile // the cache's own memfd; handed out as duplicates
}

func (c *sealCache) maxBytes() int64 {
	if c.MaxBytes > 0 {
		return c.MaxBytes
	}
	return defaultSealCacheBytes
}

// Seal returns a sealed copy of the file at path like SealFile, from the cache when the
// file is unchanged since it was last sealed. The caller owns (closes) the result.
func (c *sealCache) Seal(name, path string, maxSize int64) (*SealedFile, error) {
	src, err := openSource(name, path, maxSize)
	if err != nil {
		return nil, err
	}
	defer src.Close()
	before, err := statKey(name, src)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", name, err)
	}
	if s, err := c.lookup(before, path); s != nil || err != nil {
		return s, err
	}
	s, err := sealReader(name, src, maxSize)
	if err != nil {
		return nil, err
	}
	s.Path = path
	// Kept only if the file did not change while it was copied (the bytes sealed are
	// then the bytes the key names).
	if after, err := statKey(name, src); err == nil && after == before && s.Size == before.size {
		c.store(before, s)
	}
	return s, nil
}

// lookup returns a duplicate of the cached memfd for k (nil, nil: not cached).
func (c *sealCache) lookup(k sealKey, path string) (*SealedFile, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.byKey[k]
	if !ok {
		return nil, nil
	}
	c.lru.MoveToFront(el)
	s, err := el.Value.(*sealEntry).file.dup()
	if err != nil {
		return nil, err
	}
	s.Path = path
	return s, nil
}

// store keeps a duplicate of s under k, evicting the least recently used entries
// beyond MaxBytes.
func (c *sealCache) store(k sealKey, s *SealedFile) {
	if s.Size > c.maxBytes()/4 {
		return
	}
	own, err := s.dup()
	if err != nil {
		return // not cached; the launch goes on with s
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.byKey == nil {
		c.byKey = map[sealKey]*list.Element{}
	}
	if el, ok := c.byKey[k]; ok { // sealed concurrently by another launch
		c.lru.MoveToFront(el)
		own.Close()
		return
	}
	c.byKey[k] = c.lru.PushFront(&sealEntry{key: k, file: own})
	c.bytes += own.Size
	for c.bytes > c.maxBytes() {
		el := c.lru.Back()
		e := el.Value.(*sealEntry)
		c.lru.Remove(el)
		delete(c.byKey, e.key)
		c.bytes -= e.file.Size
		e.file.Close()
	}
}

// Len returns the number of cached memfds.
func (c *sealCache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}

// Close releases every cached memfd.
func (c *sealCache) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for el := c.lru.Front(); el != nil; el = el.Next() {
		el.Value.(*sealEntry).file.Close()
	}
	c.lru.Init()
	c.byKey, c.bytes = nil, 0
}

// dup returns a SealedFile with its own descriptor of the same sealed memfd.
func (s *SealedFile) dup() (*SealedFile, error) {
	fd, err := unix.FcntlInt(s.File.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("duplicating sealed memfd: %w", err)
	}
	d := *s
	d.File = os.NewFile(uintptr(fd), s.File.Name())
	return &d, nil
}

// measureKey is everything the launch digest depends on (see Spec.MeasureInput), the
// boot files by the SHA-384 of their sealed bytes.
type measureKey struct {
	firmware       [48]byte
	firmwareSize   int64
	kernel, initrd [48]byte // zero: none
	hasKernel      bool
	hasInitrd      bool
	cmdline        string
	vcpus          int
	cpuModel       string
	vmmType        string
	guestFeatures  uint64
}

func measureKeyOf(s *Spec) (measureKey, error) {
	if s.Firmware == nil {
		return measureKey{}, errors.New("no firmware")
	}
	k := measureKey{
		firmware: s.Firmware.SHA384, firmwareSize: s.Firmware.Size,
		cmdline: s.Cmdline, vcpus: s.VCPUs, cpuModel: s.CPUModel,
		vmmType: s.SNP.VMMType, guestFeatures: s.SNP.GuestFeatures,
	}
	if s.Kernel != nil {
		k.kernel, k.hasKernel = s.Kernel.SHA384, true
	}
	if s.Initrd != nil {
		k.initrd, k.hasInitrd = s.Initrd.SHA384, true
	}
	return k, nil
}

// measureCache memoizes measureSpec, bounded to maxMeasureEntries (then cleared). The
// zero value is ready; safe for concurrent use.
type measureCache struct {
	mu sync.Mutex
	m  map[measureKey]measurement
}

const maxMeasureEntries = 256

// Measure returns measureSpec(s), computed once per distinct input.
func (c *measureCache) Measure(s *Spec) (*measurement, error) {
	k, err := measureKeyOf(s)
	if err != nil {
		return measureSpec(s)
	}
	c.mu.Lock()
	m, ok := c.m[k]
	c.mu.Unlock()
	if ok {
		return &m, nil
	}
	out, err := measureSpec(s)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if c.m == nil || len(c.m) >= maxMeasureEntries {
		c.m = map[measureKey]measurement{}
	}
	c.m[k] = *out
	c.mu.Unlock()
	return out, nil
}
