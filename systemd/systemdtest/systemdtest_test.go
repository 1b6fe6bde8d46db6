package systemdtest

import (
	"testing"
)

func TestDecodeEntry(t *testing.T) {
	in := "PRIORITY=6\nMESSAGE\n\x07\x00\x00\x00\x00\x00\x00\x00a\nb=c d\nVM=x=y\n"
	f, err := DecodeEntry([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if f["PRIORITY"] != "6" || f["MESSAGE"] != "a\nb=c d" || f["VM"] != "x=y" || len(f) != 3 {
		t.Errorf("decoded %q", f)
	}
	for _, bad := range []string{
		"", "PRIORITY=6", "_PID=1\n", "lower=1\n", "1X=1\n",
		"MESSAGE\n\x09\x00\x00\x00\x00\x00\x00\x00a\n",
		"MESSAGE\n\x01\x00\x00\x00\x00\x00\x00\x00ab",
		"MESSAGE\n\x01\x00",
	} {
		if _, err := DecodeEntry([]byte(bad)); err == nil {
			t.Errorf("DecodeEntry(%q): nil error", bad)
		}
	}
}

func FuzzDecodeEntry(f *testing.F) {
	f.Add([]byte("PRIORITY=6\nMESSAGE=hi\n"))
	f.Add([]byte("MESSAGE\n\x01\x00\x00\x00\x00\x00\x00\x00a\n"))
	f.Add([]byte("MESSAGE\n\xff\xff\xff\xff\xff\xff\xff\xffa\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		fields, err := DecodeEntry(b)
		if err == nil && len(fields) == 0 {
			t.Fatal("no fields and no error")
		}
	})
}
