package launch

import (
	"crypto/sha512"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

// bigImage writes zeros followed by the trixie OVMF.fd to a temporary file of size
// bytes, the image of the speed target.
func bigImage(b *testing.B, size int64) (*os.File, int64) {
	b.Helper()
	fw, err := os.ReadFile(filepath.Join("..", "testdata", "firmware", "ovmf-trixie-2025.02.fd"))
	if err != nil {
		b.Fatal(err)
	}
	f, err := os.Create(filepath.Join(b.TempDir(), "big.fd"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { f.Close() })
	if _, err := f.WriteAt(fw, size-int64(len(fw))); err != nil {
		b.Fatal(err)
	}
	return f, size
}

func benchMeasure(b *testing.B, f io.ReaderAt, size int64) {
	b.SetBytes(size)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := Measure(MeasureInput{Firmware: f, FirmwareSize: size, VCPUs: 4, VCPUSig: 0x800f12, GuestFeatures: 1, SkipFileDigests: true}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMeasureOVMF4MiB measures Debian trixie's 4 MiB OVMF.fd with 4 vCPUs.
func BenchmarkMeasureOVMF4MiB(b *testing.B) {
	f, size := trixie(b)
	benchMeasure(b, f, size)
}

// BenchmarkMeasure256MiB measures the 256 MiB image (mostly zero pages); compare
// with BenchmarkSHA384File256MiB, a plain SHA-384 of the same file. It reports the
// peak heap in use as heap-MiB.
func BenchmarkMeasure256MiB(b *testing.B) {
	f, size := bigImage(b, 256<<20)
	runtime.GC()
	var ms runtime.MemStats
	benchMeasure(b, f, size)
	runtime.ReadMemStats(&ms)
	b.ReportMetric(float64(ms.HeapSys)/(1<<20), "heap-MiB")
}

// BenchmarkMeasure256MiBFileDigests is the default (file digests included, as the
// daemon records them): a full-file SHA-384 is then the floor.
func BenchmarkMeasure256MiBFileDigests(b *testing.B) {
	f, size := bigImage(b, 256<<20)
	b.SetBytes(size)
	for i := 0; i < b.N; i++ {
		if _, err := Measure(MeasureInput{Firmware: f, FirmwareSize: size, VCPUs: 4, VCPUSig: 0x800f12, GuestFeatures: 1}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSHA384File256MiB is the baseline: one sequential SHA-384 over the file,
// what `openssl dgst -sha384` does.
func BenchmarkSHA384File256MiB(b *testing.B) {
	f, size := bigImage(b, 256<<20)
	b.SetBytes(size)
	for i := 0; i < b.N; i++ {
		h := sha512.New384()
		if _, err := io.Copy(h, io.NewSectionReader(f, 0, size)); err != nil {
			b.Fatal(err)
		}
		h.Sum(nil)
	}
}
