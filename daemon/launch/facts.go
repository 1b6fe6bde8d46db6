package launch

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/snpd/snpd/config"
	"github.com/snpd/snpd/snp"
	snplaunch "github.com/snpd/snpd/snp/launch"
)

// qemuVersionTimeout bounds `qemu --version`.
const qemuVersionTimeout = 5 * time.Second

// maxFirmwareFileSize bounds the firmware file VMFacts hashes (64 MiB; OVMF images are
// 2 to 4 MiB), so a domain naming a huge file cannot keep snpd busy.
const maxFirmwareFileSize = 64 << 20

// VMFacts learns what the host policy needs beyond the definition (see config.Facts):
// the firmware file's digests and kernel-hashes section, the QEMU binary and its
// version, the key digests of a given ID block and ID auth, and the disks' real paths
// (the caller sets ImageDir). platform is
// config.PlatformSEVSNP or config.PlatformNone; qemuPath is the QEMU binary snpd would
// run (a libvirt domain's own emulator is used instead when it names one). What cannot
// be learned stays unknown, so Check reports it (fail closed), and the reasons are
// returned joined in err; the facts are valid either way.
//
// At launch the daemon fills the firmware facts from the sealed memfd instead (see
// FirmwareFacts), so what was checked is what QEMU loads.
func VMFacts(ctx context.Context, vm *config.VM, platform, qemuPath string) (config.Facts, error) {
	f := config.Facts{Platform: platform}
	var errs []error
	if vm.Firmware != "" {
		if err := firmwareFileFacts(vm.Firmware, &f); err != nil {
			errs = append(errs, err)
		}
	}
	if vm.Libvirt != nil && vm.Libvirt.Emulator != "" {
		qemuPath = vm.Libvirt.Emulator
	}
	if qemuPath != "" {
		f.QEMUPath = qemuPath
		v, err := QEMUVersion(ctx, qemuPath)
		if err != nil {
			errs = append(errs, err)
		}
		f.QEMUVersion = v
	}
	if err := IDAuthFacts(vm, &f); err != nil {
		errs = append(errs, err)
	}
	for _, d := range vm.Disks {
		real, err := filepath.EvalSymlinks(d.Path)
		if err != nil {
			errs = append(errs, fmt.Errorf("resolving disk %s: %w", d.Path, err))
			real = ""
		}
		f.DiskRealPaths = append(f.DiskRealPaths, real)
	}
	return f, errors.Join(errs...)
}

func firmwareFileFacts(path string, f *config.Facts) error {
	fd, st, err := OpenBootFile("firmware", path)
	if err != nil {
		return fmt.Errorf("reading firmware: %w", err)
	}
	defer fd.Close()
	if st.Size() > maxFirmwareFileSize {
		return fmt.Errorf("reading firmware %s: %d bytes, more than %d", path, st.Size(), maxFirmwareFileSize)
	}
	if err := FirmwareFacts(fd, st.Size(), f); err != nil {
		return fmt.Errorf("firmware %s: %w", path, err)
	}
	return nil
}

// FirmwareFacts hashes the size bytes of firmware in r (SHA-256 and SHA-384 of the whole
// image) and parses its SEV metadata to learn whether it has an SNP kernel-hashes
// section, filling the firmware fields of f. r is typically the sealed memfd QEMU will
// load. A firmware without SEV metadata (e.g. a plain OvmfPkgX64 build) is not an
// error: it has no kernel-hashes section. On error f's firmware fields stay unknown.
func FirmwareFacts(r io.ReaderAt, size int64, f *config.Facts) error {
	h256, h384 := sha256.New(), sha512.New384()
	n, err := io.Copy(io.MultiWriter(h256, h384), io.NewSectionReader(r, 0, size))
	if err != nil {
		return fmt.Errorf("hashing firmware: %w", err)
	}
	if n != size {
		return fmt.Errorf("hashing firmware: read %d of %d bytes", n, size)
	}
	f.FirmwareSHA256, f.FirmwareSHA384 = h256.Sum(nil), h384.Sum(nil)
	f.FirmwareHasKernelHashes = firmwareHasKernelHashes(r, size)
	return nil
}

// SealedFirmwareFacts is FirmwareFacts for a sealed memfd: its digests were taken when
// it was sealed and its bytes cannot have changed since, so it is not hashed again.
func SealedFirmwareFacts(s *SealedFile, f *config.Facts) {
	f.FirmwareSHA256, f.FirmwareSHA384 = bytes.Clone(s.SHA256[:]), bytes.Clone(s.SHA384[:])
	f.FirmwareHasKernelHashes = firmwareHasKernelHashes(s, s.Size)
}

// firmwareHasKernelHashes tells whether the firmware image has an SNP kernel-hashes
// metadata section; an image without SEV metadata has none.
func firmwareHasKernelHashes(r io.ReaderAt, size int64) bool {
	fw, err := snplaunch.ParseFirmware(r, size)
	return err == nil && fw.HasKernelHashes()
}

// IDAuthFacts verifies vm's given ID block and ID auth (snp.VerifyIDAuth) and fills the
// ID and author key digests of f. Without a given ID block it does nothing (an ID block
// built at start from snp.id_key_file gets its digests from the launch). An ID auth that
// does not verify leaves the digests unknown and is returned as the error.
func IDAuthFacts(vm *config.VM, f *config.Facts) error {
	if vm.SNP.IDBlock == "" || vm.SNP.IDAuth == "" {
		return nil
	}
	block, err1 := base64.StdEncoding.DecodeString(vm.SNP.IDBlock)
	auth, err2 := base64.StdEncoding.DecodeString(vm.SNP.IDAuth)
	if err := errors.Join(err1, err2); err != nil {
		return fmt.Errorf("decoding ID block: %w", err)
	}
	info, err := snp.VerifyIDAuth(block, auth)
	if err != nil {
		return err
	}
	f.IDKeyDigest = bytes.Clone(info.IDKeyDigest[:])
	if info.HasAuthorKey {
		f.AuthorKeyDigest = bytes.Clone(info.AuthorKeyDigest[:])
	}
	return nil
}

var qemuVersionRE = lazyRegexp(`QEMU emulator version ([0-9]+\.[0-9]+(?:\.[0-9]+)?)`)

// QEMUVersion runs `path --version` (no shell, at most 5 s) and returns its version.
func QEMUVersion(ctx context.Context, path string) ([3]int, error) {
	ctx, cancel := context.WithTimeout(ctx, qemuVersionTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, "--version")
	cmd.Env = []string{"LC_ALL=C"}
	out, err := cmd.Output()
	if err != nil {
		return [3]int{}, fmt.Errorf("running %s --version: %w", path, err)
	}
	return ParseQEMUVersion(out)
}

// ParseQEMUVersion extracts the version from `qemu-system-x86_64 --version` output
// ("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-1~bpo12+1)").
func ParseQEMUVersion(out []byte) ([3]int, error) {
	m := qemuVersionRE().FindSubmatch(out)
	if m == nil {
		line, _, _ := bytes.Cut(out, []byte("\n"))
		return [3]int{}, fmt.Errorf("parsing QEMU version: no \"QEMU emulator version\" in %q", line)
	}
	v, err := config.ParseVersion(string(m[1]))
	if err != nil {
		return v, fmt.Errorf("parsing QEMU version: %w", err)
	}
	return v, nil
}

// CheckLibvirtDomain is the server side of the libvirt hook's check: it maps a domain's
// XML onto the VM spec, learns its facts (VMFacts, with the domain's emulator or
// qemuPath; imageDir is snpd's image_dir) and checks it against p. A domain that cannot
// be mapped is an error; facts
// that cannot be learned are unknown and so show up as violations, never as a pass.
func CheckLibvirtDomain(ctx context.Context, p *config.Policy, xml []byte, platform, qemuPath, imageDir string) (*config.VM, []config.Violation, error) {
	vm, err := config.FromLibvirtXML(xml)
	if err != nil {
		return nil, nil, err
	}
	f, _ := VMFacts(ctx, vm, platform, qemuPath) // unknown facts fail the check
	f.ImageDir = imageDir
	return vm, p.Check(vm, f), nil
}
