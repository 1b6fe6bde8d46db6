package daemon

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/snpd/snpd/daemon/api"
)

// TestOperateRoleDiskPaths: a non-root member of the operate group cannot make the root
// QEMU open host files it could not open itself: a root-only 0600 image and /etc/shadow
// are refused at define, naming the disk; an image it owns is accepted, and QEMU gets it
// as a descriptor (fdset), never by path. Root may define either.
func TestOperateRoleDiskPaths(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("running clients as other uids needs root")
	}
	needQEMU(t)
	bin := buildSnpctl(t)
	e := newTestEnv(t, "")
	d := startDaemon(t, e)
	images := filepath.Join(e.StateDir, "images")
	if err := os.MkdirAll(images, 0o755); err != nil {
		t.Fatal(err)
	}
	img := func(name string, uid, mode int) string {
		p := filepath.Join(images, name)
		if err := os.WriteFile(p, make([]byte, 1<<20), os.FileMode(mode)); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, uid, 0); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, os.FileMode(mode)); err != nil {
			t.Fatal(err)
		}
		return p
	}
	rootOnly := img("root-only.img", 0, 0o600)
	mine := img("mine.img", testUID, 0o600)
	define := func(uid int, name, disk string, readOnly bool) (int, string) {
		toml := filepath.Join(e.Dir, name+".toml")
		body := vmTOML(name, fmt.Sprintf("[[disk]]\npath = %q\nread_only = %v\n", disk, readOnly))
		if err := os.WriteFile(toml, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		code, _, stderr := snpctlAs(t, bin, e.Socket, uid, []int{testOperateGID, testReadGID}, "vm", "define", toml)
		return code, stderr
	}
	for _, c := range []struct {
		name, disk string
		readOnly   bool
	}{
		{"rootonly", rootOnly, false},
		{"rootonlyro", rootOnly, true},
		{"shadow", "/etc/shadow", true},
	} {
		code, stderr := define(testUID, c.name, c.disk, c.readOnly)
		if code == 0 || !strings.Contains(stderr, c.disk) || !strings.Contains(stderr, fmt.Sprintf("uid %d may not", testUID)) {
			t.Errorf("operate-role define with disk %s: exit %d, %q; want a refusal naming the disk", c.disk, code, stderr)
		}
		if _, err := d.Client.Get(ctxT(t, 5*time.Second), c.name); err == nil {
			t.Errorf("%s was defined", c.name)
		}
	}
	if code, stderr := define(testUID, "mine", mine, false); code != 0 {
		t.Fatalf("operate-role define with its own image: exit %d %s", code, stderr)
	}
	if code, stderr := define(0, "rootdisk", rootOnly, false); code != 0 {
		t.Fatalf("root define with a root-only image: exit %d %s", code, stderr)
	}
	info, err := d.Client.Start(ctxT(t, time.Minute), "mine")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(info.PID, syscall.SIGKILL) })
	var rec api.LaunchRecord
	if err := json.Unmarshal(info.Last.Record, &rec); err != nil {
		t.Fatal(err)
	}
	argv := strings.Join(rec.Argv, " ")
	if strings.Contains(argv, mine) || !strings.Contains(argv, `"filename":"/dev/fdset/0"`) {
		t.Errorf("QEMU argv names the disk path or no fdset: %s", argv)
	}
	// The image becomes root-only after define: the next start is refused too.
	if err := os.Chown(mine, 0, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Client.Kill(ctxT(t, 30*time.Second), "mine"); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Client.Start(ctxT(t, time.Minute), "mine"); err == nil || !strings.Contains(err.Error(), mine) {
		t.Errorf("start after the image became root-only: %v", err)
	}
}

// TestDiskOutsideImageDirRefusedByPolicy: with a host policy, a disk outside snpd's
// image directory (and its devices.disk_dirs) is refused at start by rule
// devices.disk_dirs, also when reached through a symlink from inside it.
func TestDiskOutsideImageDirRefusedByPolicy(t *testing.T) {
	needQEMU(t)
	pol, err := filepath.Abs("../config/examples/policy.toml")
	if err != nil {
		t.Fatal(err)
	}
	e := newTestEnv(t, fmt.Sprintf("policy_file = %q\n", pol))
	d := startDaemon(t, e)
	images := filepath.Join(e.StateDir, "images")
	outside := filepath.Join(e.Dir, "outside.img")
	for _, p := range []string{images} {
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(outside, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(images, "link.img")
	if err := os.Symlink(outside, link); err != nil {
		t.Fatal(err)
	}
	inside := filepath.Join(images, "in.img")
	if err := os.WriteFile(inside, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	for name, disk := range map[string]string{"outside": outside, "link": link} {
		mustDefine(t, d.Client, name, fmt.Sprintf("[[disk]]\npath = %q\n", disk))
		_, err := d.Client.Start(ctxT(t, time.Minute), name)
		if err == nil || !strings.Contains(err.Error(), "devices.disk_dirs") || !strings.Contains(err.Error(), outside) {
			t.Errorf("start of %s: %v; want rule devices.disk_dirs naming %s", name, err, outside)
		}
	}
	mustDefine(t, d.Client, "inside", fmt.Sprintf("[[disk]]\npath = %q\n", inside))
	info, err := d.Client.Start(ctxT(t, time.Minute), "inside")
	if err != nil {
		t.Fatalf("start with a disk in the image directory: %v", err)
	}
	t.Cleanup(func() { _ = syscall.Kill(info.PID, syscall.SIGKILL) })
}
