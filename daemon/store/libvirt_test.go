package store

import (
	"errors"
	"testing"
	"time"

	"github.com/snpd/snpd/daemon/api"
)

// TestLibvirtRegistrations: Put, LibvirtDomain, ListLibvirt (name order, each with its
// record), Delete, and a list of none is empty, not an error; registrations survive a
// reopen.
func TestLibvirtRegistrations(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if l, err := s.ListLibvirt(); err != nil || len(l) != 0 {
		t.Fatalf("empty store: %v %+v", err, l)
	}
	now := time.Now().UTC()
	for _, n := range []string{"web", "db", "cache"} {
		reg := &LibvirtRegistration{Name: n, XML: "<domain><name>" + n + "</name></domain>", Definition: []byte(`{"name":"` + n + `"}`),
			Record: &api.LaunchRecord{Name: n, Platform: "none", Note: api.NotConfidential}, RegisteredAt: now}
		if err := s.PutLibvirt(reg); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	if s, err = Open(dir); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	l, err := s.ListLibvirt()
	if err != nil || len(l) != 3 || l[0].Name != "cache" || l[1].Name != "db" || l[2].Name != "web" {
		t.Fatalf("list: %v %+v", err, l)
	}
	for _, r := range l {
		if r.Record == nil || r.Record.Name != r.Name || !r.RegisteredAt.Equal(now) {
			t.Fatalf("registration %+v", r)
		}
	}
	if err := s.DeleteLibvirt("db"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.LibvirtDomain("db"); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("deleted registration: %v", err)
	}
	if l, err = s.ListLibvirt(); err != nil || len(l) != 2 {
		t.Fatalf("after delete: %v %+v", err, l)
	}
}
