package qmp

import (
	"strings"
	"testing"
)

func TestUnixSocketsAt(t *testing.T) {
	table := `Num       RefCount Protocol Flags    Type St Inode Path
000000001ef9ec85: 00000002 00000000 00010000 0001 01 1321972 /run/snpd/vms/a b/qmp.sock
000000007b00532b: 00000003 00000000 00000000 0001 03 1321975 /run/snpd/vms/a b/qmp.sock
000000001c7ac7cf: 00000003 00000000 00000000 0001 02     0 /run/snpd/vms/a b/qmp.sock
000000001c7ac7d0: 00000003 00000000 00000000 0001 02     0 /run/snpd/vms/other/qmp.sock
000000001c7ac7d1: 00000002 00000000 00000000 0002 01 1321999 /run/snpd/vms/a b/qmp.sock
0000000000000000: 00000002 00000000 00000000 0001 03 1322000
garbage
`
	l, p, a := unixSocketsAt([]byte(table), "/run/snpd/vms/a b/qmp.sock")
	if !l || p != 1 || a != 1 {
		t.Errorf("listening %v, pending %d, accepted %d; want true 1 1", l, p, a)
	}
	if l, p, a := unixSocketsAt([]byte(table), "/nowhere"); l || p != 0 || a != 0 {
		t.Errorf("unknown path: %v %d %d", l, p, a)
	}
}

// FuzzUnixSocketsAt: /proc/net/unix is read as outside input; any content parses
// without panicking, and counts only lines that name the path.
func FuzzUnixSocketsAt(f *testing.F) {
	f.Add([]byte("Num       RefCount Protocol Flags    Type St Inode Path\n000000001ef9ec85: 00000002 00000000 00010000 0001 01 1321972 /p\n"), "/p")
	f.Add([]byte("x: 1 2 3 4 5 6 /p\nx: 1 2 3 4 5 6"), "/p")
	f.Fuzz(func(t *testing.T, data []byte, path string) {
		_, p, a := unixSocketsAt(data, path)
		if n := strings.Count(string(data), "\n") + 1; p+a > n {
			t.Fatalf("%d connections counted in %d lines", p+a, n)
		}
	})
}
