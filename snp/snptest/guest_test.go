package snptest

import (
	"bytes"
	"io/fs"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestWriteInitramfs writes an archive and lists it with GNU cpio (the kernel's
// format is newc): parents first, modes and contents kept.
func TestWriteInitramfs(t *testing.T) {
	files := []InitramfsFile{
		{Path: "/init", Mode: 0o755, Data: []byte("#!/bin/sh\n")},
		{Path: "etc/snp-agent/modules", Data: []byte("/lib/modules/a.ko\n")},
		{Path: "/dev", Mode: fs.ModeDir | 0o755},
		{Path: "/odd", Data: []byte("12345")}, // data not a multiple of 4
	}
	var a, b bytes.Buffer
	if err := WriteInitramfs(&a, files); err != nil {
		t.Fatal(err)
	}
	if err := WriteInitramfs(&b, []InitramfsFile{files[3], files[2], files[1], files[0]}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) || a.Len()%4 != 0 || !bytes.HasPrefix(a.Bytes(), []byte("070701")) {
		t.Fatalf("archive depends on input order or is misaligned (%d bytes)", a.Len())
	}
	if _, err := exec.LookPath("cpio"); err != nil {
		t.Skip("cpio is not installed (run scripts/install-deps.sh as root): cannot cross-check the archive")
	}
	cmd := exec.Command("cpio", "-it", "--quiet")
	cmd.Stdin = bytes.NewReader(a.Bytes())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("cpio -it: %v\n%s", err, out)
	}
	want := "dev\netc\netc/snp-agent\netc/snp-agent/modules\ninit\nodd\n"
	if string(out) != want {
		t.Fatalf("cpio lists %q, want %q", out, want)
	}
	dir := t.TempDir()
	cmd = exec.Command("cpio", "-id", "--quiet")
	cmd.Dir, cmd.Stdin = dir, bytes.NewReader(a.Bytes())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio -id: %v\n%s", err, out)
	}
	st, err := os.Stat(dir + "/init")
	if err != nil || st.Mode().Perm() != 0o755 {
		t.Fatalf("init: %v %v", st, err)
	}
	if b, _ := os.ReadFile(dir + "/odd"); string(b) != "12345" {
		t.Fatalf("odd: %q", b)
	}
}

func TestWriteInitramfsErrors(t *testing.T) {
	for _, tc := range []struct {
		files []InitramfsFile
		want  string
	}{
		{[]InitramfsFile{{Path: "/"}}, "names the root"},
		{[]InitramfsFile{{Path: "/a"}, {Path: "a"}}, "/a given twice"},
		{[]InitramfsFile{{Path: "/d", Mode: fs.ModeDir, Data: []byte("x")}}, "directory /d has data"},
		{[]InitramfsFile{{Path: "/a"}, {Path: "/a/b"}}, "/a is a file and a parent directory"},
	} {
		err := WriteInitramfs(&bytes.Buffer{}, tc.files)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.files, err, tc.want)
		}
	}
}
