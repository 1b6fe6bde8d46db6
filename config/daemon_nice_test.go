package config

import (
	"strings"
	"testing"
)

// TestQEMUNice checks qemu_nice's default (unset: DefaultQEMUNice), that an explicit 0 is
// kept (QEMU at snpd's priority) and that values outside 0..19 are rejected by name.
func TestQEMUNice(t *testing.T) {
	for _, tc := range []struct {
		toml    string
		want    int
		wantErr string
	}{
		{"", DefaultQEMUNice, ""},
		{"qemu_nice = 0\n", 0, ""},
		{"qemu_nice = 19\n", 19, ""},
		{"qemu_nice = -1\n", 0, "qemu_nice -1: must be between 0 and 19"},
		{"qemu_nice = 20\n", 0, "qemu_nice 20: must be between 0 and 19"},
	} {
		var d Daemon
		if err := DecodeStrict("x", []byte(tc.toml), &d); err != nil {
			t.Fatalf("%q: %v", tc.toml, err)
		}
		d.SetDefaults()
		err := d.Validate()
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%q: err %v, want %q", tc.toml, err, tc.wantErr)
			}
			continue
		}
		if err != nil && strings.Contains(err.Error(), "qemu_nice") {
			t.Errorf("%q: %v", tc.toml, err)
		}
		if d.QEMUNice == nil || *d.QEMUNice != tc.want {
			t.Errorf("%q: qemu_nice %v, want %d", tc.toml, d.QEMUNice, tc.want)
		}
	}
	if err := DecodeStrict("x", []byte("qemu_nice = \"low\"\n"), new(Daemon)); err == nil || !strings.HasPrefix(err.Error(), "x:1") {
		t.Errorf("a string qemu_nice: err %v, want one with its line", err)
	}
}
