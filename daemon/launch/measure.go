package launch

import (
	"crypto/ecdsa"
	"fmt"
	"io"

	"github.com/snpd/snpd/daemon/api"
	"github.com/snpd/snpd/snp"
	snplaunch "github.com/snpd/snpd/snp/launch"
)

// measurement is what the launch needs from the expected-digest computation.
type measurement struct {
	// Digest is the SEV-SNP launch digest (48 bytes).
	Digest [48]byte
	// VCPUSig is the guest CPU model's CPUID signature placed in every VMSA.
	VCPUSig uint32
	// FirmwareHasKernelHashes tells whether the firmware has an SNP kernel-hashes
	// metadata section (OvmfPkg/AmdSev builds).
	FirmwareHasKernelHashes bool
}

// MeasureInput derives the measurement input from the spec: the same vCPU count, CPU
// model, firmware bytes, kernel, initrd and command line BuildArgv gives QEMU, so the
// expected digest and the launched machine cannot drift. Readers read the sealed memfds.
func (s *Spec) MeasureInput() (snplaunch.MeasureInput, error) {
	sig, err := snplaunch.CPUSignature(s.CPUModel)
	if err != nil {
		return snplaunch.MeasureInput{}, fmt.Errorf("cpu model: %w", err)
	}
	vmm, err := snplaunch.ParseVMMType(s.SNP.VMMType)
	if err != nil {
		return snplaunch.MeasureInput{}, fmt.Errorf("vmm type: %w", err)
	}
	in := snplaunch.MeasureInput{
		Mode:          snplaunch.ModeSNP,
		Firmware:      s.Firmware,
		FirmwareSize:  s.Firmware.Size,
		Cmdline:       s.Cmdline,
		VCPUs:         s.VCPUs,
		VCPUSig:       sig,
		VMM:           vmm,
		GuestFeatures: s.SNP.GuestFeatures,
	}
	if s.Kernel != nil {
		in.Kernel = s.Kernel.Reader()
	}
	if s.Initrd != nil {
		in.Initrd = s.Initrd.Reader()
	}
	return in, nil
}

// measureSpec computes the expected launch digest from the spec.
func measureSpec(s *Spec) (*measurement, error) {
	in, err := s.MeasureInput()
	if err != nil {
		return nil, err
	}
	m, err := snplaunch.Measure(in)
	if err != nil {
		return nil, err
	}
	if len(m.Digest) != 48 {
		return nil, fmt.Errorf("launch digest is %d bytes, want 48", len(m.Digest))
	}
	out := &measurement{VCPUSig: in.VCPUSig}
	copy(out.Digest[:], m.Digest)
	for _, sec := range m.Sections {
		if sec.Type == snplaunch.SectionSNPKernelHashes {
			out.FirmwareHasKernelHashes = true
		}
	}
	return out, nil
}

// buildIDBlock builds and signs the ID block when the spec asks for one (IDKeyFile: a
// P-384 PEM private key, or "keyless"), binding the expected digest and the policy.
func buildIDBlock(s *Spec, m *measurement) error {
	if s.SNP.IDKeyFile == "" {
		return nil
	}
	b := snp.NewIDBlock(m.Digest, s.SNP.PolicyBits())
	b.FamilyID, b.ImageID, b.GuestSVN = s.SNP.FamilyID, s.SNP.ImageID, s.SNP.GuestSVN
	var author *ecdsa.PrivateKey
	if s.SNP.AuthorKeyFile != "" {
		k, err := readKey(s.SNP.AuthorKeyFile)
		if err != nil {
			return fmt.Errorf("author key: %w", err)
		}
		author = k
	}
	var auth []byte
	var err error
	if s.SNP.IDKeyFile == "keyless" {
		auth, err = snp.KeylessIDAuthWithAuthor(b, author)
	} else {
		var id *ecdsa.PrivateKey
		if id, err = readKey(s.SNP.IDKeyFile); err != nil {
			return fmt.Errorf("ID key: %w", err)
		}
		auth, err = snp.SignIDBlock(b, id, author)
	}
	if err != nil {
		return err
	}
	block, err := b.MarshalBinary()
	if err != nil {
		return err
	}
	s.SNP.IDBlock, s.SNP.IDAuth = block, auth
	s.SNP.AuthorKey = author != nil
	return nil
}

func readKey(path string) (*ecdsa.PrivateKey, error) {
	f, _, err := OpenBootFile("key", path)
	if err != nil {
		return nil, fmt.Errorf("reading key: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, 64<<10))
	if err != nil {
		return nil, fmt.Errorf("reading key %s: %w", path, err)
	}
	k, err := snp.ParsePrivateKeyPEM(data)
	if err != nil {
		return nil, fmt.Errorf("reading key %s: %w: %w", path, err, api.ErrInvalid)
	}
	return k, nil
}
