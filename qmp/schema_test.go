package qmp_test

import (
	"encoding/json"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/snpd/snpd/qmp"
)

// schemaEntry is one SchemaInfo element of query-qmp-schema (qapi/introspect.json).
type schemaEntry struct {
	Name        string `json:"name"`
	MetaType    string `json:"meta-type"`
	ArgType     string `json:"arg-type"`
	RetType     string `json:"ret-type"`
	ElementType string `json:"element-type"`
	Members     []struct {
		Name    string          `json:"name"`
		Type    string          `json:"type"`
		Default json.RawMessage `json:"default"`
	} `json:"members"`
	Variants []struct {
		Case string `json:"case"`
		Type string `json:"type"`
	} `json:"variants"`
}

// reporter is the part of testing.T check uses, so a test can catch its complaints.
type reporter interface {
	Helper()
	Errorf(format string, args ...any)
}

// recorder collects complaints.
type recorder struct{ msgs []string }

func (r *recorder) Helper() {}
func (r *recorder) Errorf(format string, args ...any) {
	r.msgs = append(r.msgs, fmt.Sprintf(format, args...))
}

type schema struct {
	types map[string]schemaEntry
	seen  map[string]bool // "gotype schematype" pairs already checked (types recurse)
}

// jsonFields maps a struct's JSON member names to their field types.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "" || name == "-" {
			continue
		}
		out[name] = f.Type
	}
	return out
}

// check compares Go type gt against schema type name st: every JSON member of a Go
// struct must exist in the schema object (base or any variant), every base member of
// the schema object must exist in the Go struct, and nested objects/arrays recurse.
func (s schema) check(t reporter, where string, gt reflect.Type, st string) {
	t.Helper()
	for gt.Kind() == reflect.Pointer {
		gt = gt.Elem()
	}
	if gt == reflect.TypeOf(json.RawMessage(nil)) || gt.Kind() == reflect.Interface {
		return
	}
	key := gt.String() + " " + st
	if s.seen[key] {
		return
	}
	s.seen[key] = true
	e, ok := s.types[st]
	if !ok {
		t.Errorf("%s: schema type %q not found", where, st)
		return
	}
	switch e.MetaType {
	case "array":
		if gt.Kind() != reflect.Slice {
			t.Errorf("%s: schema has an array, Go type %s is not a slice", where, gt)
			return
		}
		s.check(t, where+"[]", gt.Elem(), e.ElementType)
	case "object":
		if gt.Kind() != reflect.Struct {
			t.Errorf("%s: schema has an object, Go type %s is not a struct", where, gt)
			return
		}
		goFields := jsonFields(gt)
		all := map[string]string{}
		for _, m := range e.Members {
			all[m.Name] = m.Type
			if _, ok := goFields[m.Name]; !ok {
				t.Errorf("%s: schema member %q missing from Go type %s", where, m.Name, gt)
			}
		}
		for _, v := range e.Variants {
			for _, m := range s.types[v.Type].Members {
				all[m.Name] = m.Type
			}
		}
		for name, ft := range goFields {
			mt, ok := all[name]
			if !ok {
				t.Errorf("%s: Go member %q of %s is not in the schema", where, name, gt)
				continue
			}
			s.check(t, where+"."+name, ft, mt)
		}
	case "builtin", "enum":
		switch gt.Kind() {
		case reflect.Struct, reflect.Slice, reflect.Map:
			t.Errorf("%s: schema has scalar %s, Go type is %s", where, st, gt)
		}
	}
}

func TestQEMUSchemaMatchesTypes(t *testing.T) {
	path, _ := startQEMU(t)
	c := dialQEMU(t, path)
	var entries []schemaEntry
	if err := c.Execute(testCtx(t), "query-qmp-schema", nil, &entries); err != nil {
		t.Fatal(err)
	}
	s := schema{types: map[string]schemaEntry{}, seen: map[string]bool{}}
	for _, e := range entries {
		s.types[e.Name] = e
	}
	returns := map[string]any{
		"query-version":             qmp.VersionInfo{},
		"query-status":              qmp.StatusInfo{},
		"query-sev":                 qmp.SevInfo{},
		"query-sev-capabilities":    qmp.SevCapability{},
		"query-cpus-fast":           []qmp.CPUInfoFast{},
		"query-memory-size-summary": qmp.MemoryInfo{},
		"query-pci":                 []qmp.PCIInfo{},
		"qom-list":                  []qmp.ObjectPropertyInfo{},
		"qom-list-properties":       []qmp.ObjectPropertyInfo{},
	}
	var names []string
	for n := range returns {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		cmd, ok := s.types[name]
		if !ok || cmd.MetaType != "command" {
			t.Errorf("command %s not in the schema", name)
			continue
		}
		s.check(t, name, reflect.TypeOf(returns[name]), cmd.RetType)
	}
	args := map[string][]string{
		"qom-get":             {"path", "property"},
		"qom-list":            {"path"},
		"qom-list-properties": {"typename"},
	}
	for name, want := range args {
		var got []string
		for _, m := range s.types[s.types[name].ArgType].Members {
			got = append(got, m.Name)
		}
		for _, w := range want {
			if !strings.Contains(" "+strings.Join(got, " ")+" ", " "+w+" ") {
				t.Errorf("%s has arguments %v, want %q", name, got, w)
			}
		}
	}
	for _, name := range []string{"cont", "stop", "system_powerdown", "quit", "qom-get"} {
		if s.types[name].MetaType != "command" {
			t.Errorf("command %s not in the schema", name)
		}
	}
	events := map[string]any{
		qmp.EventShutdown:      qmp.ShutdownEvent{},
		qmp.EventGuestPanicked: qmp.GuestPanickedEvent{},
		qmp.EventDeviceDeleted: qmp.DeviceDeletedEvent{},
	}
	for name, typ := range events {
		ev, ok := s.types[name]
		if !ok || ev.MetaType != "event" {
			t.Errorf("event %s not in the schema", name)
			continue
		}
		s.check(t, name, reflect.TypeOf(typ), ev.ArgType)
	}
	// The checker itself catches drift: a missing member, an extra one, a wrong shape.
	var rec recorder
	s.check(&rec, "bogus", reflect.TypeOf(struct {
		QEMU  []int  `json:"qemu"`
		Extra string `json:"extra"`
	}{}), s.types["query-version"].RetType)
	if len(rec.msgs) != 3 {
		t.Errorf("schema checker on a wrong type reported %d problems, want 3: %q", len(rec.msgs), rec.msgs)
	}
	for _, name := range []string{qmp.EventResume, qmp.EventStop} {
		if ev := s.types[name]; ev.MetaType != "event" || len(s.types[ev.ArgType].Members) != 0 {
			t.Errorf("event %s: %+v, want an event without data", name, ev)
		}
	}
}
