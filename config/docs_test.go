package config

// This file checks docs/configuration.md against the code: every TOML key of Daemon
// (snpd.toml), VM (vm.toml) and Policy (policy.toml), found by walking the structs'
// toml tags, must have a row in the reference with the right type and, where the row
// gives a literal default, the default SetDefaults really applies. Rows for keys that
// no longer exist fail too, every ```toml snippet must decode strictly into its struct,
// and the copies of config/examples/*.toml must equal the files.

import (
	"encoding"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// docKey is one leaf key of a config struct.
type docKey struct {
	// name is the dotted key; "[]" marks an array of tables: "disk[].path".
	name string
	// index is the field index path from the root struct.
	index []int
	typ   reflect.Type
}

var docTextUnmarshalerType = reflect.TypeFor[encoding.TextUnmarshaler]()

// docWalkKeys lists the leaf keys of struct type t: tables (structs, pointers to structs)
// and arrays of tables (slices of structs) are descended into; `toml:"-"` is skipped.
func docWalkKeys(t reflect.Type, prefix string, index []int) []docKey {
	var out []docKey
	for i := range t.NumField() {
		f := t.Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if tag == "-" || !f.IsExported() {
			continue
		}
		if tag == "" {
			tag = f.Name
		}
		idx := append(slices.Clone(index), i)
		ft := f.Type
		isTable := func(t reflect.Type) bool {
			return t.Kind() == reflect.Struct && !reflect.PointerTo(t).Implements(docTextUnmarshalerType)
		}
		switch {
		case isTable(ft):
			out = append(out, docWalkKeys(ft, prefix+tag+".", idx)...)
		case ft.Kind() == reflect.Pointer && isTable(ft.Elem()):
			out = append(out, docWalkKeys(ft.Elem(), prefix+tag+".", idx)...)
		case ft.Kind() == reflect.Slice && isTable(ft.Elem()):
			out = append(out, docWalkKeys(ft.Elem(), prefix+tag+"[].", idx)...)
		default:
			out = append(out, docKey{name: prefix + tag, index: idx, typ: ft})
		}
	}
	return out
}

// docType is the type column's wording for a leaf's Go type.
func docType(t reflect.Type) string {
	if t == reflect.TypeFor[Duration]() {
		return "duration"
	}
	switch t.Kind() {
	case reflect.String:
		return "string"
	case reflect.Bool:
		return "boolean"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "integer"
	case reflect.Slice:
		return "array of " + docType(t.Elem()) + "s"
	case reflect.Pointer: // optional with a default (nil: unset)
		return docType(t.Elem())
	}
	return t.String()
}

// docSection is the part of configuration.md about one file.
type docSection struct {
	typ    reflect.Type
	rows   map[string][]string // key -> cells (key, type, default, meaning)
	blocks []string            // ```toml snippets
}

var (
	docHeadingRE = regexp.MustCompile(`^## .*\(config\.(\w+)\)`)
	docRowRE     = regexp.MustCompile("^\\| `([^`]+)` \\|")
	docFileRE    = regexp.MustCompile(`^<!-- file: (\S+) -->$`)
)

// readConfigDocs parses docs/configuration.md into its per-type sections and the
// verbatim example copies (path -> text).
func readConfigDocs(t *testing.T) (map[string]*docSection, map[string]string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "docs", "configuration.md"))
	if err != nil {
		t.Fatalf("reading the configuration reference: %v", err)
	}
	types := map[string]reflect.Type{
		"Daemon": reflect.TypeFor[Daemon](),
		"VM":     reflect.TypeFor[VM](),
		"Policy": reflect.TypeFor[Policy](),
	}
	secs := map[string]*docSection{}
	copies := map[string]string{}
	var cur *docSection
	var fence []string
	inFence, fileCopy := false, ""
	for _, line := range strings.Split(string(b), "\n") {
		if inFence {
			if strings.HasPrefix(line, "```") {
				inFence = false
				text := strings.Join(fence, "\n") + "\n"
				switch {
				case fileCopy != "":
					copies[fileCopy] = text
					fileCopy = ""
				case cur != nil:
					cur.blocks = append(cur.blocks, text)
				}
				continue
			}
			fence = append(fence, line)
			continue
		}
		if m := docFileRE.FindStringSubmatch(line); m != nil {
			fileCopy = m[1]
			continue
		}
		if strings.HasPrefix(line, "```toml") {
			inFence, fence = true, nil
			continue
		}
		if strings.HasPrefix(line, "## ") {
			cur = nil
			if m := docHeadingRE.FindStringSubmatch(line); m != nil {
				typ, ok := types[m[1]]
				if !ok {
					t.Fatalf("configuration.md: heading %q names no config type", line)
				}
				cur = &docSection{typ: typ, rows: map[string][]string{}}
				secs[m[1]] = cur
			}
			continue
		}
		if m := docRowRE.FindStringSubmatch(line); m != nil && cur != nil {
			cells := strings.Split(strings.Trim(line, "|"), " | ")
			for i := range cells {
				cells[i] = strings.TrimSpace(cells[i])
			}
			if _, dup := cur.rows[m[1]]; dup {
				t.Errorf("configuration.md: key %s documented twice in config.%s", m[1], cur.typ.Name())
			}
			cur.rows[m[1]] = cells
		}
	}
	for name := range types {
		if secs[name] == nil {
			t.Fatalf("configuration.md: no section headed \"## ... (config.%s)\"", name)
		}
	}
	return secs, copies
}

// TestConfigDocsCoverEveryKey fails when a TOML key of Daemon, VM or Policy has no row
// in docs/configuration.md, when a row names a key the code does not have, or when a
// row's type column is wrong.
func TestConfigDocsCoverEveryKey(t *testing.T) {
	secs, _ := readConfigDocs(t)
	for name, sec := range secs {
		keys := docWalkKeys(sec.typ, "", nil)
		if len(keys) < 5 {
			t.Fatalf("config.%s: walked only %d keys; the walker is broken", name, len(keys))
		}
		known := map[string]bool{}
		for _, k := range keys {
			known[k.name] = true
			cells, ok := sec.rows[k.name]
			if !ok {
				t.Errorf("docs/configuration.md: key `%s` of config.%s (%s) is not documented", k.name, name, k.typ)
				continue
			}
			if len(cells) != 4 {
				t.Errorf("docs/configuration.md: row of `%s` has %d cells, want 4 (key | type | default | meaning)", k.name, len(cells))
				continue
			}
			if want := docType(k.typ); !strings.HasPrefix(cells[1], want) {
				t.Errorf("docs/configuration.md: `%s` has type %q, want it to start with %q", k.name, cells[1], want)
			}
			if cells[3] == "" {
				t.Errorf("docs/configuration.md: `%s` has no meaning", k.name)
			}
		}
		for k := range sec.rows {
			if !known[k] {
				t.Errorf("docs/configuration.md: config.%s has no key `%s` (stale row)", name, k)
			}
		}
	}
}

// TestConfigDocsDefaults checks every default given as a single TOML literal (a cell
// that is exactly one code span) against what SetDefaults applies to an empty file.
func TestConfigDocsDefaults(t *testing.T) {
	secs, _ := readConfigDocs(t)
	checked := 0
	for name, sec := range secs {
		for _, k := range docWalkKeys(sec.typ, "", nil) {
			cells := sec.rows[k.name]
			if len(cells) != 4 {
				continue // reported by TestConfigDocsCoverEveryKey
			}
			def := cells[2]
			if !strings.HasPrefix(def, "`") || !strings.HasSuffix(def, "`") || strings.Count(def, "`") != 2 {
				continue // prose: computed or no default
			}
			lit := strings.Trim(def, "`")
			// The empty file (tables that hold the key exist, so arrays of tables have
			// one element), defaulted; and the same with the documented literal.
			base, withLit := docTOMLForKey(k.name, lit)
			got := reflect.New(sec.typ)
			if err := DecodeStrict("empty", []byte(base), got.Interface()); err != nil {
				t.Fatalf("decoding %q: %v", base, err)
			}
			got.Interface().(interface{ SetDefaults() }).SetDefaults()
			want := reflect.New(sec.typ)
			if err := DecodeStrict("docs", []byte(withLit), want.Interface()); err != nil {
				t.Errorf("docs/configuration.md: default of `%s` (%s) is not a TOML value of its type: %v", k.name, def, err)
				continue
			}
			g, w := docFieldAt(got.Elem(), k.index), docFieldAt(want.Elem(), k.index)
			if !reflect.DeepEqual(g.Interface(), w.Interface()) {
				t.Errorf("docs/configuration.md: config.%s `%s` documents default %s, SetDefaults gives %#v", name, k.name, def, g.Interface())
			}
			checked++
		}
	}
	if checked < 20 {
		t.Errorf("only %d defaults are literal and checked; the reference should give most as `literal`", checked)
	}
}

// docTOMLForKey renders two TOML documents: one creating only the tables that hold key
// (empty), and the same setting key to lit (set).
func docTOMLForKey(key, lit string) (empty, set string) {
	parts := strings.Split(key, ".")
	leaf := parts[len(parts)-1]
	var hdr strings.Builder
	for i, p := range parts[:len(parts)-1] {
		path := strings.TrimSuffix(strings.Join(parts[:i+1], "."), "[]")
		path = strings.ReplaceAll(path, "[]", "")
		if strings.HasSuffix(p, "[]") {
			fmt.Fprintf(&hdr, "[[%s]]\n", path)
		} else {
			fmt.Fprintf(&hdr, "[%s]\n", path)
		}
	}
	empty = hdr.String()
	return empty, empty + leaf + " = " + lit + "\n"
}

// docFieldAt follows index from v, through pointers and the first element of slices.
func docFieldAt(v reflect.Value, index []int) reflect.Value {
	for _, i := range index {
		for v.Kind() == reflect.Pointer {
			v = v.Elem()
		}
		if v.Kind() == reflect.Slice {
			v = v.Index(0)
		}
		v = v.Field(i)
	}
	return v
}

// TestConfigDocsSnippetsDecode decodes every ```toml snippet of a section strictly into
// that section's type, and checks the verbatim copies of config/examples.
func TestConfigDocsSnippetsDecode(t *testing.T) {
	secs, copies := readConfigDocs(t)
	for name, sec := range secs {
		if len(sec.blocks) == 0 {
			t.Errorf("docs/configuration.md: config.%s has no ```toml example", name)
		}
		for i, blk := range sec.blocks {
			v := reflect.New(sec.typ).Interface()
			if err := DecodeStrict(fmt.Sprintf("configuration.md config.%s snippet %d", name, i+1), []byte(blk), v); err != nil {
				t.Error(err)
			}
		}
	}
	for _, f := range []string{"config/examples/snpd.toml", "config/examples/vm.toml", "config/examples/policy.toml"} {
		text, ok := copies[f]
		if !ok {
			t.Errorf("docs/configuration.md: no verbatim copy of %s (<!-- file: %s --> before a ```toml block)", f, f)
			continue
		}
		b, err := os.ReadFile(filepath.Join("..", f))
		if err != nil {
			t.Fatal(err)
		}
		if string(b) != text {
			t.Errorf("docs/configuration.md: the copy of %s differs from the file; paste it again", f)
		}
	}
}
