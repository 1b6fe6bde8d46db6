package launch

import (
	"bufio"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/snpd/snpd/snp/snptest"
)

// sharedSNP returns <repo root>/../shared/testdata/snp, skipping the test when it is
// absent (CI clones the repository with shared/ beside it).
func sharedSNP(t testing.TB) string {
	t.Helper()
	return filepath.Join(snptest.SharedDir(t, "testdata/snp/upstream"), "testdata", "snp")
}

// vectorRow is one measurement vector: a reference command line and its result.
type vectorRow struct {
	name   string
	args   []string // command line without the program name
	rc     int
	stdout string
	stderr string // expected stderr line (rc != 0)
}

// splitWords splits a POSIX shell command line with single/double quotes (no
// expansions: the vector files use none).
func splitWords(s string) ([]string, error) {
	var out []string
	var cur strings.Builder
	inWord := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\'':
			j := strings.IndexByte(s[i+1:], '\'')
			if j < 0 {
				return nil, errors.New("unterminated quote")
			}
			cur.WriteString(s[i+1 : i+1+j])
			i += j + 1
			inWord = true
		case c == '"':
			j := strings.IndexByte(s[i+1:], '"')
			if j < 0 {
				return nil, errors.New("unterminated quote")
			}
			cur.WriteString(s[i+1 : i+1+j])
			i += j + 1
			inWord = true
		case c == ' ' || c == '\t':
			if inWord {
				out = append(out, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		out = append(out, cur.String())
	}
	return out, nil
}

func readTSV(t testing.TB, path string) [][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var rows [][]string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	first := true
	for sc.Scan() {
		if first {
			first = false
			continue
		}
		if strings.TrimSpace(sc.Text()) == "" {
			continue
		}
		rows = append(rows, strings.Split(sc.Text(), "\t"))
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return rows
}

// loadVectors returns the sev-snp-measure rows of vectors.tsv (id-block rows belong
// to another package).
func loadVectors(t testing.TB, path string) []vectorRow {
	var out []vectorRow
	for _, r := range readTSV(t, path) {
		if len(r) < 8 {
			t.Fatalf("%s: short row %q", path, r)
		}
		w, err := splitWords(r[4])
		if err != nil {
			t.Fatal(err)
		}
		if len(w) == 0 || w[0] != "sev-snp-measure" {
			continue
		}
		rc, _ := strconv.Atoi(r[5])
		out = append(out, vectorRow{name: r[0], args: w[1:], rc: rc, stdout: r[6], stderr: r[7]})
	}
	return out
}

// loadUpstream returns the rows of upstream-test-expectations.tsv that have a
// command line.
func loadUpstream(t testing.TB, path string) []vectorRow {
	var out []vectorRow
	for _, r := range readTSV(t, path) {
		if len(r) < 3 || r[1] == "" {
			continue
		}
		w, err := splitWords(r[1])
		if err != nil {
			t.Fatal(err)
		}
		v := vectorRow{name: r[0], args: w[1:]}
		if msg, ok := strings.CutPrefix(r[2], "ERROR: "); ok {
			v.rc, v.stderr = 1, "Error: "+msg
		} else {
			v.stdout = r[2]
		}
		out = append(out, v)
	}
	return out
}

// cliArgs is the subset of the reference CLI the library tests need to turn a vector
// row into a MeasureInput (the real CLI is tested through the snpctl binary).
type cliArgs struct {
	in     MeasureInput
	format string
	files  []*os.File
}

func (c *cliArgs) close() {
	for _, f := range c.files {
		f.Close()
	}
}

func (c *cliArgs) open(dir, name string) (*os.File, int64, error) {
	if !filepath.IsAbs(name) {
		name = filepath.Join(dir, name)
	}
	f, err := os.Open(name)
	if err != nil {
		return nil, 0, err
	}
	c.files = append(c.files, f)
	st, err := f.Stat()
	if err != nil {
		return nil, 0, err
	}
	return f, st.Size(), nil
}

func parseVectorArgs(dir string, args []string) (*cliArgs, error) {
	c := &cliArgs{format: "hex"}
	c.in.GuestFeatures = 1
	kv := map[string]string{}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--dump-vmsa" {
			continue
		}
		if i+1 >= len(args) {
			return c, fmt.Errorf("flag %s needs a value", a)
		}
		kv[a] = args[i+1]
		i++
	}
	var err error
	if c.in.Mode, err = ParseMode(kv["--mode"]); err != nil {
		return c, err
	}
	if v, ok := kv["--vcpus"]; ok {
		c.in.VCPUs, _ = strconv.Atoi(v)
	}
	if v, ok := kv["--vcpu-type"]; ok {
		if c.in.VCPUSig, err = CPUSignature(v); err != nil {
			return c, err
		}
	}
	if v, ok := kv["--vcpu-sig"]; ok {
		s, _ := strconv.ParseUint(v, 0, 32)
		c.in.VCPUSig = uint32(s)
	}
	if v, ok := kv["--vmm-type"]; ok {
		if c.in.VMM, err = ParseVMMType(v); err != nil {
			return c, err
		}
	}
	if v, ok := kv["--guest-features"]; ok {
		c.in.GuestFeatures, _ = strconv.ParseUint(v, 0, 64)
	}
	if v, ok := kv["--output-format"]; ok {
		c.format = v
	}
	if v, ok := kv["--snp-ovmf-hash"]; ok {
		if c.in.OVMFHash, err = hex.DecodeString(v); err != nil {
			return c, err
		}
	}
	f, n, err := c.open(dir, kv["--ovmf"])
	if err != nil {
		return c, err
	}
	c.in.Firmware, c.in.FirmwareSize = f, n
	if v, ok := kv["--kernel"]; ok {
		if c.in.Kernel, _, err = c.open(dir, v); err != nil {
			return c, err
		}
	}
	if v, ok := kv["--initrd"]; ok {
		if c.in.Initrd, _, err = c.open(dir, v); err != nil {
			return c, err
		}
	}
	c.in.Cmdline = kv["--append"]
	if v, ok := kv["--svsm"]; ok {
		if c.in.SVSM, c.in.SVSMSize, err = c.open(dir, v); err != nil {
			return c, err
		}
	}
	if v, ok := kv["--vars-size"]; ok {
		c.in.VarsSize, _ = strconv.ParseInt(v, 10, 64)
	}
	return c, nil
}

func runVector(t *testing.T, dir string, v vectorRow) {
	t.Helper()
	c, err := parseVectorArgs(dir, v.args)
	defer c.close()
	if err != nil {
		t.Fatalf("args %q: %v", v.args, err)
	}
	m, err := Measure(c.in)
	if v.rc != 0 {
		if err == nil {
			t.Fatalf("Measure succeeded (%x), want error %q", m.Digest, v.stderr)
		}
		want := strings.TrimPrefix(v.stderr, "Error: ")
		if !strings.HasPrefix(err.Error(), want) {
			t.Fatalf("error %q, want prefix %q", err, want)
		}
		return
	}
	if err != nil {
		t.Fatalf("Measure: %v", err)
	}
	got := hex.EncodeToString(m.Digest)
	if c.format == "base64" {
		got = base64.StdEncoding.EncodeToString(m.Digest)
	}
	if got != v.stdout {
		t.Fatalf("digest %s\nwant   %s", got, v.stdout)
	}
}

func usesUpstream(args []string) bool {
	for _, a := range args {
		if strings.HasPrefix(a, "upstream/") {
			return true
		}
	}
	return false
}

// TestVectorsCommitted reproduces every vectors.tsv row that needs only the Debian
// firmware copies committed in snp/testdata.
func TestVectorsCommitted(t *testing.T) {
	dir := filepath.Join("..", "testdata")
	n := 0
	for _, v := range loadVectors(t, filepath.Join(dir, "vectors.tsv")) {
		if usesUpstream(v.args) {
			continue
		}
		n++
		t.Run(v.name, func(t *testing.T) { runVector(t, dir, v) })
	}
	if n < 10 {
		t.Fatalf("only %d committed vectors found", n)
	}
}

// TestVectorsShared reproduces every row of the shared vectors.tsv and of the
// reference tool's own test expectations, with cwd semantics of the shared folder.
func TestVectorsShared(t *testing.T) {
	dir := sharedSNP(t)
	rows := loadVectors(t, filepath.Join(dir, "vectors.tsv"))
	rows = append(rows, loadUpstream(t, filepath.Join(dir, "upstream", "upstream-test-expectations.tsv"))...)
	if len(rows) < 40 {
		t.Fatalf("only %d rows", len(rows))
	}
	for _, v := range rows {
		t.Run(v.name, func(t *testing.T) { runVector(t, dir, v) })
	}
}
