package launch

import (
	"bytes"
	"crypto/sha512"
	"hash"
	"io"
	"runtime"
	"sync"
)

// The firmware pass is a three-stage pipeline, hand-written because no library does
// "hash fixed-size records in parallel, consume the digests in order" with bounded
// memory:
//
//	reader (ReadAt into a free buffer) -> workers (SHA-384 of every page) ->
//	chainer (PAGE_INFO chain in file order) -> [file digests] -> free buffers
//
// Only nbuf chunks exist, so memory is bounded by nbuf*512 KiB whatever the image
// size. Page contents hashes are independent; only the 112-byte PAGE_INFO chain is
// sequential (2 SHA-512 blocks per page against 33 for the contents).
//
// A uniform page (every byte the same: all-zero padding in large images, 0xff in
// unused flash; 62% of Debian's 4 MiB OVMF) is recognised with one SIMD compare of
// the page against itself shifted by one byte, and given the SHA-384 of that page,
// computed once per byte value: bit-exact, and ~50x cheaper than hashing it.

// Chunk sizes: an image is cut into about 64 chunks between 64 KiB and 512 KiB.
// Small chunks let a small image's pipeline fill at once and share the pages evenly
// between workers (the 4 MiB OVMF is done in ~2 ms); large ones keep the per-chunk
// hand-offs negligible on large images.
const (
	chunkPages    = 16 // minimum pages per chunk
	chunkPagesMax = 128
	chunkSize     = chunkPages * PageSize // 64 KiB, the minimum chunk size
)

// chunkSizeFor returns the chunk size in bytes for an image of size bytes.
func chunkSizeFor(size int64) int64 {
	pages := size / PageSize / 64
	return min(max(pages, chunkPages), chunkPagesMax) * PageSize
}

// uniformDigests[b] is the SHA-384 of a page of 4096 bytes of value b, computed on
// first use.
var uniformDigests [256]struct {
	once sync.Once
	d    [48]byte
}

func uniformDigest(b byte) *[48]byte {
	u := &uniformDigests[b]
	u.once.Do(func() { u.d = sha512.Sum384(bytes.Repeat([]byte{b}, PageSize)) })
	return &u.d
}

type chunk struct {
	buf  []byte
	n    int        // valid bytes in buf, a multiple of PageSize
	sums [][48]byte // one per page of buf
	done chan struct{}
	err  error
}

func (c *chunk) hashPages() {
	for p := 0; p*PageSize < c.n; p++ {
		page := c.buf[p*PageSize : (p+1)*PageSize]
		if bytes.Equal(page[1:], page[:PageSize-1]) {
			c.sums[p] = *uniformDigest(page[0])
		} else {
			c.sums[p] = sha512.Sum384(page)
		}
	}
}

// updateNormalPagesFrom measures size bytes of r as NORMAL pages starting at gpa.
// fileHashes, if any, are fed the bytes in order in a stage of their own.
func (g *gctx) updateNormalPagesFrom(r io.ReaderAt, size int64, gpa uint64, workers int, fileHashes []hash.Hash) error {
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	nbuf := 2*workers + 2
	if fileHashes != nil {
		nbuf += 2
	}
	// Small images need fewer and smaller buffers.
	csize := chunkSizeFor(size)
	bufSize := min(csize, size)
	if chunks := int((size + csize - 1) / csize); chunks < nbuf {
		nbuf = max(chunks, 1)
	}
	free := make(chan *chunk, nbuf)
	for i := 0; i < nbuf; i++ {
		free <- &chunk{buf: make([]byte, bufSize), sums: make([][48]byte, bufSize/PageSize)}
	}
	jobs := make(chan *chunk, nbuf)
	ordered := make(chan *chunk, nbuf)
	stop := make(chan struct{})

	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range jobs {
				c.hashPages()
				close(c.done)
			}
		}()
	}

	// Reader. Sends to jobs and ordered never block for long: both hold nbuf and at
	// most nbuf chunks exist. Only taking a free buffer waits, and stop ends that.
	go func() {
		defer close(ordered)
		defer close(jobs)
		for off := int64(0); off < size; off += csize {
			var c *chunk
			select {
			case c = <-free:
			case <-stop:
				return
			}
			n := csize
			if size-off < n {
				n = size - off
			}
			c.n = int(n)
			c.done = make(chan struct{})
			c.err = readFull(r, c.buf[:n], off)
			if c.err != nil {
				close(c.done)
				ordered <- c
				return
			}
			jobs <- c
			ordered <- c
		}
	}()

	// File digests stage (optional): runs beside the chain, returns buffers.
	var digestWG sync.WaitGroup
	var toDigest chan *chunk
	if fileHashes != nil {
		toDigest = make(chan *chunk, nbuf)
		digestWG.Add(1)
		go func() {
			defer digestWG.Done()
			for c := range toDigest {
				for _, h := range fileHashes {
					h.Write(c.buf[:c.n])
				}
				free <- c
			}
		}()
	}

	var err error
	addr := gpa
	for c := range ordered {
		<-c.done
		if c.err != nil {
			err = c.err
			break
		}
		for p := 0; p*PageSize < c.n; p++ {
			g.update(PageNormal, addr, &c.sums[p])
			addr += PageSize
		}
		if toDigest != nil {
			toDigest <- c
		} else {
			free <- c
		}
	}
	if err != nil {
		close(stop)
		for c := range ordered {
			<-c.done
		}
	}
	wg.Wait()
	if toDigest != nil {
		close(toDigest)
		digestWG.Wait()
	}
	return err
}
