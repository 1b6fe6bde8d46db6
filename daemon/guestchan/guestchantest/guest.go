package guestchantest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// KernelDir is where scripts/install-deps.sh unpacks Debian's cloud kernel.
func KernelDir() string {
	if d := os.Getenv("SNPD_TEST_KERNEL_DIR"); d != "" {
		return d
	}
	return "/var/cache/snpd-test/kernel"
}

// AgentModules are the modules (relative to the kernel's modules dir) snp-agent loads as
// init, dependencies first: Debian's 6.1 cloud kernel builds virtio_pci and virtio_console
// as modules (see modules.builtin), uncompressed.
var AgentModules = []string{
	"kernel/drivers/virtio/virtio_ring.ko",
	"kernel/drivers/virtio/virtio.ko",
	"kernel/drivers/virtio/virtio_pci_modern_dev.ko",
	"kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
	"kernel/drivers/virtio/virtio_pci.ko",
	"kernel/drivers/char/virtio_console.ko",
}

// AgentInitrd builds snp-agent (static) and a newc initramfs with it as /init plus the
// virtio modules, and returns the initramfs path.
func AgentInitrd(t testing.TB) string {
	t.Helper()
	kdir := KernelDir()
	for _, m := range AgentModules {
		if _, err := os.Stat(filepath.Join(kdir, "modules", m)); err != nil {
			t.Skipf("guest kernel module missing (%v); run scripts/install-deps.sh", err)
		}
	}
	if _, err := exec.LookPath("cpio"); err != nil {
		t.Skip("cpio not installed; run scripts/install-deps.sh")
	}
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	for _, d := range []string{"etc/snp-agent", "lib/modules", "dev", "proc", "sys"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	build := exec.Command("go", "build", "-trimpath", "-o", filepath.Join(root, "init"), "github.com/snpd/snpd/cmd/snp-agent")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building snp-agent: %v\n%s", err, out)
	}
	var list []string
	for _, m := range AgentModules {
		b, err := os.ReadFile(filepath.Join(kdir, "modules", m))
		if err != nil {
			t.Fatal(err)
		}
		dst := "/lib/modules/" + filepath.Base(m)
		if err := os.WriteFile(filepath.Join(root, dst), b, 0o644); err != nil {
			t.Fatal(err)
		}
		list = append(list, dst)
	}
	if err := os.WriteFile(filepath.Join(root, "etc/snp-agent/modules"), []byte(strings.Join(list, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var names []string
	_ = filepath.Walk(root, func(p string, _ os.FileInfo, err error) error {
		if err == nil && p != root {
			rel, _ := filepath.Rel(root, p)
			names = append(names, rel)
		}
		return err
	})
	initrd := filepath.Join(dir, "initrd.cpio")
	out, err := os.Create(initrd)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	cp := exec.Command("cpio", "-o", "-H", "newc", "--quiet")
	cp.Dir = root
	cp.Stdin = strings.NewReader(strings.Join(names, "\n") + "\n")
	cp.Stdout = out
	var errOut strings.Builder
	cp.Stderr = &errOut
	if err := cp.Run(); err != nil {
		t.Fatalf("cpio: %v\n%s", err, errOut.String())
	}
	if st, err := out.Stat(); err != nil || st.Size() < 1<<20 {
		t.Fatalf("initramfs %s is too small (%v)", initrd, err)
	}
	return initrd
}
