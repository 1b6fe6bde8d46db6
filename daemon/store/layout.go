package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
)

// checkLayout validates the page structure of a bbolt file of size bytes, read through
// r with plain reads: never through a memory mapping, so a truncated or garbled file is
// an error here instead of a fault (SIGBUS/SIGSEGV) or a stack overflow inside bbolt,
// which no recover can catch. It follows bbolt's own reading of the file (bbolt 1.x,
// format version 2; go.etcd.io/bbolt/internal/common): the valid meta page with the
// highest transaction id, every page below its high-water mark inside the file, the
// freelist page, and the tree of every bucket from the root: each page referenced
// once (no cycles), of the type its parent expects, with its id in its header and
// every element, key and value inside the page.
//
// It checks structure only; bbolt's Tx.Check (key order, freed pages reachable,
// unreachable pages) runs after it, on a file this check has made safe to map.
func checkLayout(r io.ReaderAt, size int64) error {
	m, pageSize, err := readMeta(r, size)
	if err != nil {
		return err
	}
	l := &layout{r: r, pageSize: uint64(pageSize), hwm: m.pgid, seen: map[uint64]bool{0: true, 1: true}}
	if m.pgid < 3 || m.pgid > uint64(size)/uint64(pageSize) {
		return fmt.Errorf("the meta page says the file has %d pages of %d bytes, but it is %d bytes long (truncated?)", m.pgid, pageSize, size)
	}
	if m.freelist != noFreelist {
		if err := l.checkFreelist(m.freelist); err != nil {
			return err
		}
	}
	if m.root == 0 {
		return errors.New("the meta page has no root bucket page")
	}
	return l.walk(m.root)
}

// Layout constants of bbolt's file format (little-endian, as bbolt writes it on the
// platforms snpd runs on).
const (
	pageHeaderSize = 16 // id u64, flags u16, count u16, overflow u32
	elementSize    = 16 // branch: pos u32, ksize u32, pgid u64; leaf: flags u32, pos u32, ksize u32, vsize u32
	bucketHdrSize  = 16 // root pgid u64, sequence u64

	flagBranch   = 0x01
	flagLeaf     = 0x02
	flagMeta     = 0x04
	flagFreelist = 0x10

	leafBucket = 0x01

	boltMagic   = 0xED0CDAED
	boltVersion = 2
	noFreelist  = ^uint64(0)

	metaSize     = 64 // magic, version, pageSize, flags u32; root, sequence, freelist, pgid, txid, checksum u64
	metaChecksum = 56 // offset of the checksum: FNV-1a 64 of the bytes before it

	// maxPageSize bounds the page size a meta page may claim.
	maxPageSize = 1 << 16
)

type meta struct {
	pageSize uint32
	root     uint64
	freelist uint64
	pgid     uint64
	txid     uint64
}

// parseMeta decodes and validates the meta page in b (page header first).
func parseMeta(b []byte) (meta, error) {
	if len(b) < pageHeaderSize+metaSize {
		return meta{}, errors.New("short meta page")
	}
	if f := binary.LittleEndian.Uint16(b[8:]); f != flagMeta {
		return meta{}, fmt.Errorf("page flags %#x, not a meta page", f)
	}
	mb := b[pageHeaderSize : pageHeaderSize+metaSize]
	if binary.LittleEndian.Uint32(mb[0:]) != boltMagic {
		return meta{}, errors.New("not a bbolt meta page (bad magic)")
	}
	if v := binary.LittleEndian.Uint32(mb[4:]); v != boltVersion {
		return meta{}, fmt.Errorf("bbolt format version %d, want %d", v, boltVersion)
	}
	h := fnv.New64a()
	h.Write(mb[:metaChecksum])
	if h.Sum64() != binary.LittleEndian.Uint64(mb[metaChecksum:]) {
		return meta{}, errors.New("meta page checksum mismatch")
	}
	m := meta{
		pageSize: binary.LittleEndian.Uint32(mb[8:]),
		root:     binary.LittleEndian.Uint64(mb[16:]),
		freelist: binary.LittleEndian.Uint64(mb[32:]),
		pgid:     binary.LittleEndian.Uint64(mb[40:]),
		txid:     binary.LittleEndian.Uint64(mb[48:]),
	}
	if m.pageSize < 1024 || m.pageSize > maxPageSize || m.pageSize&(m.pageSize-1) != 0 {
		return meta{}, fmt.Errorf("meta page claims page size %d", m.pageSize)
	}
	return m, nil
}

// readMeta returns the meta page bbolt would use: the page size from the first valid
// meta page (page 0, else page 1 at each possible page size, as bbolt looks for it),
// then of meta 0 and meta 1 the valid one with the higher transaction id.
func readMeta(r io.ReaderAt, size int64) (meta, uint32, error) {
	read := func(off int64) []byte {
		b := make([]byte, pageHeaderSize+metaSize)
		if n, _ := r.ReadAt(b, off); n < len(b) {
			return nil
		}
		return b
	}
	var pageSize uint32
	m0, err0 := parseMeta(read(0))
	if err0 == nil {
		pageSize = m0.pageSize
	} else {
		for ps := int64(1024); ps <= maxPageSize && ps < size; ps <<= 1 {
			if m, err := parseMeta(read(ps)); err == nil && int64(m.pageSize) == ps {
				pageSize = m.pageSize
				break
			}
		}
		if pageSize == 0 {
			return meta{}, 0, fmt.Errorf("no valid meta page (meta 0: %v)", err0)
		}
	}
	if size < 2*int64(pageSize) {
		return meta{}, 0, fmt.Errorf("the file is %d bytes, shorter than its two meta pages", size)
	}
	if err0 == nil && m0.pageSize != pageSize {
		err0 = errors.New("page size differs from meta 1's")
	}
	m1, err1 := parseMeta(read(int64(pageSize)))
	if err1 == nil && m1.pageSize != pageSize {
		err1 = errors.New("page size differs from meta 0's")
	}
	switch {
	case err0 != nil && err1 != nil:
		return meta{}, 0, fmt.Errorf("both meta pages are invalid (meta 0: %v; meta 1: %v)", err0, err1)
	case err0 != nil:
		return m1, pageSize, nil
	case err1 != nil:
		return m0, pageSize, nil
	case m1.txid > m0.txid:
		return m1, pageSize, nil
	}
	return m0, pageSize, nil
}

type layout struct {
	r        io.ReaderAt
	pageSize uint64
	hwm      uint64 // pages below this id are in use or free; the file holds them all
	seen     map[uint64]bool
}

// page reads page id with its overflow pages, checking its header, that it lies below
// the high-water mark and that no page of it was seen before. want is the page type
// expected (flagBranch|flagLeaf accepts either).
func (l *layout) page(id uint64, want uint16, from string) ([]byte, uint16, error) {
	if id < 2 || id >= l.hwm {
		return nil, 0, fmt.Errorf("%s refers to page %d, outside 2..%d", from, id, l.hwm-1)
	}
	hdr := make([]byte, pageHeaderSize)
	if _, err := l.r.ReadAt(hdr, int64(id*l.pageSize)); err != nil {
		return nil, 0, fmt.Errorf("reading page %d: %w", id, err)
	}
	hid := binary.LittleEndian.Uint64(hdr[0:])
	flags := binary.LittleEndian.Uint16(hdr[8:])
	overflow := uint64(binary.LittleEndian.Uint32(hdr[12:]))
	if hid != id {
		return nil, 0, fmt.Errorf("page %d (from %s) says it is page %d", id, from, hid)
	}
	if flags&want == 0 || (flags != flagBranch && flags != flagLeaf && flags != flagFreelist) {
		return nil, 0, fmt.Errorf("page %d (from %s) has type flags %#x", id, from, flags)
	}
	if overflow >= l.hwm-id {
		return nil, 0, fmt.Errorf("page %d (from %s) has %d overflow pages, past the end", id, from, overflow)
	}
	for i := id; i <= id+overflow; i++ {
		if l.seen[i] {
			return nil, 0, fmt.Errorf("page %d is referenced twice (again from %s)", i, from)
		}
		l.seen[i] = true
	}
	b := make([]byte, (overflow+1)*l.pageSize)
	if _, err := l.r.ReadAt(b, int64(id*l.pageSize)); err != nil {
		return nil, 0, fmt.Errorf("reading page %d: %w", id, err)
	}
	return b, flags, nil
}

func (l *layout) checkFreelist(id uint64) error {
	b, _, err := l.page(id, flagFreelist, "the meta page's freelist")
	if err != nil {
		return err
	}
	start, count := uint64(pageHeaderSize), uint64(binary.LittleEndian.Uint16(b[10:]))
	if count == 0xFFFF { // the real count is the first element
		if len(b) < pageHeaderSize+8 {
			return fmt.Errorf("freelist page %d is too short", id)
		}
		count, start = binary.LittleEndian.Uint64(b[pageHeaderSize:]), pageHeaderSize+8
	}
	if count > (uint64(len(b))-start)/8 {
		return fmt.Errorf("freelist page %d lists %d pages, more than it holds", id, count)
	}
	for i := uint64(0); i < count; i++ {
		if f := binary.LittleEndian.Uint64(b[start+8*i:]); f < 2 || f >= l.hwm {
			return fmt.Errorf("freelist page %d lists page %d, outside 2..%d", id, f, l.hwm-1)
		}
	}
	return nil
}

// node is a bucket tree page still to visit: a page id, or the bytes of an inline page.
type node struct {
	id     uint64
	inline []byte
	from   string
}

// walk visits the tree of the bucket rooted at page root and of every bucket inside it.
func (l *layout) walk(root uint64) error {
	stack := []node{{id: root, from: "the meta page"}}
	for len(stack) > 0 {
		n := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		b, flags, name := n.inline, uint16(0), "an inline bucket (in "+n.from+")"
		if b == nil {
			var err error
			if b, flags, err = l.page(n.id, flagBranch|flagLeaf, n.from); err != nil {
				return err
			}
			name = fmt.Sprintf("page %d", n.id)
		} else if flags = binary.LittleEndian.Uint16(b[8:]); flags != flagLeaf {
			return fmt.Errorf("%s has type flags %#x, want a leaf", name, flags)
		}
		count := uint64(binary.LittleEndian.Uint16(b[10:]))
		if pageHeaderSize+count*elementSize > uint64(len(b)) {
			return fmt.Errorf("%s has %d elements, more than fit", name, count)
		}
		if flags == flagBranch && count == 0 {
			return fmt.Errorf("%s is a branch without elements", name)
		}
		for i := uint64(0); i < count; i++ {
			off := pageHeaderSize + i*elementSize
			e := b[off : off+elementSize]
			if flags == flagBranch {
				pos, ksize := uint64(binary.LittleEndian.Uint32(e[0:])), uint64(binary.LittleEndian.Uint32(e[4:]))
				if off+pos+ksize > uint64(len(b)) {
					return fmt.Errorf("%s: key %d lies outside the page", name, i)
				}
				stack = append(stack, node{id: binary.LittleEndian.Uint64(e[8:]), from: name})
				continue
			}
			lflags := binary.LittleEndian.Uint32(e[0:])
			pos, ksize, vsize := uint64(binary.LittleEndian.Uint32(e[4:])), uint64(binary.LittleEndian.Uint32(e[8:])), uint64(binary.LittleEndian.Uint32(e[12:]))
			end := off + pos + ksize + vsize
			if end > uint64(len(b)) {
				return fmt.Errorf("%s: element %d lies outside the page", name, i)
			}
			switch lflags {
			case 0:
			case leafBucket:
				v := b[off+pos+ksize : end]
				if len(v) < bucketHdrSize {
					return fmt.Errorf("%s: bucket %d has a %d-byte header", name, i, len(v))
				}
				if r := binary.LittleEndian.Uint64(v); r != 0 {
					stack = append(stack, node{id: r, from: name})
				} else if len(v) < bucketHdrSize+pageHeaderSize {
					return fmt.Errorf("%s: inline bucket %d is too short", name, i)
				} else {
					stack = append(stack, node{inline: v[bucketHdrSize:], from: name})
				}
			default:
				return fmt.Errorf("%s: element %d has flags %#x", name, i, lflags)
			}
		}
	}
	return nil
}
