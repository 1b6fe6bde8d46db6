package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// fixture is a module with a package of passing, failing and skipping tests and
// subtests (a), one whose tests do not build (b), one that passes (c) and one whose
// test binary exits in a subtest (d).
var fixture = map[string]string{
	"go.mod": "module example.com/m\n\ngo 1.22\n",
	"a/a_test.go": `package a

import "testing"

func TestPass(t *testing.T) {}

func TestFail(t *testing.T) {
	t.Log("context before the failure")
	t.Error("boom")
}

func TestSkip(t *testing.T) {
	t.Log("a log line that is not the reason")
	t.Skip("needs /dev/sev (SEV-SNP hardware)")
}

func TestSub(t *testing.T) {
	t.Run("ok", func(t *testing.T) {})
	t.Run("skipped", func(t *testing.T) { t.Skip("needs systemd as PID 1") })
}
`,
	"b/b_test.go": "package b\n\nimport \"testing\"\n\nfunc TestX(t *testing.T) { undefined() }\n",
	"d/d_test.go": "package d\n\nimport (\n\t\"os\"\n\t\"testing\"\n)\n\nfunc TestExits(t *testing.T) {\n\tt.Run(\"sub\", func(t *testing.T) { t.Log(\"last words\"); os.Exit(3) })\n}\n",
	"c/c_test.go": "package c\n\nimport \"testing\"\n\nfunc TestOK(t *testing.T) { t.Log(\"quiet\") }\n\nfunc TestSkipped(t *testing.T) { t.Skip(\"needs /dev/sev (SEV-SNP hardware)\") }\n",
}

// run runs go test -json on pkgs of the fixture module and summarises it like main.
func run(t *testing.T, pkgs ...string) (string, bool) {
	t.Helper()
	dir := t.TempDir()
	for name, body := range fixture {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("go", append([]string{"test", "-json", "-count=1"}, pkgs...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOFLAGS=", "GOWORK=off")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var w bytes.Buffer
	s := newSummary(&w)
	s.module = "example.com/m"
	if err := s.read(out); err != nil {
		t.Fatal(err)
	}
	s.goErr = cmd.Wait()
	s.finish()
	t.Logf("go test stderr:\n%s\nsummary output:\n%s", stderr.String(), w.String())
	return w.String(), s.ok()
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return lines[len(lines)-1]
}

func TestSummaryCountsAndShowsFailures(t *testing.T) {
	out, ok := run(t, "./...")
	if ok {
		t.Error("a failed test and a build error summarised as ok")
	}
	want := "FAIL tests: 4 passed, 3 failed, 3 skipped (2: needs /dev/sev (SEV-SNP hardware); 1: needs systemd as PID 1)" +
		"; failed: a.TestFail, d.TestExits (did not finish), d.TestExits/sub (did not finish); packages failed outside any test (build error or crash, see above): b"
	if got := lastLine(out); got != want {
		t.Errorf("last line\n got %q\nwant %q", got, want)
	}
	for _, w := range []string{
		"=== a.TestFail\n", "context before the failure", "boom", "--- FAIL: TestFail", // the failed test's output
		"undefined: undefined",  // the build error
		"last words",            // the output of a test that never ended
		"ok  \texample.com/m/c", // result lines as go test prints them
		"  a TestSkip: needs /dev/sev (SEV-SNP hardware)", // each skip with its reason
		"  a TestSub/skipped: needs systemd as PID 1",
	} {
		if !strings.Contains(out, w) {
			t.Errorf("output lacks %q", w)
		}
	}
	for _, nw := range []string{"=== RUN", "quiet", "a log line that is not the reason", "--- PASS", "\nPASS\n"} {
		if strings.Contains(out, nw) {
			t.Errorf("output has %q, which plain go test does not show", nw)
		}
	}
}

func TestSummaryPasses(t *testing.T) {
	out, ok := run(t, "./c")
	if !ok {
		t.Error("passing package summarised as failed")
	}
	if got, want := lastLine(out), "PASS tests: 1 passed, 0 failed, 1 skipped (1: needs /dev/sev (SEV-SNP hardware))"; got != want {
		t.Errorf("last line\n got %q\nwant %q", got, want)
	}
}

func TestSkipReason(t *testing.T) {
	for _, c := range []struct{ out, want string }{
		{"=== RUN   TestX\n    x_test.go:3: log\n    x_test.go:4: the reason\n--- SKIP: TestX (0.00s)\n", "the reason"},
		{"=== RUN   TestX\n    helper_test.go:40: /dev/sev is missing: stat /dev/sev: no such file\n        continued\n--- SKIP: TestX (0.00s)\n", "/dev/sev is missing: stat /dev/sev: no such file"},
		{"=== RUN   TestX\n--- SKIP: TestX (0.00s)\n", "no reason given"},
	} {
		if got := skipReason(c.out); got != c.want {
			t.Errorf("%q: %q, want %q", c.out, got, c.want)
		}
	}
}
