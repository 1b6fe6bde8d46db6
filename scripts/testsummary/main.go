// Command testsummary runs `go test -json` with the given arguments and prints what plain
// `go test` prints (each package's result line, the whole output of every failed test),
// then every skipped test with its reason, and last one line counting passed, failed
// and skipped tests (subtests included) with the reasons for the skips. It exits 1 when
// a test failed or go test itself failed (a build error, a package that died before
// reporting), so `make unit` fails with it.
//
//	go run ./scripts/testsummary -race -count=1 -timeout 40m ./...
//
// With TESTSUMMARY_JSON=path it also writes go test's whole JSON stream there (every
// test's output and time, for a CI artifact or a closer look).
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strings"
)

func main() {
	cmd := exec.Command("go", append([]string{"test", "-json"}, os.Args[1:]...)...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		fmt.Fprintln(os.Stderr, "testsummary:", err)
		os.Exit(2)
	}
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "testsummary:", err)
		os.Exit(2)
	}
	s := newSummary(os.Stdout)
	if m, err := exec.Command("go", "list", "-m").Output(); err == nil {
		s.module = strings.TrimSpace(string(m))
	}
	var in io.Reader = out
	if p := os.Getenv("TESTSUMMARY_JSON"); p != "" {
		f, err := os.Create(p)
		if err != nil {
			fmt.Fprintln(os.Stderr, "testsummary:", err)
			os.Exit(2)
		}
		defer f.Close()
		in = io.TeeReader(out, f)
	}
	if err := s.read(in); err != nil {
		fmt.Fprintln(os.Stderr, "testsummary: reading go test's output:", err)
	}
	s.goErr = cmd.Wait()
	s.finish()
	if !s.ok() {
		os.Exit(1)
	}
}

// event is one line of `go test -json` (a TestEvent, or a BuildEvent for build output).
type event struct {
	Action     string
	Package    string
	Test       string
	Output     string
	ImportPath string // BuildEvent
}

type skip struct{ pkg, test, reason string }

// summary follows one `go test -json` stream.
type summary struct {
	w io.Writer
	// module is the main module's path, left off package names in the summary.
	module string
	// pending holds the output of each running top-level test (its subtests' included,
	// in arrival order), keyed by package and test: printed if it fails, else dropped.
	pending  map[[2]string]*strings.Builder
	own      map[[2]string]*strings.Builder // each test's and subtest's own output
	passed   int
	failed   []string // package.Test of every failed test and subtest
	skipped  []skip
	pkgFails []string // packages that failed with no failed test (build errors, crashes)
	pkgFail  map[string]bool
	goErr    error
}

func newSummary(w io.Writer) *summary {
	return &summary{w: w, pending: map[[2]string]*strings.Builder{}, own: map[[2]string]*strings.Builder{}, pkgFail: map[string]bool{}}
}

func (s *summary) read(r io.Reader) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &e) != nil {
			fmt.Fprintf(s.w, "%s\n", line) // not an event: show it as it came
			continue
		}
		s.event(e)
	}
	return sc.Err()
}

// control lines of verbose test output that plain `go test` does not show.
var controlRE = regexp.MustCompile(`^\s*=== (RUN|PAUSE|CONT|NAME) `)

func top(test string) string { return strings.SplitN(test, "/", 2)[0] }

func (s *summary) event(e event) {
	switch e.Action {
	case "build-output":
		fmt.Fprint(s.w, e.Output)
		return
	case "build-fail":
		return // the package's own "fail" event follows
	}
	if e.Test == "" {
		switch e.Action {
		case "output":
			if strings.HasPrefix(e.Output, "FAIL") {
				s.flushUnfinished(e.Package) // their output before the package's verdict
			}
			if e.Output != "PASS\n" {
				fmt.Fprint(s.w, e.Output)
			}
		case "fail":
			s.pkgFail[e.Package] = true
			s.flushUnfinished(e.Package)
		case "pass", "skip":
			s.flushUnfinished(e.Package)
		}
		return
	}
	key, topKey := [2]string{e.Package, e.Test}, [2]string{e.Package, top(e.Test)}
	switch e.Action {
	case "run":
		if s.pending[topKey] == nil {
			s.pending[topKey] = &strings.Builder{}
		}
		s.own[key] = &strings.Builder{}
	case "output":
		if b := s.pending[topKey]; b != nil && !controlRE.MatchString(e.Output) {
			b.WriteString(e.Output)
		}
		if b := s.own[key]; b != nil {
			b.WriteString(e.Output)
		}
	case "pass":
		s.passed++
		s.end(e, false)
	case "fail":
		s.failed = append(s.failed, s.shortPkg(e.Package)+"."+e.Test)
		s.end(e, true)
	case "skip":
		reason := "no reason given"
		if b := s.own[key]; b != nil {
			reason = skipReason(b.String())
		}
		s.skipped = append(s.skipped, skip{s.shortPkg(e.Package), e.Test, reason})
		s.end(e, false)
	}
}

// end finishes a test; a top-level test's collected output is printed if it failed.
func (s *summary) end(e event, failed bool) {
	delete(s.own, [2]string{e.Package, e.Test})
	if top(e.Test) != e.Test {
		return
	}
	k := [2]string{e.Package, e.Test}
	if b := s.pending[k]; b != nil && failed {
		fmt.Fprintf(s.w, "=== %s.%s\n%s", s.shortPkg(e.Package), e.Test, b.String())
	}
	delete(s.pending, k)
}

// flushUnfinished reports the tests of pkg that never ended (the binary died or timed
// out under them) as failed, with their output so far.
func (s *summary) flushUnfinished(pkg string) {
	var names []string
	for k := range s.own {
		if k[0] == pkg {
			names = append(names, k[1])
		}
	}
	sort.Strings(names)
	for _, n := range names {
		s.failed = append(s.failed, s.shortPkg(pkg)+"."+n+" (did not finish)")
		delete(s.own, [2]string{pkg, n})
	}
	for k, b := range s.pending {
		if k[0] == pkg {
			fmt.Fprintf(s.w, "=== %s.%s (did not finish)\n%s", s.shortPkg(pkg), k[1], b.String())
			delete(s.pending, k)
		}
	}
}

// logRE is a t.Log/t.Skip line: "    file_test.go:12: message".
var logRE = regexp.MustCompile(`^\s+[\w.-]+\.go:\d+: (.*)$`)

// skipReason is the last message a skipped test logged before its "--- SKIP" line (the
// t.Skip message), first line only.
func skipReason(out string) string {
	reason := "no reason given"
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "--- SKIP") {
			break
		}
		if m := logRE.FindStringSubmatch(l); m != nil {
			reason = strings.TrimSpace(m[1])
		}
	}
	return reason
}

func (s *summary) shortPkg(p string) string {
	if s.module != "" && strings.HasPrefix(p, s.module+"/") {
		return p[len(s.module)+1:]
	}
	return p
}

func (s *summary) ok() bool { return s.goErr == nil && len(s.failed) == 0 && len(s.pkgFails) == 0 }

// finish prints the skipped tests and the last line.
func (s *summary) finish() {
	for p := range s.pkgFail {
		if !s.hasFailedTest(p) {
			s.pkgFails = append(s.pkgFails, s.shortPkg(p))
		}
	}
	sort.Strings(s.pkgFails)
	if len(s.skipped) > 0 {
		fmt.Fprintln(s.w, "skipped:")
		for _, k := range s.skipped {
			fmt.Fprintf(s.w, "  %s %s: %s\n", k.pkg, k.test, k.reason)
		}
	}
	line := fmt.Sprintf("tests: %d passed, %d failed, %d skipped", s.passed, len(s.failed), len(s.skipped))
	if len(s.skipped) > 0 {
		// Group by reason, most frequent first, in order of first appearance otherwise.
		var reasons []string
		n := map[string]int{}
		for _, k := range s.skipped {
			if n[k.reason] == 0 {
				reasons = append(reasons, k.reason)
			}
			n[k.reason]++
		}
		sort.SliceStable(reasons, func(i, j int) bool { return n[reasons[i]] > n[reasons[j]] })
		parts := make([]string, len(reasons))
		for i, r := range reasons {
			parts[i] = fmt.Sprintf("%d: %s", n[r], r)
		}
		line += " (" + strings.Join(parts, "; ") + ")"
	}
	if len(s.failed) > 0 {
		line += "; failed: " + strings.Join(s.failed, ", ")
	}
	if len(s.pkgFails) > 0 {
		line += "; packages failed outside any test (build error or crash, see above): " + strings.Join(s.pkgFails, ", ")
	} else if s.goErr != nil && len(s.failed) == 0 {
		line += "; go test failed: " + s.goErr.Error()
	}
	if s.ok() {
		line = "PASS " + line
	} else {
		line = "FAIL " + line
	}
	fmt.Fprintln(s.w, line)
}

func (s *summary) hasFailedTest(pkg string) bool {
	p := s.shortPkg(pkg) + "."
	for _, f := range s.failed {
		if strings.HasPrefix(f, p) {
			return true
		}
	}
	return false
}
