package launch

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/snpd/snpd/config"
	snplaunch "github.com/snpd/snpd/snp/launch"
	"github.com/snpd/snpd/snp/snptest"
)

func readSealed(t *testing.T, s *SealedFile) []byte {
	t.Helper()
	b, err := io.ReadAll(s.Reader())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestSealCache: an unchanged file is sealed once and handed out as independent
// descriptors of the same memfd; any change to the file (new bytes of the same size, a
// write with the modification time put back, a replacement by rename) is sealed anew.
func TestSealCache(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "fw")
	if err := os.WriteFile(p, bytes.Repeat([]byte{1}, 8192), 0o600); err != nil {
		t.Fatal(err)
	}
	var c sealCache
	defer c.Close()
	seal := func() *SealedFile {
		t.Helper()
		s, err := c.Seal("firmware", p, MaxFirmwareSize)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	a, b := seal(), seal()
	if c.Len() != 1 {
		t.Fatalf("%d cached memfds, want 1", c.Len())
	}
	if a.File.Fd() == b.File.Fd() || a.SHA384 != b.SHA384 || !bytes.Equal(readSealed(t, a), readSealed(t, b)) {
		t.Errorf("second seal: fd %d vs %d, digests equal %v", a.File.Fd(), b.File.Fd(), a.SHA384 == b.SHA384)
	}
	var sa, sb, sc = new(sealKeyStat), new(sealKeyStat), new(sealKeyStat)
	sa.of(t, a)
	sb.of(t, b)
	if sa.ino != sb.ino {
		t.Errorf("a cache hit is a different memfd (inode %d vs %d)", sa.ino, sb.ino)
	}
	a.Close()
	if got := readSealed(t, b); len(got) != 8192 {
		t.Errorf("closing one descriptor broke the other: read %d bytes", len(got))
	}

	// Same size, new bytes, modification time put back: the change time still moves.
	st, _ := os.Stat(p)
	time.Sleep(10 * time.Millisecond)
	if err := os.WriteFile(p, bytes.Repeat([]byte{2}, 8192), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(p, st.ModTime(), st.ModTime()); err != nil {
		t.Fatal(err)
	}
	d := seal()
	if d.SHA384 == b.SHA384 || readSealed(t, d)[0] != 2 {
		t.Errorf("a rewritten file was served from the cache")
	}
	sc.of(t, d)
	if sc.ino == sb.ino {
		t.Errorf("a rewritten file got the old memfd")
	}

	// Replaced by rename: a new inode.
	q := filepath.Join(dir, "fw.new")
	if err := os.WriteFile(q, bytes.Repeat([]byte{3}, 8192), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(q, p); err != nil {
		t.Fatal(err)
	}
	if e := seal(); readSealed(t, e)[0] != 3 {
		t.Errorf("a replaced file was served from the cache")
	}
	if _, err := c.Seal("firmware", filepath.Join(dir, "missing"), MaxFirmwareSize); err == nil {
		t.Errorf("sealing a missing file succeeded")
	}
}

// sealKeyStat is the inode of a memfd, to tell memfds apart.
type sealKeyStat struct{ ino uint64 }

func (s *sealKeyStat) of(t *testing.T, f *SealedFile) {
	t.Helper()
	k, err := statKey("x", f.File)
	if err != nil {
		t.Fatal(err)
	}
	s.ino = k.ino
}

// TestSealCacheBounds: entries beyond MaxBytes are evicted (least recently used first),
// files larger than a quarter of it are never kept, and concurrent seals of one file
// keep one memfd.
func TestSealCacheBounds(t *testing.T) {
	dir := t.TempDir()
	c := sealCache{MaxBytes: 64 << 10}
	defer c.Close()
	var paths []string
	for i, size := range []int{16 << 10, 16 << 10, 16 << 10, 16 << 10, 16 << 10} {
		p := filepath.Join(dir, string(rune('a'+i)))
		os.WriteFile(p, bytes.Repeat([]byte{byte(i + 1)}, size), 0o600)
		paths = append(paths, p)
	}
	for _, p := range paths {
		s, err := c.Seal("kernel", p, MaxKernelSize)
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
	}
	if c.Len() != 4 || c.bytes != 64<<10 {
		t.Errorf("%d entries, %d bytes; want 4 entries of 64 KiB", c.Len(), c.bytes)
	}
	big := filepath.Join(dir, "big")
	os.WriteFile(big, make([]byte, 32<<10), 0o600)
	s, err := c.Seal("kernel", big, MaxKernelSize)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if c.Len() != 4 {
		t.Errorf("a file over a quarter of the bound was kept")
	}

	var fresh sealCache
	defer fresh.Close()
	var wg sync.WaitGroup
	digests := make([][48]byte, 8)
	for i := range digests {
		wg.Go(func() {
			s, err := fresh.Seal("firmware", paths[0], MaxFirmwareSize)
			if err != nil {
				t.Error(err)
				return
			}
			digests[i] = s.SHA384
			s.Close()
		})
	}
	wg.Wait()
	for _, d := range digests[1:] {
		if d != digests[0] {
			t.Errorf("concurrent seals disagree")
		}
	}
	if fresh.Len() != 1 {
		t.Errorf("%d memfds kept for one file", fresh.Len())
	}
}

// TestMeasureCache: the cached digest equals measureSpec's for the input it was
// computed from, and every input the digest depends on changes the key, so a variant
// never gets its neighbour's digest.
func TestMeasureCache(t *testing.T) {
	if n := reflect.TypeOf(snplaunch.MeasureInput{}).NumField(); n != 19 {
		t.Fatalf("snplaunch.MeasureInput has %d fields, measureKey was written for 19: check that measureKeyOf covers every input Spec.MeasureInput sets", n)
	}
	seal := func(name string, b []byte) *SealedFile {
		s, err := SealBytes(name, b)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	fw := seal("firmware", snptest.AmdSevOVMF(2<<20))
	fw2 := seal("firmware", snptest.AmdSevOVMF(4<<20))
	k1, k2 := seal("kernel", bytes.Repeat([]byte("K"), 10000)), seal("kernel", bytes.Repeat([]byte("k"), 10000))
	i1, i2 := seal("initrd", bytes.Repeat([]byte("I"), 5000)), seal("initrd", bytes.Repeat([]byte("i"), 5000))
	base := config.VM{Name: "m", VCPUs: 2, CPUModel: "EPYC-Milan", Firmware: "/fw", Kernel: "/k", Initrd: "/i",
		Cmdline: "console=ttyS0", SNP: config.SNP{CBitPos: 51, ReducedPhysBits: 1}}
	type variant struct {
		name          string
		vm            func(*config.VM)
		fw, k, initrd *SealedFile
	}
	variants := []variant{
		{"base", func(*config.VM) {}, fw, k1, i1},
		{"vcpus", func(v *config.VM) { v.VCPUs = 3 }, fw, k1, i1},
		{"cpu model", func(v *config.VM) { v.CPUModel = "EPYC-Genoa" }, fw, k1, i1},
		{"cmdline", func(v *config.VM) { v.Cmdline = "console=hvc0" }, fw, k1, i1},
		{"guest features", func(v *config.VM) { v.SNP.GuestFeatures = 0x5 }, fw, k1, i1},
		{"firmware", func(*config.VM) {}, fw2, k1, i1},
		{"kernel", func(*config.VM) {}, fw, k2, i1},
		{"initrd", func(*config.VM) {}, fw, k1, i2},
	}
	var c measureCache
	seen := map[[48]byte]string{}
	for _, pass := range []string{"computed", "cached"} {
		for _, v := range variants {
			vm := base
			v.vm(&vm)
			spec, err := NewSpec(&vm, PlatformSEVSNP, HostFacts{Accel: AccelKVM}, v.fw, v.k, v.initrd)
			if err != nil {
				t.Fatalf("%s: %v", v.name, err)
			}
			want, err := measureSpec(spec)
			if err != nil {
				t.Fatalf("%s: %v", v.name, err)
			}
			got, err := c.Measure(spec)
			if err != nil {
				t.Fatalf("%s: %v", v.name, err)
			}
			if *got != *want {
				t.Errorf("%s (%s): cache gave %x, measureSpec %x", v.name, pass, got.Digest[:8], want.Digest[:8])
			}
			if pass == "computed" {
				if other, dup := seen[want.Digest]; dup {
					t.Errorf("%s and %s have the same digest: the variant changes nothing", v.name, other)
				}
				seen[want.Digest] = v.name
			}
		}
	}
	if len(c.m) != len(variants) {
		t.Errorf("%d cache entries for %d inputs", len(c.m), len(variants))
	}
}
