package snptest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/snpd/snpd/snp/uki"
)

// DefaultUKIStub is Debian's systemd-stub for x86-64 (package systemd-boot-efi,
// installed by scripts/install-deps.sh).
const DefaultUKIStub = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"

// DefaultUKIOSRelease is the .osrel section BuildUKI writes when UKIOptions.OSRelease
// is empty.
const DefaultUKIOSRelease = "ID=snpd-test\nNAME=\"snpd test guest\"\nPRETTY_NAME=\"snpd test guest (Debian cloud kernel)\"\n"

// UKIOptions describes a unified kernel image to build.
type UKIOptions struct {
	// Stub is the EFI stub; "" means DefaultUKIStub.
	Stub string
	// Kernel is the kernel file for .linux (required).
	Kernel string
	// Initrd is the initramfs file for .initrd; "" means no .initrd section.
	Initrd string
	// Cmdline is the .cmdline section; "" means none (the kernel then gets QEMU's
	// -append, or nothing).
	Cmdline string
	// OSRelease is the .osrel section (os-release(5)); "" means DefaultUKIOSRelease.
	OSRelease string
	// Uname is the .uname section (the kernel release); "" means none.
	Uname string
}

// uki section placement: every added section starts on a 4 KiB boundary after the
// stub's image, in ukify's order (.linux last: the kernel may use memory beyond it).
const ukiSectionAlign = 0x1000

// MakeUKI builds a unified kernel image at out with objcopy (binutils): the stub plus
// .osrel, .cmdline, .uname, .initrd and .linux sections at 4 KiB-aligned addresses
// after the stub's image, as systemd-stub(7) describes. The COFF timestamp is reset to
// 0 and the PE checksum recomputed, so the same inputs give the same bytes.
func MakeUKI(out string, o UKIOptions) error {
	if o.Stub == "" {
		o.Stub = DefaultUKIStub
	}
	if o.Kernel == "" {
		return errors.New("building UKI: no kernel given")
	}
	if o.OSRelease == "" {
		o.OSRelease = DefaultUKIOSRelease
	}
	objcopy, err := exec.LookPath("objcopy")
	if err != nil {
		return fmt.Errorf("building UKI: objcopy (binutils) not found: %w", err)
	}
	stub, err := os.Open(o.Stub)
	if err != nil {
		return fmt.Errorf("building UKI: opening stub: %w", err)
	}
	st, err := stub.Stat()
	if err != nil {
		stub.Close()
		return fmt.Errorf("building UKI: opening stub: %w", err)
	}
	im, err := uki.Parse(stub, st.Size())
	stub.Close()
	if err != nil {
		return fmt.Errorf("building UKI: reading stub %s: %w", o.Stub, err)
	}
	tmp, err := os.MkdirTemp("", "snpd-uki-")
	if err != nil {
		return fmt.Errorf("building UKI: %w", err)
	}
	defer os.RemoveAll(tmp)
	type sec struct{ name, file string }
	var secs []sec
	text := func(name, content string) error {
		if content == "" {
			return nil
		}
		p := filepath.Join(tmp, name[1:])
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			return fmt.Errorf("building UKI: %w", err)
		}
		secs = append(secs, sec{name, p})
		return nil
	}
	if err := text(".osrel", o.OSRelease); err != nil {
		return err
	}
	if err := text(".cmdline", o.Cmdline); err != nil {
		return err
	}
	if err := text(".uname", o.Uname); err != nil {
		return err
	}
	if o.Initrd != "" {
		secs = append(secs, sec{".initrd", o.Initrd})
	}
	secs = append(secs, sec{".linux", o.Kernel})

	vma := alignUp(uint64(im.SizeOfImage), ukiSectionAlign)
	args := []string{}
	for _, s := range secs {
		fi, err := os.Stat(s.file)
		if err != nil {
			return fmt.Errorf("building UKI: %s: %w", s.name, err)
		}
		args = append(args, "--add-section", s.name+"="+s.file,
			"--change-section-vma", fmt.Sprintf("%s=%#x", s.name, im.ImageBase+vma))
		vma = alignUp(vma+uint64(fi.Size()), ukiSectionAlign)
	}
	if vma > 1<<32 {
		return fmt.Errorf("building UKI: sections need %d bytes of image, more than PE allows", vma)
	}
	tmpOut := filepath.Join(tmp, "uki.efi")
	args = append(args, o.Stub, tmpOut)
	if b, err := exec.Command(objcopy, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("building UKI: objcopy %v: %w: %s", args, err, b)
	}
	b, err := os.ReadFile(tmpOut)
	if err != nil {
		return fmt.Errorf("building UKI: %w", err)
	}
	if err := ResetPETimestamp(b); err != nil {
		return fmt.Errorf("building UKI: %w", err)
	}
	if err := os.WriteFile(out, b, 0o644); err != nil {
		return fmt.Errorf("building UKI: %w", err)
	}
	return nil
}

func alignUp(v, a uint64) uint64 { return (v + a - 1) &^ (a - 1) }

// peCheckSumOffset returns the file offset of the optional header's CheckSum field
// (offset 64 in both PE32 and PE32+) of the PE image b.
func peCheckSumOffset(b []byte) (coff, checksum int, err error) {
	if len(b) < 64 || b[0] != 'M' || b[1] != 'Z' {
		return 0, 0, errors.New("not a PE image")
	}
	pe := int(binary.LittleEndian.Uint32(b[0x3c:]))
	if pe < 0 || pe+4+20+68 > len(b) || string(b[pe:pe+4]) != "PE\x00\x00" {
		return 0, 0, errors.New("not a PE image")
	}
	return pe + 4, pe + 4 + 20 + 64, nil
}

// PEChecksum computes the PE image checksum of b (the algorithm of Windows'
// CheckSumMappedFile: 16-bit one's-complement-style sum skipping the CheckSum field,
// plus the file length).
func PEChecksum(b []byte) (uint32, error) {
	_, cs, err := peCheckSumOffset(b)
	if err != nil {
		return 0, err
	}
	var sum uint64
	for i := 0; i+1 < len(b); i += 2 {
		if i == cs || i == cs+2 {
			continue
		}
		sum += uint64(binary.LittleEndian.Uint16(b[i:]))
		sum = (sum & 0xffff) + (sum >> 16)
	}
	if len(b)%2 == 1 {
		sum += uint64(b[len(b)-1])
		sum = (sum & 0xffff) + (sum >> 16)
	}
	sum = (sum & 0xffff) + (sum >> 16)
	return uint32(sum) + uint32(len(b)), nil
}

// ResetPETimestamp sets the COFF TimeDateStamp of the PE image b to 0 (objcopy writes
// the current time and has no option against it) and rewrites its CheckSum.
func ResetPETimestamp(b []byte) error {
	coff, cs, err := peCheckSumOffset(b)
	if err != nil {
		return err
	}
	binary.LittleEndian.PutUint32(b[coff+4:], 0)
	sum, err := PEChecksum(b)
	if err != nil {
		return err
	}
	binary.LittleEndian.PutUint32(b[cs:], sum)
	return nil
}

// BuildUKI builds a UKI (MakeUKI) into the test's temporary directory and returns its
// path. It skips the test, naming the package, when the stub or objcopy is absent.
func BuildUKI(t testing.TB, o UKIOptions) string {
	t.Helper()
	stub := o.Stub
	if stub == "" {
		stub = DefaultUKIStub
	}
	if _, err := os.Stat(stub); err != nil {
		t.Skipf("systemd-stub %s is absent (package systemd-boot-efi; run scripts/install-deps.sh as root): %v", stub, err)
	}
	if _, err := exec.LookPath("objcopy"); err != nil {
		t.Skip("objcopy is absent (package binutils; run scripts/install-deps.sh as root)")
	}
	out := filepath.Join(t.TempDir(), "uki.efi")
	if err := MakeUKI(out, o); err != nil {
		t.Fatal(err)
	}
	return out
}

// DefaultBootPath is the removable-media boot path UEFI firmware boots when no boot
// option names a loader (UEFI spec 3.5.1.1, x64): a UKI placed there boots with its own
// .cmdline, as no load options are passed.
const DefaultBootPath = "EFI/BOOT/BOOTX64.EFI"

// BuildBootDisk returns the path of a raw disk image (64 MiB, one FAT file system
// without a partition table, as OVMF accepts) holding the UKI at DefaultBootPath, in
// the test's temporary directory. It needs mtools (scripts/install-deps.sh) and skips
// the test, naming the tool, without them.
func BuildBootDisk(t testing.TB, ukiPath string) string {
	t.Helper()
	for _, tool := range []string{"mformat", "mmd", "mcopy"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (package mtools; run scripts/install-deps.sh as root)", tool)
		}
	}
	img := filepath.Join(t.TempDir(), "boot-disk.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(64 << 20); err != nil {
		f.Close()
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"mformat", "-i", img, "-F", "::"},
		{"mmd", "-i", img, "::/EFI", "::/EFI/BOOT"},
		{"mcopy", "-i", img, ukiPath, "::/" + DefaultBootPath},
	} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	return img
}
