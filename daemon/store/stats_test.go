package store

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/snpd/snpd/daemon/api"
)

// TestStatsSizeAndLastWrite: the size is the file's, and the last write moves with every
// committed write transaction and only with those.
func TestStatsSizeAndLastWrite(t *testing.T) {
	dir := t.TempDir()
	t0 := time.Now()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, File))
	if err != nil {
		t.Fatal(err)
	}
	if st.SizeBytes != fi.Size() || st.SizeBytes == 0 {
		t.Errorf("size %d, the file has %d bytes", st.SizeBytes, fi.Size())
	}
	if st.LastWrite.Before(t0) || st.LastWrite.After(time.Now()) {
		t.Errorf("after Open, last write %v is not the schema write (opened at %v)", st.LastWrite, t0)
	}
	last := st.LastWrite

	stat := func() Stats {
		t.Helper()
		time.Sleep(2 * time.Millisecond) // so that a write shows as a later time
		st, err := s.Stats()
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	vm := StoredVM{Name: "a", TOML: "name = \"a\"\n", Definition: json.RawMessage(`{"name":"a"}`)}
	if err := s.PutVM(vm, false); err != nil {
		t.Fatal(err)
	}
	if st := stat(); !st.LastWrite.After(last) {
		t.Errorf("PutVM: last write %v, not after %v", st.LastWrite, last)
	} else {
		last = st.LastWrite
	}
	// A refused write commits nothing and is no write.
	if err := s.PutVM(vm, false); err == nil || !strings.Contains(err.Error(), "already defined") {
		t.Fatalf("second PutVM: %v", err)
	}
	if _, err := s.NewRun("nope", api.Run{}); err == nil {
		t.Fatal("NewRun of an undefined VM succeeded")
	}
	if st := stat(); !st.LastWrite.Equal(last) {
		t.Errorf("refused writes moved the last write to %v", st.LastWrite)
	}
	// Reads are no writes either; every kind of write is.
	if _, err := s.ListVMs(); err != nil {
		t.Fatal(err)
	}
	for _, w := range []struct {
		name  string
		write func() error
	}{
		{"NewRun", func() error { _, err := s.NewRun("a", api.Run{State: api.StateStarting}); return err }},
		{"PutRun", func() error { return s.PutRun("a", &api.Run{Seq: 1, State: api.StateRunning}) }},
		{"PutLibvirt", func() error { return s.PutLibvirt(&LibvirtRegistration{Name: "d"}) }},
		{"DeleteLibvirt", func() error { return s.DeleteLibvirt("d") }},
		{"DeleteVM", func() error { return s.DeleteVM("a") }},
	} {
		if st := stat(); !st.LastWrite.Equal(last) {
			t.Fatalf("before %s: last write moved to %v without a write", w.name, st.LastWrite)
		}
		if err := w.write(); err != nil {
			t.Fatalf("%s: %v", w.name, err)
		}
		st := stat()
		if !st.LastWrite.After(last) {
			t.Errorf("%s: last write %v, not after %v", w.name, st.LastWrite, last)
		}
		last = st.LastWrite
	}
}
