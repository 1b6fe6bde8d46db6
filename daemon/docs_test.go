package daemon

// This file checks docs/api.md against the route table: every route has a section
// headed "### METHOD /path" with its role and a curl example over the unix socket, no
// section documents a route that does not exist, every error kind has its status in the
// error table, and every JSON example marked with its wire type decodes strictly into it.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/snpd/snpd/daemon/api"
)

// apiDocSection is one "### METHOD /path" section of api.md.
type apiDocSection struct {
	pattern string
	lines   []string
}

// apiDocTypes are the wire types JSON examples may be marked with
// (<!-- json: api.Name --> on the line before the fence).
var apiDocTypes = map[string]reflect.Type{
	"api.Status":                reflect.TypeFor[api.Status](),
	"api.ListResponse":          reflect.TypeFor[api.ListResponse](),
	"api.DefineRequest":         reflect.TypeFor[api.DefineRequest](),
	"api.VMInfo":                reflect.TypeFor[api.VMInfo](),
	"api.Run":                   reflect.TypeFor[api.Run](),
	"[]api.Run":                 reflect.TypeFor[[]api.Run](),
	"api.StopRequest":           reflect.TypeFor[api.StopRequest](),
	"api.Event":                 reflect.TypeFor[api.Event](),
	"api.Error":                 reflect.TypeFor[api.Error](),
	"api.LaunchRecord":          reflect.TypeFor[api.LaunchRecord](),
	"api.LibvirtDomainRequest":  reflect.TypeFor[api.LibvirtDomainRequest](),
	"api.LibvirtDomainResponse": reflect.TypeFor[api.LibvirtDomainResponse](),
	"api.LibvirtDomainList":     reflect.TypeFor[api.LibvirtDomainList](),
	"api.LibvirtDomain":         reflect.TypeFor[api.LibvirtDomain](),
	"api.PolicyViolations":      reflect.TypeFor[api.PolicyViolations](),
	"api.AttestResponse":        reflect.TypeFor[api.AttestResponse](),
	"api.VerifyRequest":         reflect.TypeFor[api.VerifyRequest](),
	"api.VerifyResponse":        reflect.TypeFor[api.VerifyResponse](),
	"api.CertImportRequest":     reflect.TypeFor[api.CertImportRequest](),
	"api.CertList":              reflect.TypeFor[api.CertList](),
}

var (
	apiHeadingRE = regexp.MustCompile(`^### ([A-Z]+ /\S*)$`)
	apiRoleRE    = regexp.MustCompile("^Role: `(\\w+)`")
	apiJSONRE    = regexp.MustCompile(`^<!-- json: (\S+) -->$`)
	apiKindRowRE = regexp.MustCompile("^\\| `(\\w+)` \\| (\\d{3}) \\|")
)

// apiDoc is docs/api.md, parsed.
type apiDoc struct {
	sections []apiDocSection
	// examples are JSON examples by marked type name.
	examples []apiDocExample
	// kinds maps an error kind in the error table to its status.
	kinds map[string]int
}

type apiDocExample struct {
	typ, text string
	line      int
}

func readAPIDoc(t *testing.T) *apiDoc {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "docs", "api.md"))
	if err != nil {
		t.Fatalf("reading the API reference: %v", err)
	}
	d := &apiDoc{kinds: map[string]int{}}
	var cur *apiDocSection
	lines := strings.Split(string(b), "\n")
	for i := 0; i < len(lines); i++ {
		line := lines[i]
		if m := apiJSONRE.FindStringSubmatch(line); m != nil {
			if i+1 >= len(lines) || !strings.HasPrefix(lines[i+1], "```") {
				t.Fatalf("api.md:%d: %q is not followed by a code fence", i+1, line)
			}
			start := i + 2
			j := start
			for j < len(lines) && !strings.HasPrefix(lines[j], "```") {
				j++
			}
			d.examples = append(d.examples, apiDocExample{typ: m[1], text: strings.Join(lines[start:j], "\n"), line: start + 1})
			if cur != nil {
				cur.lines = append(cur.lines, lines[i:j]...)
			}
			i = j
			continue
		}
		if m := apiKindRowRE.FindStringSubmatch(line); m != nil {
			var status int
			fmt.Sscan(m[2], &status)
			d.kinds[m[1]] = status
		}
		switch {
		case strings.HasPrefix(line, "### "):
			cur = nil
			if m := apiHeadingRE.FindStringSubmatch(line); m != nil {
				d.sections = append(d.sections, apiDocSection{pattern: m[1]})
				cur = &d.sections[len(d.sections)-1]
			}
		case strings.HasPrefix(line, "## "):
			cur = nil
		case cur != nil:
			cur.lines = append(cur.lines, line)
		}
	}
	return d
}

// curlPathRE turns a route path into a regexp matching it in a URL ({name} matches a
// VM name).
func curlPathRE(path string) *regexp.Regexp {
	quoted := regexp.QuoteMeta(path)
	quoted = regexp.MustCompile(`\\\{\w+\\\}`).ReplaceAllString(quoted, `[A-Za-z0-9._-]+`)
	return regexp.MustCompile(`http://snpd` + quoted + `(\?|'|"|\s|$)`)
}

// TestAPIDocsCoverEveryRoute fails when a route of the table has no section in
// docs/api.md, with the right role and a curl example, or when the docs describe a
// route the server does not have.
func TestAPIDocsCoverEveryRoute(t *testing.T) {
	d := readAPIDoc(t)
	routes := (&Server{}).routes()
	if len(routes) < 10 {
		t.Fatalf("route table has %d routes; expected the whole API", len(routes))
	}
	docs := map[string]*apiDocSection{}
	for i := range d.sections {
		s := &d.sections[i]
		if docs[s.pattern] != nil {
			t.Errorf("docs/api.md: %s documented twice", s.pattern)
		}
		docs[s.pattern] = s
	}
	inTable := map[string]bool{}
	for _, rt := range routes {
		inTable[rt.Pattern] = true
		s := docs[rt.Pattern]
		if s == nil {
			t.Errorf("docs/api.md: route %s (role %s) is not documented (want a section \"### %s\")", rt.Pattern, rt.Need, rt.Pattern)
			continue
		}
		method, path, _ := strings.Cut(rt.Pattern, " ")
		var role string
		curl := false
		re := curlPathRE(path)
		for _, l := range s.lines {
			if m := apiRoleRE.FindStringSubmatch(l); m != nil {
				role = m[1]
			}
			if strings.HasPrefix(l, "$ ") && strings.Contains(l, "curl ") && strings.Contains(l, "--unix-socket") && re.MatchString(l) &&
				(method == "GET" && !strings.Contains(l, "-X ") || strings.Contains(l, "-X "+method+" ")) {
				curl = true
			}
		}
		if role != rt.Need.String() {
			t.Errorf("docs/api.md: %s says role %q, the route table says %q", rt.Pattern, role, rt.Need)
		}
		if !curl {
			t.Errorf("docs/api.md: %s has no example \"$ curl --unix-socket ... %shttp://snpd%s\"", rt.Pattern,
				map[bool]string{true: "", false: "-X " + method + " "}[method == "GET"], path)
		}
	}
	for p := range docs {
		if !inTable[p] {
			t.Errorf("docs/api.md: documents %s, which is not in the route table (stale section)", p)
		}
	}
}

// TestAPIDocsErrorTable checks the error table against api.ErrorKind for every kind.
func TestAPIDocsErrorTable(t *testing.T) {
	d := readAPIDoc(t)
	sentinels := []error{api.ErrInvalid, api.ErrNotFound, api.ErrConflict, api.ErrForbidden,
		api.ErrTooLarge, api.ErrPolicy, api.ErrUnavailable, api.ErrInternal}
	for _, e := range sentinels {
		kind, status := api.ErrorKind(fmt.Errorf("x: %w", e))
		got, ok := d.kinds[kind]
		switch {
		case !ok:
			t.Errorf("docs/api.md: error kind %s (%d) is not in the error table", kind, status)
		case got != status:
			t.Errorf("docs/api.md: error kind %s documented as %d, the server sends %d", kind, got, status)
		}
	}
	if _, status := api.ErrorKind(errors.New("unwrapped")); d.kinds[api.KindInternal] != status {
		t.Errorf("docs/api.md: an unclassified error is %d", status)
	}
}

// TestAPIDocsJSONExamples decodes every marked JSON example strictly (unknown fields
// are errors) into its wire type, so examples cannot drift from daemon/api.
func TestAPIDocsJSONExamples(t *testing.T) {
	d := readAPIDoc(t)
	if len(d.examples) < 10 {
		t.Fatalf("docs/api.md has %d marked JSON examples; want one per request and response body", len(d.examples))
	}
	for _, ex := range d.examples {
		typ, ok := apiDocTypes[ex.typ]
		if !ok {
			t.Errorf("api.md:%d: unknown wire type %q in <!-- json: --> (add it to apiDocTypes)", ex.line, ex.typ)
			continue
		}
		dec := json.NewDecoder(bytes.NewReader([]byte(ex.text)))
		dec.DisallowUnknownFields()
		v := reflect.New(typ).Interface()
		if err := dec.Decode(v); err != nil {
			t.Errorf("api.md:%d: example is not a %s: %v", ex.line, ex.typ, err)
		}
	}
}

var (
	docTestNameRE = regexp.MustCompile("`((?:Test|Fuzz|Benchmark|Example)[A-Z]\\w*)`")
	docLinkRE     = regexp.MustCompile(`\]\(([^)#\s]+)(#[^)\s]*)?\)`)
)

// TestDocsCiteExistingTestsAndFiles checks every docs/*.md: each Go test, fuzz target,
// benchmark or example named in backticks exists as a func in some _test.go file of the
// repository (so "where it is tested" cannot point at nothing), and each relative
// markdown link points at an existing file.
func TestDocsCiteExistingTestsAndFiles(t *testing.T) {
	root := ".."
	funcs := map[string]bool{}
	funcRE := regexp.MustCompile(`(?m)^func ((?:Test|Fuzz|Benchmark|Example)\w*)\(`)
	err := filepath.WalkDir(root, func(p string, de os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if de.IsDir() && (de.Name() == ".git" || de.Name() == "testdata") {
			return filepath.SkipDir
		}
		if !de.IsDir() && strings.HasSuffix(p, "_test.go") {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			for _, m := range funcRE.FindAllSubmatch(b, -1) {
				funcs[string(m[1])] = true
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walking the repository: %v", err)
	}
	docs, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil || len(docs) < 6 {
		t.Fatalf("docs/*.md: %d files (%v); want the six documents", len(docs), err)
	}
	cited := 0
	for _, d := range docs {
		b, err := os.ReadFile(d)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range docTestNameRE.FindAllStringSubmatch(string(b), -1) {
			cited++
			if !funcs[m[1]] {
				t.Errorf("%s cites %s, which no _test.go file defines", filepath.Base(d), m[1])
			}
		}
		for _, m := range docLinkRE.FindAllStringSubmatch(string(b), -1) {
			link := m[1]
			if strings.Contains(link, "://") || strings.HasPrefix(link, "mailto:") {
				continue
			}
			if _, err := os.Stat(filepath.Join(filepath.Dir(d), link)); err != nil {
				t.Errorf("%s links to %s, which does not exist", filepath.Base(d), link)
			}
		}
	}
	if cited < 10 {
		t.Errorf("the docs cite only %d tests; the checker is probably broken", cited)
	}
}
