package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/snpd/snpd/snp/snptest"
)

type measureResult struct {
	stdout, stderr string
	rc             int
}

func measureRun(t *testing.T, bin, dir string, args ...string) measureResult {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"measure"}, args...)...)
	cmd.Dir = dir
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	err := cmd.Run()
	rc := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		rc = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return measureResult{so.String(), se.String(), rc}
}

// measureSplit splits a command line with single quotes (the vector files' only
// quoting).
func measureSplit(s string) []string {
	var out []string
	var cur strings.Builder
	in, quoted := false, false
	for _, c := range s {
		switch {
		case c == '\'':
			quoted, in = !quoted, true
		case c == ' ' && !quoted:
			if in {
				out = append(out, cur.String())
				cur.Reset()
				in = false
			}
		default:
			cur.WriteRune(c)
			in = true
		}
	}
	if in {
		out = append(out, cur.String())
	}
	return out
}

type measureVector struct {
	name, stdout, stderr string
	args                 []string
	rc                   int
}

// measureVectors reads vectors.tsv (cmdCol 4) or the upstream expectations
// (cmdCol 1) and keeps the sev-snp-measure rows.
func measureVectors(t *testing.T, path string, upstream bool) []measureVector {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []measureVector
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	sc.Scan() // header
	for sc.Scan() {
		r := strings.Split(sc.Text(), "\t")
		var v measureVector
		if upstream {
			if len(r) < 3 || r[1] == "" {
				continue
			}
			v = measureVector{name: r[0], args: measureSplit(r[1]), stdout: r[2]}
			if msg, ok := strings.CutPrefix(r[2], "ERROR: "); ok {
				v.rc, v.stdout, v.stderr = 1, "", "Error: "+msg
			}
		} else {
			if len(r) < 8 {
				continue
			}
			v = measureVector{name: r[0], args: measureSplit(r[4]), stdout: r[6], stderr: r[7]}
			if r[5] != "0" {
				v.rc = 1
			}
		}
		if len(v.args) == 0 || v.args[0] != "sev-snp-measure" {
			continue
		}
		v.args = v.args[1:]
		out = append(out, v)
	}
	return out
}

func measureCheck(t *testing.T, bin, dir string, v measureVector) {
	t.Helper()
	r := measureRun(t, bin, dir, v.args...)
	if v.rc == 0 {
		if r.rc != 0 || r.stdout != v.stdout+"\n" || r.stderr != "" {
			t.Fatalf("snpctl measure %q: rc %d stdout %q stderr %q\nwant stdout %q", v.args, r.rc, r.stdout, r.stderr, v.stdout)
		}
		return
	}
	if r.rc != 1 || r.stdout != "" || strings.Count(r.stderr, "\n") != 1 || !strings.HasPrefix(r.stderr, v.stderr) {
		t.Fatalf("snpctl measure %q: rc %d stdout %q stderr %q\nwant rc 1, stderr starting %q", v.args, r.rc, r.stdout, r.stderr, v.stderr)
	}
}

// TestMeasureBinary runs the built snpctl like a script that used to call
// sev-snp-measure: every vector row, flag spellings, extra outputs and errors.
func TestMeasureBinary(t *testing.T) {
	bin := snpctlBuild(t)
	root := snptest.RepoRoot(t)
	committed := filepath.Join(root, "snp", "testdata")
	shared := filepath.Join(root, "..", "shared", "testdata", "snp")
	haveShared := true
	if _, err := os.Stat(filepath.Join(shared, "upstream")); err != nil {
		haveShared = false
	}

	t.Run("committed vectors", func(t *testing.T) {
		n := 0
		for _, v := range measureVectors(t, filepath.Join(committed, "vectors.tsv"), false) {
			if strings.Contains(strings.Join(v.args, " "), "upstream/") {
				continue
			}
			n++
			t.Run(v.name, func(t *testing.T) { measureCheck(t, bin, committed, v) })
		}
		if n < 10 {
			t.Fatalf("only %d rows", n)
		}
	})

	t.Run("amdsev vectors", func(t *testing.T) {
		// vectors-amdsev.tsv: the reference's rows from AMDSEV-PROVENANCE.txt and
		// snpctl's own (each names its cross-check), on the committed AmdSev builds.
		f, err := os.ReadFile(filepath.Join(committed, "vectors-amdsev.tsv"))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, line := range strings.Split(strings.TrimSpace(string(f)), "\n")[1:] {
			r := strings.Split(line, "\t")
			if len(r) != 9 {
				t.Fatalf("row %q", r)
			}
			args := measureSplit(r[4])
			switch {
			case len(args) > 1 && args[0] == "sev-snp-measure":
				args = args[1:]
			case len(args) > 2 && args[0] == "snpctl" && args[1] == "measure":
				args = args[2:]
			default:
				t.Fatalf("row %s: command %q", r[0], r[4])
			}
			v := measureVector{name: r[0], args: args, stdout: r[6], stderr: r[7]}
			if r[5] != "0" {
				v.rc = 1
			}
			n++
			t.Run(v.name, func(t *testing.T) { measureCheck(t, bin, committed, v) })
		}
		if n < 8 {
			t.Fatalf("only %d rows", n)
		}
	})

	t.Run("shared vectors", func(t *testing.T) {
		if !haveShared {
			t.Skipf("shared test data absent (%s): upstream fixtures are not committed", shared)
		}
		rows := measureVectors(t, filepath.Join(shared, "vectors.tsv"), false)
		rows = append(rows, measureVectors(t, filepath.Join(shared, "upstream", "upstream-test-expectations.tsv"), true)...)
		if len(rows) < 40 {
			t.Fatalf("only %d rows", len(rows))
		}
		for _, v := range rows {
			t.Run(v.name, func(t *testing.T) { measureCheck(t, bin, shared, v) })
		}
	})

	const trixie1 = "6eef547a9fcf5720c5c04883fe85788d29de46b55a51e554467029b554a3352e66d2f3c71b84cea937d19a1a6c41596f"
	fw := "firmware/ovmf-trixie-2025.02.fd"

	t.Run("flag spellings", func(t *testing.T) {
		for _, args := range [][]string{
			{"--mode=snp", "--vcpus=1", "--vcpu-type=EPYC-v4", "--ovmf=" + fw},
			{"--ovmf", fw, "--vcpu-sig", "0x800f12", "--vcpus", "1", "--mode", "snp"},
			{"--mode", "snp", "--vcpus", "1", "--vcpu-family", "23", "--vcpu-model", "1", "--vcpu-stepping", "2", "--ovmf", fw},
			{"--mode", "snp", "--vcpus", "1", "--vcpu-sig", "8392466", "--ovmf", fw, "--guest-features", "1", "--vmm-type", "QEMU"},
			// argparse accepts unambiguous prefixes of long options.
			{"--mode", "snp", "--vcpus", "1", "--vcpu-t", "EPYC-v4", "--ovm", fw, "--output", "hex", "--guest", "0x1"},
		} {
			r := measureRun(t, bin, committed, args...)
			if r.rc != 0 || r.stdout != trixie1+"\n" {
				t.Errorf("%q: rc %d %q %q", args, r.rc, r.stdout, r.stderr)
			}
		}
		r := measureRun(t, bin, committed, "-v", "--mode", "snp", "--vcpus", "1", "--vcpu-type", "EPYC-v4", "--ovmf", fw)
		if r.stdout != "Calculated SEV_SNP guest measurement: "+trixie1+"\n" {
			t.Errorf("verbose: %q", r.stdout)
		}
		// snp:ovmf-hash prints bare hex whatever -v and --output-format say.
		r = measureRun(t, bin, committed, "-v", "--mode", "snp:ovmf-hash", "--output-format", "base64", "--ovmf", "firmware/ovmf-bookworm-2022.11.fd")
		if r.stdout != "ba2c811512ef868474f239a21f7d7057d65a20de87a003c4f116e4fb1573183bfbcd75c3e99b2f558575a5d0094f73c6\n" {
			t.Errorf("ovmf-hash: %q %q", r.stdout, r.stderr)
		}
		r = measureRun(t, bin, committed, "--version")
		if r.rc != 0 || !strings.Contains(r.stdout, "sev-snp-measure 0.0.13") {
			t.Errorf("--version: %q", r.stdout)
		}
	})

	t.Run("json", func(t *testing.T) {
		r := measureRun(t, bin, committed, "--mode", "snp", "--vcpus", "1", "--vcpu-type", "EPYC-v4", "--ovmf", fw, "--json")
		var doc struct {
			Measurement string
			VCPUSig     string `json:"vcpu_sig"`
			Firmware    struct{ SHA256, SHA384 string }
			Sections    []map[string]string `json:"metadata_sections"`
		}
		if err := json.Unmarshal([]byte(r.stdout), &doc); err != nil || r.rc != 0 {
			t.Fatalf("rc %d, %v: %s %s", r.rc, err, r.stdout, r.stderr)
		}
		raw, err := os.ReadFile(filepath.Join(committed, fw))
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(raw)
		if doc.Measurement != trixie1 || doc.Firmware.SHA256 != hex.EncodeToString(sum[:]) || len(doc.Firmware.SHA384) != 96 ||
			doc.VCPUSig != "0x800f12" || len(doc.Sections) != 6 {
			t.Fatalf("json: %+v", doc)
		}
	})

	t.Run("explain", func(t *testing.T) {
		r := measureRun(t, bin, committed, "--mode", "snp", "--vcpus", "2", "--vcpu-type", "EPYC-v4", "--ovmf", fw, "--explain")
		lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
		if r.rc != 0 || len(lines) < 10 {
			t.Fatalf("rc %d: %s %s", r.rc, r.stdout, r.stderr)
		}
		for _, want := range []string{"NORMAL     0xffc00000", "1024", "SECRETS", "CPUID", "VMSA", "AP) differs from the BSP", "rip          BSP 0xfff0  AP 0xb004"} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("explain output lacks %q:\n%s", want, r.stdout)
			}
		}
		if lines[len(lines)-1] != "dde22ec32131c388cdd74935c4fe73726cdbf327422c9fcdb96c2984283fb826993ec008addab81fd33109bad66d9fd9" {
			t.Errorf("last line %q is not the 2-vCPU digest", lines[len(lines)-1])
		}
	})

	t.Run("uki", func(t *testing.T) {
		// The committed UKI: Debian's systemd-stub with the synthetic kernel and initrd
		// (snp/uki's tests check it against its inputs); its digest is a vector row.
		const ukiDigest = "abb0a5d70077c8ee6258e125821267ff82ad59feff4c1b60f5f61299b9e8d26a37c7daf890535584bdc296f062ea78bb"
		args := []string{"--mode", "snp", "--vcpus", "1", "--vcpu-type", "EPYC-v4", "--ovmf", "firmware/ovmf-amdsev-debian-2025.02.fd", "--kernel", "uki/uki-synthetic.efi"}
		r := measureRun(t, bin, committed, args...)
		if r.rc != 0 || r.stdout != ukiDigest+"\n" || r.stderr != "" {
			t.Fatalf("plain: rc %d %q %q", r.rc, r.stdout, r.stderr)
		}
		r = measureRun(t, bin, committed, append([]string{"-v"}, args...)...)
		if r.stdout != "Calculated SEV_SNP guest measurement: "+ukiDigest+"\n" ||
			r.stderr != "kernel uki/uki-synthetic.efi is a UKI (sections .text .reloc .data .dynamic .rela .dynsym .sbat .sdmagic .osrel .cmdline .uname .initrd .linux): measured as one kernel file\n" {
			t.Fatalf("-v: stdout %q stderr %q", r.stdout, r.stderr)
		}
		r = measureRun(t, bin, committed, append(args, "--explain")...)
		for _, want := range []string{
			`kernel is a UKI built on "systemd-stub 252.39-1~deb12u2": measured as one file; the initrd and command line it boots are inside it`,
			"  .linux          65536  ef4636928161808e87035fa51983821677527ccd9661991c5d0126a778b2268a\n",
			"  .initrd         40960  512abfd1192dcda271eb3b5dfa1211dacece9a6d81015529201edee7f635efc3\n",
			`  .cmdline   "console=ttyS0 snpd.synthetic=1"`,
			`  .uname     "6.1.0-synthetic-amd64"`,
		} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("--explain lacks %q:\n%s", want, r.stdout)
			}
		}
		if strings.Contains(r.stdout, "note:") || !strings.HasSuffix(r.stdout, "\n"+ukiDigest+"\n") {
			t.Errorf("--explain:\n%s", r.stdout)
		}
		r = measureRun(t, bin, committed, append(args, "--explain", "--append", "console=ttyS0")...)
		if !strings.Contains(r.stdout, "note: QEMU passes --append to systemd-stub, which boots it instead of the UKI's .cmdline") {
			t.Errorf("--explain with --append has no note:\n%s", r.stdout)
		}
		r = measureRun(t, bin, committed, append(args, "--json")...)
		var doc struct {
			Kernel struct {
				PEImage struct {
					UKI      bool
					Cmdline  string
					Sections []struct {
						Name, SHA256 string
						Size         int
					}
				} `json:"pe_image"`
			}
		}
		if err := json.Unmarshal([]byte(r.stdout), &doc); err != nil || r.rc != 0 {
			t.Fatalf("--json: rc %d %v %s %s", r.rc, err, r.stdout, r.stderr)
		}
		pe := doc.Kernel.PEImage
		if !pe.UKI || pe.Cmdline != "console=ttyS0 snpd.synthetic=1" || len(pe.Sections) != 13 || pe.Sections[12].Name != ".linux" ||
			pe.Sections[12].Size != 65536 || pe.Sections[12].SHA256 != "ef4636928161808e87035fa51983821677527ccd9661991c5d0126a778b2268a" {
			t.Fatalf("--json pe_image %+v", pe)
		}
		// Not a PE image, and a malformed one: measured all the same, and said so.
		r = measureRun(t, bin, committed, "--mode", "snp", "--vcpus", "1", "--vcpu-type", "EPYC-v4", "--ovmf", "firmware/ovmf-amdsev-debian-2025.02.fd",
			"--kernel", "inputs/kernel-synthetic.bin", "--explain")
		if r.rc != 0 || !strings.Contains(r.stdout, "kernel is not a PE image (not a UKI)\n") {
			t.Errorf("synthetic kernel: rc %d\n%s", r.rc, r.stdout)
		}
		bad, err := os.ReadFile(filepath.Join(committed, "uki", "uki-synthetic.efi"))
		if err != nil {
			t.Fatal(err)
		}
		bad = bad[:0x2ba00-100] // .linux (the last section, 0x1ba00+0x10000) now runs past the end
		badPath := filepath.Join(t.TempDir(), "truncated.efi")
		if err := os.WriteFile(badPath, bad, 0o644); err != nil {
			t.Fatal(err)
		}
		r = measureRun(t, bin, committed, "--mode", "snp", "--vcpus", "1", "--vcpu-type", "EPYC-v4", "--ovmf", "firmware/ovmf-amdsev-debian-2025.02.fd",
			"--kernel", badPath, "--explain")
		if r.rc != 0 || !strings.Contains(r.stdout, "kernel: cannot read its PE section table (measured all the same): malformed PE image: section 12 (.linux)") {
			t.Errorf("truncated UKI: rc %d %s\n%s", r.rc, r.stderr, r.stdout)
		}
		r = measureRun(t, bin, committed, "--mode", "snp", "--vcpus", "1", "--vcpu-type", "EPYC-v4", "--ovmf", "firmware/ovmf-amdsev-debian-2025.02.fd",
			"--kernel", badPath, "--json")
		if r.rc != 0 || !strings.Contains(r.stdout, `"pe_image_error": "malformed PE image: section 12 (.linux)`) {
			t.Errorf("truncated UKI --json: rc %d %s\n%s", r.rc, r.stderr, r.stdout)
		}
	})

	t.Run("dump-vmsa", func(t *testing.T) {
		if !haveShared {
			t.Skipf("shared test data absent (%s): the reference VMSA dumps live there", shared)
		}
		dir := t.TempDir()
		r := measureRun(t, bin, dir, "--mode", "snp", "--vcpus", "2", "--vcpu-type", "EPYC-v4", "--vmm-type", "ec2",
			"--ovmf", filepath.Join(committed, fw), "--dump-vmsa")
		if r.rc != 0 {
			t.Fatal(r.stderr)
		}
		for i, name := range []string{"snp-trixie-ec2-gf0x1-vmsa0.bin", "snp-trixie-ec2-gf0x1-vmsa1.bin"} {
			got, err := os.ReadFile(filepath.Join(dir, "vmsa"+string(rune('0'+i))+".bin"))
			if err != nil {
				t.Fatal(err)
			}
			want, err := os.ReadFile(filepath.Join(shared, "vmsa", name))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("vmsa%d differs from %s", i, name)
			}
		}
	})

	t.Run("variants", func(t *testing.T) {
		base := measureRun(t, bin, committed, "--mode", "snp", "--vcpus", "1", "--vcpu-type", "EPYC-v4", "--ovmf", fw)
		seen := map[string]string{base.stdout: "default"}
		for _, extra := range [][]string{{"--vmsa-gpa", "0xFFFFFFFFFF000"}, {"--vmsa-variant", "qemu-pre-init2"},
			{"--vmm-type", "ec2", "--vmsa-variant", "ec2-rdx0"}} {
			r := measureRun(t, bin, committed, append([]string{"--mode", "snp", "--vcpus", "1", "--vcpu-type", "EPYC-v4", "--ovmf", fw}, extra...)...)
			if r.rc != 0 || len(r.stdout) != 97 {
				t.Fatalf("%q: rc %d %q %q", extra, r.rc, r.stdout, r.stderr)
			}
			if prev, dup := seen[r.stdout]; dup {
				t.Fatalf("%q gives the same digest as %s", extra, prev)
			}
			seen[r.stdout] = strings.Join(extra, " ")
		}
	})

	t.Run("errors", func(t *testing.T) {
		dir := t.TempDir()
		write := func(name string, b []byte) string {
			p := filepath.Join(dir, name)
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
			return p
		}
		empty := write("empty.fd", nil)
		odd := write("odd.fd", make([]byte, 5000))
		zeros := write("zeros.fd", make([]byte, 8192))
		badType := write("badtype.fd", snptest.OVMF(snptest.OVMFOptions{ResetEIP: 1, Sections: []snptest.Section{{GPA: 0x800000, Size: 0x1000, Type: 9}}}))
		twoPages := write("twopages.fd", snptest.OVMF(snptest.OVMFOptions{ResetEIP: 0x80b004, HashTableGPA: 0x810c00,
			Sections: []snptest.Section{{GPA: 0x810000, Size: 0x2000, Type: 0x10}}}))
		kernel := filepath.Join(committed, "inputs", "kernel-synthetic.bin")
		snp1 := func(ovmf string, more ...string) []string {
			return append([]string{"--mode", "snp", "--vcpus", "1", "--vcpu-type", "EPYC-v4", "--ovmf", ovmf}, more...)
		}
		for _, tc := range []struct {
			name string
			args []string
			want string
		}{
			{"empty file", snp1(empty), "Error: firmware size must be a non-zero multiple of 4096 bytes (got 0)"},
			{"size not multiple", snp1(odd), "(got 5000)"},
			{"no footer", snp1(zeros), "no OVMF footer table"},
			{"unknown section type", snp1(badType), "unknown OVMF metadata section type 0x9"},
			{"hashes not one page", snp1(twoPages, "--kernel", kernel), "want exactly one page"},
			{"debian kernel", snp1(filepath.Join(committed, fw), "--kernel", kernel),
				"Error: Kernel specified but OVMF metadata doesn't include SNP_KERNEL_HASHES section: this firmware is not an OvmfPkg/AmdSev build (no SEV hashes table; Debian's OVMF.fd is OvmfPkgX64)"},
			{"amdsev 2022.11 kernel", snp1(filepath.Join(committed, "firmware", "ovmf-amdsev-debian-2022.11.fd"), "--kernel", kernel),
				"Error: Kernel specified but OVMF metadata doesn't include SNP_KERNEL_HASHES section: this firmware has the SEV hashes table (SEV and SEV-ES direct boot) but no SNP_KERNEL_HASHES metadata section (like an OvmfPkg/AmdSev build of edk2 2022.11)"},
			{"vcpus 0", []string{"--mode", "snp", "--vcpus", "0", "--vcpu-type", "EPYC-v4", "--ovmf", fw}, "--vcpus must be at least 1"},
			{"vcpus missing", []string{"--mode", "snp", "--vcpu-type", "EPYC-v4", "--ovmf", fw}, "Error: missing --vcpus N in guest mode 'snp'"},
			{"vcpus not a number", []string{"--mode", "snp", "--vcpus", "two", "--ovmf", fw}, "Error: invalid argument \"two\""},
			{"unknown vcpu type", []string{"--mode", "snp", "--vcpus", "1", "--vcpu-type", "EPYC-v9", "--ovmf", fw}, `Error: unknown vCPU type "EPYC-v9"`},
			{"no vcpu type for QEMU", []string{"--mode", "snp", "--vcpus", "1", "--ovmf", fw}, "missing --vcpu-type or --vcpu-sig or --vcpu-family"},
			{"bad hex ovmf hash", snp1(fw, "--snp-ovmf-hash", "zz"), "--snp-ovmf-hash: not a hex string"},
			{"short ovmf hash", snp1(fw, "--snp-ovmf-hash", "abcd"), "must be 48 bytes"},
			{"bad guest features", snp1(fw, "--guest-features", "0xg"), `--guest-features: invalid value "0xg"`},
			{"bad vcpu sig", []string{"--mode", "snp", "--vcpus", "1", "--vcpu-sig", "x", "--ovmf", fw}, "--vcpu-sig: invalid value"},
			{"unknown mode", []string{"--mode", "csv", "--ovmf", fw}, `unknown mode "csv"`},
			{"unknown vmm", snp1(fw, "--vmm-type", "azure"), "unknown VMM type 'azure'"},
			{"bad format", snp1(fw, "--output-format", "raw"), "--output-format: invalid choice"},
			{"missing ovmf", []string{"--mode", "snp"}, "required: --ovmf"},
			{"missing firmware file", snp1("nope.fd"), "opening firmware: open nope.fd: no such file or directory"},
			{"initrd without kernel", snp1(fw, "--initrd", kernel), "--kernel required when using --initrd"},
			{"append without kernel", snp1(fw, "--append", "x"), "--kernel required when using --append"},
			{"svsm without vars", []string{"--mode", "snp:svsm", "--vcpus", "1", "--vcpu-type", "EPYC-v4", "--ovmf", fw, "--svsm", fw}, "requires --vars-size or --vars-file"},
			{"vars conflict", []string{"--mode", "snp:svsm", "--vcpus", "1", "--ovmf", fw, "--vars-size", "1", "--vars-file", fw}, "vars-file vars-size] were all set"},
			{"dump-vmsa in sev", []string{"--mode", "sev", "--ovmf", fw, "--dump-vmsa"}, "--dump-vmsa is not available"},
			{"bad vmsa gpa", snp1(fw, "--vmsa-gpa", "0x123"), "not a non-zero page-aligned address"},
			{"bad variant", snp1(fw, "--vmsa-variant", "old"), "unknown VMSA variant"},
			{"positional argument", snp1(fw, "extra"), `unknown command "extra"`},
			{"ambiguous prefix", []string{"--mode", "snp", "--vcpu", "1", "--ovmf", fw}, "unknown flag: --vcpu"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				r := measureRun(t, bin, committed, tc.args...)
				if r.rc != 1 || r.stdout != "" || strings.Count(r.stderr, "\n") != 1 || !strings.HasPrefix(r.stderr, "Error: ") ||
					!strings.Contains(r.stderr, tc.want) {
					t.Fatalf("rc %d stdout %q stderr %q; want rc 1 and one line containing %q", r.rc, r.stdout, r.stderr, tc.want)
				}
			})
		}
	})
}
