package daemon

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// threadNices returns the nice value (field 19 of /proc/PID/task/TID/stat) of every
// thread of pid ("self" for this process), by thread id.
func threadNices(t *testing.T, pid string) map[string]int {
	t.Helper()
	dir := filepath.Join("/proc", pid, "task")
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), "stat"))
		if err != nil {
			continue // the thread exited meanwhile
		}
		i := bytes.LastIndexByte(b, ')')
		f := strings.Fields(string(b[i+1:]))
		// f[0] is field 3 (state); field 19 (nice) is f[16].
		n, err := strconv.Atoi(f[16])
		if err != nil {
			t.Fatalf("%s/%s/stat: nice %q: %v", dir, e.Name(), f[16], err)
		}
		out[e.Name()] = n
	}
	return out
}

// TestServiceQEMUNice checks that snpd's qemu_nice setting reaches the QEMU of a VM
// started through the API.
func TestServiceQEMUNice(t *testing.T) {
	needQEMU(t)
	e := newTestEnv(t, "qemu_nice = 3\n")
	d := startDaemon(t, e)
	mustDefine(t, d.Client, "nice", "")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	info, err := d.Client.Start(ctx, "nice")
	if err != nil {
		t.Fatal(err)
	}
	defer d.Client.Kill(context.Background(), "nice")
	for tid, n := range threadNices(t, strconv.Itoa(info.PID)) {
		if n != 3 {
			t.Errorf("qemu thread %s runs at nice %d, want 3", tid, n)
		}
	}
}
