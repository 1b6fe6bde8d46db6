package daemon

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/snpd/snpd/daemon/store"
)

// TestSnpdRefusesDamagedStore runs the real snpd on a state.db truncated to 16 KiB (as
// found after a disk filled up): it exits 1 with one line naming the file and the
// command that restores the backup it kept, without a panic or stack trace, and
// without writing to the file (systemd would restart it again and again). After that
// command it starts with every definition.
func TestSnpdRefusesDamagedStore(t *testing.T) {
	e := newTestEnv(t, "")
	d := startDaemon(t, e)
	for _, n := range []string{"a", "b", "c"} {
		mustDefine(t, d.Client, n, "# "+strings.Repeat("x", 2000)+"\n")
	}
	d.signal(syscall.SIGTERM)
	<-d.done
	d = startDaemon(t, e) // this start keeps the backup with a, b and c
	d.signal(syscall.SIGTERM)
	<-d.done

	path := filepath.Join(e.StateDir, store.File)
	if err := os.Truncate(path, 16<<10); err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	st0, _ := os.Stat(path)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "SNPD_TEST_DAEMON="+e.Config)
	out, err := cmd.CombinedOutput()
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != 1 {
		t.Fatalf("snpd on a damaged store: %v, want exit 1\n%s", err, out)
	}
	line := strings.TrimSuffix(string(out), "\n")
	t.Logf("snpd: %s", line)
	if strings.Contains(line, "\n") || strings.Contains(line, "panic") || strings.Contains(line, "goroutine") {
		t.Errorf("want one line and no panic, got:\n%s", out)
	}
	for _, w := range []string{"snpd: state store " + path + " is damaged", "cp " + path + store.BackupSuffix + " " + path} {
		if !strings.Contains(line, w) {
			t.Errorf("output lacks %q", w)
		}
	}
	after, _ := os.ReadFile(path)
	st1, _ := os.Stat(path)
	if !bytes.Equal(before, after) || !st0.ModTime().Equal(st1.ModTime()) {
		t.Errorf("snpd wrote to the damaged store")
	}

	i := strings.Index(line, "later changes are lost): ")
	j := strings.LastIndex(line, " (see docs/troubleshooting.md)")
	if i < 0 || j < i {
		t.Fatalf("no restore command in %q", line)
	}
	restore := line[i+len("later changes are lost): ") : j]
	if out, err := exec.Command("sh", "-c", restore).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", restore, err, out)
	}
	d = startDaemon(t, e)
	vms, err := d.Client.List(ctxT(t, 10*time.Second))
	if err != nil || len(vms) != 3 {
		t.Fatalf("after restoring: %v %+v", err, vms)
	}
}
