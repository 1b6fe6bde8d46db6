package main

import (
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/snpd/snpd/snp/launch"
	"github.com/snpd/snpd/snp/uki"
)

func init() { addCommand(newMeasureCmd) }

// measureCompatVersion is the sev-snp-measure release whose output this command
// reproduces.
const measureCompatVersion = "0.0.13"

type measureFlags struct {
	mode, vcpuType, vcpuSig, vmmType, ovmf, kernel, initrd, appendLine string
	guestFeatures, outputFormat, ovmfHash, svsm, varsFile, vmsaGPA     string
	vmsaVariant                                                        string
	vcpus, family, model, stepping                                     int
	varsSize                                                           int64
	dumpVMSA, verbose, version, explain, jsonOut                       bool
}

func newMeasureCmd() *cobra.Command {
	var f measureFlags
	cmd := &cobra.Command{
		Use:   "measure --mode MODE --ovmf PATH [flags]",
		Short: "Compute the SEV/SEV-ES/SEV-SNP launch digest (drop-in for sev-snp-measure)",
		Long: `Compute the launch measurement the AMD Secure Processor will produce for a guest.

Takes the flags of virtee/sev-snp-measure ` + measureCompatVersion + ` with the same meaning and prints
exactly what it prints: the digest alone (hex or base64) on stdout. A script that runs
"sev-snp-measure ARGS" works unchanged with "snpctl measure ARGS".

Modes: snp, snp:ovmf-hash (digest after the firmware pages only, always hex),
snp:svsm (needs --svsm and --vars-size or --vars-file), seves, sev.

Guest features default to 0x1, what QEMU >= 9.1 with KVM_SEV_INIT2 uses; older
sev-snp-measure releases defaulted to 0x21 (DebugSwap) and give a different digest.
The vCPU signature is the guest CPU model's (--vcpu-type EPYC-v4 = 0x800f12,
EPYC-Milan = 0xa00f11, EPYC-Genoa = 0xa10f10, EPYC-Turin = 0xb00f00).

Measured direct boot (--kernel) needs an OVMF built from OvmfPkg/AmdSev whose SEV
metadata has the SNP_KERNEL_HASHES section (edk2 2025.02 has it): Debian's OVMF.fd
(OvmfPkgX64) and AmdSev builds of edk2 2022.11 have none and are refused, each with
its own reason.

A unified kernel image (UKI: systemd-stub with .linux, .initrd, .cmdline, ...) is
measured like any kernel file: give it alone as --kernel, as sev-snp-measure takes it
(the initrd and command line are inside it, so the measured ones are empty). --explain
and --json say that it is a UKI and list its sections with their SHA-256; -v says so
on stderr, leaving stdout as the reference prints it.

Beyond the reference:
  --explain       list every group of page updates (type, GPA range, count, digest
                  after) and the VMSA fields that differ between vCPUs, to find why a
                  digest does not match the hardware's
  --json          print all inputs (with file digests) and the result as JSON
  --vmsa-gpa      GPA recorded for VMSA pages (default 0xFFFFFFFFF000; some Genoa
                  setups use 0xFFFFFFFFFF000)
  --vmsa-variant  current | ec2-rdx0 (EC2 as computed before sev-snp-measure 0.0.13)
                  | qemu-pre-init2 (hosts before KVM_SEV_INIT2: mxcsr=0, fcw=0)`,
		Example: `  snpctl measure --mode snp --vcpus 4 --vcpu-type EPYC-v4 --ovmf OVMF.fd
  snpctl measure --mode snp --vcpus=2 --vcpu-type=EPYC-Milan --ovmf OVMF.amdsev.fd \
      --kernel vmlinuz --initrd initrd.img --append 'console=ttyS0' --output-format base64
  snpctl measure --mode snp --vcpus 2 --vcpu-type EPYC-Milan --ovmf OVMF.amdsev.fd \
      --kernel guest.efi --explain
  snpctl measure --mode snp:ovmf-hash --ovmf OVMF.fd
  snpctl measure --mode snp --vcpus 1 --vcpu-type EPYC-v4 --ovmf OVMF.fd --explain`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.version {
				fmt.Fprintf(cmd.OutOrStdout(), "snpctl measure (sev-snp-measure %s compatible)\n", measureCompatVersion)
				return nil
			}
			return runMeasure(cmd, &f)
		},
	}
	fl := cmd.Flags()
	fl.SortFlags = false
	fl.StringVar(&f.mode, "mode", "", "guest mode: sev, seves, snp, snp:ovmf-hash, snp:svsm (required)")
	fl.IntVar(&f.vcpus, "vcpus", 0, "number of guest vCPUs (required except in sev and snp:ovmf-hash)")
	fl.StringVar(&f.vcpuType, "vcpu-type", "", "guest vCPU model ("+strings.Join(launch.CPUTypes(), ", ")+")")
	fl.StringVar(&f.vcpuSig, "vcpu-sig", "", "guest vCPU signature value (decimal, 0x hex, 0o octal)")
	fl.IntVar(&f.family, "vcpu-family", 0, "guest vCPU family (with --vcpu-model and --vcpu-stepping)")
	fl.IntVar(&f.model, "vcpu-model", 0, "guest vCPU model")
	fl.IntVar(&f.stepping, "vcpu-stepping", 0, "guest vCPU stepping")
	fl.StringVar(&f.vmmType, "vmm-type", "QEMU", "type of guest VMM (QEMU, ec2, gce)")
	fl.StringVar(&f.ovmf, "ovmf", "", "OVMF firmware file to measure (required)")
	fl.StringVar(&f.kernel, "kernel", "", "kernel file to measure (needs an AmdSev OVMF under SNP)")
	fl.StringVar(&f.initrd, "initrd", "", "initrd file to measure (use with --kernel)")
	fl.StringVar(&f.appendLine, "append", "", "kernel command line to measure (use with --kernel)")
	fl.StringVar(&f.guestFeatures, "guest-features", "0x1", "SEV features in the VMSA (SNP); 0x1 for QEMU >= 9.1, 0x21 for older defaults")
	fl.StringVar(&f.outputFormat, "output-format", "hex", "measurement output format: hex or base64")
	fl.StringVar(&f.ovmfHash, "snp-ovmf-hash", "", "precalculated snp:ovmf-hash of the firmware (96 hex digits); skips hashing its pages")
	fl.BoolVar(&f.dumpVMSA, "dump-vmsa", false, "write measured VMSAs to vmsa<N>.bin in the current directory (seves, snp, snp:svsm)")
	fl.StringVar(&f.svsm, "svsm", "", "SVSM binary (snp:svsm mode)")
	fl.Int64Var(&f.varsSize, "vars-size", 0, "size of the OVMF_VARS file in bytes (snp:svsm; conflicts with --vars-file)")
	fl.StringVar(&f.varsFile, "vars-file", "", "OVMF_VARS file (snp:svsm; conflicts with --vars-size)")
	fl.BoolVarP(&f.verbose, "verbose", "v", false, "print \"Calculated <MODE> guest measurement: <digest>\"")
	fl.BoolVar(&f.version, "version", false, "print the sev-snp-measure version this command is compatible with")
	fl.BoolVar(&f.explain, "explain", false, "list page updates and per-vCPU VMSA differences, then the digest")
	fl.BoolVar(&f.jsonOut, "json", false, "print inputs (with file digests) and the result as JSON")
	fl.StringVar(&f.vmsaGPA, "vmsa-gpa", "0xFFFFFFFFF000", "GPA recorded for VMSA pages")
	fl.StringVar(&f.vmsaVariant, "vmsa-variant", "current", "VMSA initial state: current, ec2-rdx0, qemu-pre-init2")
	fl.SetNormalizeFunc(measureAbbrev(fl))
	cmd.MarkFlagsMutuallyExclusive("vars-size", "vars-file")
	cmd.MarkFlagsMutuallyExclusive("explain", "json")
	return cmd
}

// measureAbbrev accepts unambiguous prefixes of long flags (--output for
// --output-format), as the reference's argparse does; an ambiguous prefix stays
// unknown.
func measureAbbrev(fl *pflag.FlagSet) func(*pflag.FlagSet, string) pflag.NormalizedName {
	// Lookup would call back into this function: walk the flags instead.
	return func(_ *pflag.FlagSet, name string) pflag.NormalizedName {
		exact, n, match := false, 0, ""
		fl.VisitAll(func(f *pflag.Flag) {
			switch {
			case f.Name == name:
				exact = true
			case strings.HasPrefix(f.Name, name):
				n, match = n+1, f.Name
			}
		})
		if exact || n != 1 || len(name) < 2 {
			return pflag.NormalizedName(name)
		}
		return pflag.NormalizedName(match)
	}
}

// measureParseUint parses an integer with an automatic base (like Python's int(x, 0)).
func measureParseUint(flag, s string, bits int) (uint64, error) {
	v, err := strconv.ParseUint(strings.ReplaceAll(s, "_", ""), 0, bits)
	if err != nil {
		return 0, fmt.Errorf("--%s: invalid value %q (want a number such as 0x1)", flag, s)
	}
	return v, nil
}

type measureFile struct {
	path string
	f    *os.File
	size int64
	// image describes a kernel file's PE sections (UKI or not); nil when not read or
	// not a PE image. imageErr says why it is nil (uki.ErrNotPE, or a malformed PE).
	image    *uki.Summary
	imageErr error
}

func measureOpen(what, path string) (*measureFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", what, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("opening %s: %w", what, err)
	}
	if st.IsDir() {
		f.Close()
		return nil, fmt.Errorf("opening %s: %s is a directory", what, path)
	}
	return &measureFile{path: path, f: f, size: st.Size()}, nil
}

func runMeasure(cmd *cobra.Command, f *measureFlags) error {
	fl := cmd.Flags()
	set := fl.Changed
	out := cmd.OutOrStdout()
	if !set("mode") {
		return errors.New("the following arguments are required: --mode")
	}
	mode, err := launch.ParseMode(f.mode)
	if err != nil {
		return err
	}
	if !set("ovmf") || f.ovmf == "" {
		return errors.New("the following arguments are required: --ovmf")
	}
	if f.outputFormat != "hex" && f.outputFormat != "base64" {
		return fmt.Errorf("--output-format: invalid choice %q (choose from hex, base64)", f.outputFormat)
	}
	var in launch.MeasureInput
	in.Mode = mode
	if set("vcpu-type") {
		// The reference validates the choice whatever the mode.
		if _, err := launch.CPUSignature(f.vcpuType); err != nil {
			return err
		}
	}
	fw, err := measureOpen("firmware", f.ovmf)
	if err != nil {
		return err
	}
	defer fw.f.Close()
	in.Firmware, in.FirmwareSize = fw.f, fw.size

	if mode == launch.ModeSNPOVMFHash {
		in.SkipFileDigests = !f.jsonOut
		in.Log = f.explain
		m, err := launch.Measure(in)
		if err != nil {
			return err
		}
		return measurePrint(out, cmd.ErrOrStderr(), f, &in, m, fw, nil, nil, hex.EncodeToString(m.Digest))
	}

	hasKernel := set("kernel") && f.kernel != ""
	if f.initrd != "" && !hasKernel {
		return errors.New("--kernel required when using --initrd")
	}
	if f.appendLine != "" && !hasKernel {
		return errors.New("--kernel required when using --append")
	}
	if mode != launch.ModeSEV && !set("vcpus") {
		return fmt.Errorf("missing --vcpus N in guest mode '%s'", mode)
	}
	if set("vcpus") && f.vcpus < 1 {
		return fmt.Errorf("--vcpus must be at least 1 (got %d)", f.vcpus)
	}
	in.VCPUs = f.vcpus
	if in.VMM, err = launch.ParseVMMType(f.vmmType); err != nil {
		return err
	}
	if in.VCPUSig, err = measureVCPUSig(f, set, mode, in.VMM); err != nil {
		return err
	}
	if in.GuestFeatures, err = measureParseUint("guest-features", f.guestFeatures, 64); err != nil {
		return err
	}
	gpa, err := measureParseUint("vmsa-gpa", f.vmsaGPA, 64)
	if err != nil {
		return err
	}
	if gpa%launch.PageSize != 0 || gpa == 0 {
		return fmt.Errorf("--vmsa-gpa %#x is not a non-zero page-aligned address", gpa)
	}
	in.VMSAGPA = gpa
	if in.VMSAVariant, err = launch.ParseVMSAVariant(f.vmsaVariant); err != nil {
		return err
	}
	if set("snp-ovmf-hash") {
		if in.OVMFHash, err = hex.DecodeString(f.ovmfHash); err != nil {
			return fmt.Errorf("--snp-ovmf-hash: not a hex string: %w", err)
		}
	}
	if mode == launch.ModeSNPSVSM {
		if !set("svsm") || f.svsm == "" {
			return errors.New("snp:svsm mode requires --svsm")
		}
		switch {
		case set("vars-file") && f.varsFile != "":
			st, err := os.Stat(f.varsFile)
			if err != nil {
				return fmt.Errorf("reading --vars-file: %w", err)
			}
			in.VarsSize = st.Size()
		case set("vars-size") && f.varsSize != 0:
			in.VarsSize = f.varsSize
		default:
			return errors.New("snp:svsm mode requires --vars-size or --vars-file")
		}
		sv, err := measureOpen("SVSM image", f.svsm)
		if err != nil {
			return err
		}
		defer sv.f.Close()
		in.SVSM, in.SVSMSize = sv.f, sv.size
	}
	if f.dumpVMSA && mode != launch.ModeSEVES && mode != launch.ModeSNP && mode != launch.ModeSNPSVSM {
		return errors.New("--dump-vmsa is not available in the selected mode")
	}
	var kernel, initrd *measureFile
	if hasKernel {
		if kernel, err = measureOpen("kernel", f.kernel); err != nil {
			return err
		}
		defer kernel.f.Close()
		in.Kernel = kernel.f
		if f.initrd != "" {
			if initrd, err = measureOpen("initrd", f.initrd); err != nil {
				return err
			}
			defer initrd.f.Close()
			in.Initrd = initrd.f
		}
		in.Cmdline = f.appendLine
	}
	in.SkipFileDigests = !f.jsonOut
	in.Log = f.explain
	m, err := launch.Measure(in)
	if err != nil {
		return err
	}
	if f.dumpVMSA {
		for i := 0; i < in.VCPUs; i++ {
			if err := os.WriteFile(fmt.Sprintf("vmsa%d.bin", i), m.VMSAPage(i), 0o644); err != nil {
				return fmt.Errorf("dumping VMSA: %w", err)
			}
		}
	}
	if kernel != nil && (f.explain || f.verbose || f.jsonOut) {
		// Read-only and beside the measurement: a kernel that is no PE image, or a
		// malformed one, is still measured as the bytes it is.
		kernel.image, kernel.imageErr = uki.Describe(kernel.f, kernel.size)
	}
	s := hex.EncodeToString(m.Digest)
	if f.outputFormat == "base64" {
		s = base64.StdEncoding.EncodeToString(m.Digest)
	}
	return measurePrint(out, cmd.ErrOrStderr(), f, &in, m, fw, kernel, initrd, s)
}

// measureVCPUSig resolves the vCPU signature the way the reference's get_vcpu_sig
// does: family/model/stepping, then --vcpu-sig, then --vcpu-type; required for QEMU.
func measureVCPUSig(f *measureFlags, set func(string) bool, mode launch.Mode, vmm launch.VMMType) (uint32, error) {
	switch {
	case mode == launch.ModeSEV:
		return 0, nil
	case set("vcpu-family"):
		if !set("vcpu-model") || !set("vcpu-stepping") {
			return 0, errors.New("--vcpu-family needs --vcpu-model and --vcpu-stepping")
		}
		for _, v := range []int{f.family, f.model, f.stepping} {
			if v < 0 || v > 0xff+0xf {
				return 0, fmt.Errorf("vCPU family/model/stepping %d out of range", v)
			}
		}
		return launch.CPUSig(uint32(f.family), uint32(f.model), uint32(f.stepping)), nil
	case set("vcpu-sig"):
		v, err := measureParseUint("vcpu-sig", f.vcpuSig, 32)
		return uint32(v), err
	case set("vcpu-type"):
		return launch.CPUSignature(f.vcpuType)
	case vmm == launch.VMMQEMU:
		return 0, fmt.Errorf("missing --vcpu-type or --vcpu-sig or --vcpu-family in guest mode '%s'", mode)
	}
	return 0, nil
}

func measurePrint(out, errOut io.Writer, f *measureFlags, in *launch.MeasureInput, m *launch.Measurement, fw, kernel, initrd *measureFile, digest string) error {
	switch {
	case f.jsonOut:
		return measureJSON(out, f, in, m, fw, kernel, initrd)
	case f.explain:
		measureExplain(out, in, m, kernel)
	}
	if f.verbose && kernel != nil && kernel.image != nil && kernel.image.UKI {
		// stderr: stdout stays what the reference prints.
		fmt.Fprintf(errOut, "kernel %s is a UKI (sections %s): measured as one kernel file\n",
			kernel.path, strings.Join(measureSectionNames(kernel.image), " "))
	}
	if f.verbose && in.Mode != launch.ModeSNPOVMFHash { // the reference prints the bare hash there
		_, err := fmt.Fprintf(out, "Calculated %s guest measurement: %s\n", in.Mode.Name(), digest)
		return err
	}
	_, err := fmt.Fprintln(out, digest)
	return err
}

func measureSectionNames(s *uki.Summary) []string {
	names := make([]string, len(s.Sections))
	for i, sec := range s.Sections {
		names[i] = sec.Name
	}
	return names
}

// measureExplainKernel says what kind of file the kernel is: a UKI with its sections
// (the initrd and command line that boot are inside it), an EFI-stub kernel, or bytes
// that are no PE image. Text from the file is quoted.
func measureExplainKernel(out io.Writer, in *launch.MeasureInput, kernel *measureFile) {
	im := kernel.image
	switch {
	case im == nil && errors.Is(kernel.imageErr, uki.ErrNotPE):
		fmt.Fprintln(out, "kernel is not a PE image (not a UKI)")
		return
	case im == nil:
		fmt.Fprintf(out, "kernel: cannot read its PE section table (measured all the same): %v\n", kernel.imageErr)
		return
	case !im.UKI:
		fmt.Fprintf(out, "kernel is a PE image but not a UKI (no .linux section; an EFI-stub kernel): sections %s\n",
			strings.Join(measureSectionNames(im), " "))
		return
	}
	stub := ""
	if im.Stub != "" {
		stub = " built on " + strconv.Quote(im.Stub)
	}
	fmt.Fprintf(out, "kernel is a UKI%s: measured as one file; the initrd and command line it boots are inside it\n", stub)
	fmt.Fprintf(out, "  %-10s %10s  %s\n", "SECTION", "BYTES", "SHA256")
	for _, s := range im.Sections {
		fmt.Fprintf(out, "  %-10s %10d  %s\n", s.Name, s.Size, s.SHA256)
	}
	for _, kv := range [][2]string{{".cmdline", im.Cmdline}, {".uname", im.Uname}, {".osrel", im.OSRelease}} {
		if kv[1] != "" {
			fmt.Fprintf(out, "  %-10s %s\n", kv[0], strconv.Quote(kv[1]))
		}
	}
	if in.Cmdline != "" {
		fmt.Fprintln(out, "  note: QEMU passes --append to systemd-stub, which boots it instead of the UKI's .cmdline when Secure Boot is off")
	}
	if in.Initrd != nil {
		fmt.Fprintln(out, "  note: --initrd is measured and passed beside the UKI's own .initrd")
	}
}

func measureExplain(out io.Writer, in *launch.MeasureInput, m *launch.Measurement, kernel *measureFile) {
	fmt.Fprintf(out, "mode %s, %d vCPU(s), vCPU signature %#x, VMM %s, guest features %#x, VMSA variant %s\n",
		in.Mode, in.VCPUs, in.VCPUSig, in.VMM, in.GuestFeatures, in.VMSAVariant)
	for _, s := range m.Sections {
		fmt.Fprintf(out, "metadata section %-17s GPA %#x size %#x\n", s.Type, s.GPA, s.Size)
	}
	if m.KernelSHA256 != nil {
		fmt.Fprintf(out, "kernel sha256 %x\ninitrd sha256 %x\ncmdline sha256 %x\n", m.KernelSHA256, m.InitrdSHA256, m.CmdlineSHA256)
		if kernel != nil {
			measureExplainKernel(out, in, kernel)
		}
	}
	if len(m.Updates) > 0 {
		fmt.Fprintln(out, "page updates (in order):")
		fmt.Fprintf(out, "  %-10s %-33s %7s  %s\n", "TYPE", "GPA RANGE", "PAGES", "DIGEST AFTER")
		for _, g := range launch.GroupUpdates(m.Updates) {
			fmt.Fprintf(out, "  %-10s %#-14x - %#-14x %7d  %x\n", g.Type, g.FirstGPA, g.LastGPA+launch.PageSize-1, g.Count, g.DigestAfter)
		}
	} else if in.Mode == launch.ModeSEV || in.Mode == launch.ModeSEVES {
		fmt.Fprintln(out, "SEV/SEV-ES: SHA-256 over firmware, then the hashes table (with a kernel), then each VMSA")
	}
	if m.BSPVMSA != nil {
		fmt.Fprintln(out, "VMSA of vCPU 0 (BSP), non-zero fields:")
		for _, d := range launch.DescribeVMSA(m.BSPVMSA) {
			fmt.Fprintf(out, "  %-12s %s\n", d.Field, d.B)
		}
		if m.APVMSA != nil {
			fmt.Fprintf(out, "VMSA of vCPUs 1..%d (AP) differs from the BSP in:\n", in.VCPUs-1)
			for _, d := range launch.DiffVMSA(m.BSPVMSA, m.APVMSA) {
				fmt.Fprintf(out, "  %-12s BSP %s  AP %s\n", d.Field, d.A, d.B)
			}
		}
	}
}

type measureJSONFile struct {
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256,omitempty"`
	SHA384 string `json:"sha384,omitempty"`
	// PEImage describes a kernel that is a PE image: "uki" tells whether it is a
	// unified kernel image, "sections" lists name, size in bytes and SHA-256 of each.
	PEImage *uki.Summary `json:"pe_image,omitempty"`
	// PEImageError says why a kernel that starts like a PE image could not be read
	// as one (it is measured all the same).
	PEImageError string `json:"pe_image_error,omitempty"`
}

func measureJSON(out io.Writer, f *measureFlags, in *launch.MeasureInput, m *launch.Measurement, fw, kernel, initrd *measureFile) error {
	type result struct {
		Mode          string            `json:"mode"`
		VCPUs         int               `json:"vcpus,omitempty"`
		VCPUSig       string            `json:"vcpu_sig,omitempty"`
		VMMType       string            `json:"vmm_type"`
		GuestFeatures string            `json:"guest_features,omitempty"`
		VMSAGPA       string            `json:"vmsa_gpa,omitempty"`
		VMSAVariant   string            `json:"vmsa_variant"`
		Firmware      measureJSONFile   `json:"firmware"`
		Kernel        *measureJSONFile  `json:"kernel,omitempty"`
		Initrd        *measureJSONFile  `json:"initrd,omitempty"`
		Cmdline       *string           `json:"cmdline,omitempty"`
		CmdlineSHA256 string            `json:"cmdline_sha256,omitempty"`
		SVSM          string            `json:"svsm,omitempty"`
		VarsSize      int64             `json:"vars_size,omitempty"`
		OVMFHashGiven bool              `json:"snp_ovmf_hash_given,omitempty"`
		Sections      []map[string]any  `json:"metadata_sections,omitempty"`
		OVMFHash      string            `json:"ovmf_hash,omitempty"`
		Measurement   string            `json:"measurement"`
		MeasurementB6 string            `json:"measurement_base64"`
		Extra         map[string]string `json:"compat,omitempty"`
	}
	r := result{
		Mode:          in.Mode.String(),
		VMMType:       in.VMM.String(),
		VMSAVariant:   in.VMSAVariant.String(),
		Firmware:      measureJSONFile{Path: fw.path, Size: fw.size, SHA256: hex.EncodeToString(m.FirmwareSHA256), SHA384: hex.EncodeToString(m.FirmwareSHA384)},
		Measurement:   hex.EncodeToString(m.Digest),
		MeasurementB6: base64.StdEncoding.EncodeToString(m.Digest),
		SVSM:          f.svsm,
		VarsSize:      in.VarsSize,
		OVMFHashGiven: in.OVMFHash != nil,
		Extra:         map[string]string{"sev-snp-measure": measureCompatVersion},
	}
	if in.Mode != launch.ModeSEV && in.Mode != launch.ModeSNPOVMFHash {
		r.VCPUs = in.VCPUs
		r.VCPUSig = fmt.Sprintf("%#x", in.VCPUSig)
		r.VMSAGPA = fmt.Sprintf("%#x", in.VMSAGPA)
	}
	if in.Mode == launch.ModeSNP {
		r.GuestFeatures = fmt.Sprintf("%#x", in.GuestFeatures)
	}
	if m.OVMFDigest != nil {
		r.OVMFHash = hex.EncodeToString(m.OVMFDigest)
	}
	if kernel != nil {
		r.Kernel = &measureJSONFile{Path: kernel.path, Size: kernel.size, SHA256: hex.EncodeToString(m.KernelSHA256), PEImage: kernel.image}
		if kernel.imageErr != nil && !errors.Is(kernel.imageErr, uki.ErrNotPE) {
			r.Kernel.PEImageError = kernel.imageErr.Error()
		}
		if initrd != nil {
			r.Initrd = &measureJSONFile{Path: initrd.path, Size: initrd.size, SHA256: hex.EncodeToString(m.InitrdSHA256)}
		}
		c := in.Cmdline
		r.Cmdline = &c
		r.CmdlineSHA256 = hex.EncodeToString(m.CmdlineSHA256)
	}
	for _, s := range m.Sections {
		r.Sections = append(r.Sections, map[string]any{"type": s.Type.String(), "gpa": fmt.Sprintf("%#x", s.GPA), "size": fmt.Sprintf("%#x", s.Size)})
	}
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}
