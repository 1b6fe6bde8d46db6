package snptest

import (
	"bufio"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// Guest images for tests that boot a real guest: Debian's cloud kernel (unpacked by
// scripts/install-deps.sh), initramfs images written here (no cpio binary needed) and
// unified kernel images built from Debian's systemd-stub with objcopy. Nothing here
// starts QEMU.

// DefaultGuestKernelDir is where scripts/install-deps.sh unpacks Debian's cloud kernel
// (vmlinuz and modules/); SNPD_TEST_KERNEL_DIR overrides it.
const DefaultGuestKernelDir = "/var/cache/snpd-test/kernel"

// GuestKernelDir returns SNPD_TEST_KERNEL_DIR, else DefaultGuestKernelDir.
func GuestKernelDir() string {
	if d := os.Getenv("SNPD_TEST_KERNEL_DIR"); d != "" {
		return d
	}
	return DefaultGuestKernelDir
}

// GuestKernel returns the path of Debian's cloud kernel (GuestKernelDir()/vmlinuz),
// skipping the test, with the path, when it is absent.
func GuestKernel(t testing.TB) string {
	t.Helper()
	k := filepath.Join(GuestKernelDir(), "vmlinuz")
	if _, err := os.Stat(k); err != nil {
		t.Skipf("guest kernel %s is absent (run scripts/install-deps.sh as root): %v", k, err)
	}
	return k
}

// InitramfsFile is one entry of an initramfs written by WriteInitramfs.
type InitramfsFile struct {
	// Path is the absolute path inside the initramfs ("/init"). Missing parent
	// directories are added (mode 0755).
	Path string
	// Mode holds the permission bits; fs.ModeDir makes a directory (Data must then
	// be empty). 0 means 0644 for a file.
	Mode fs.FileMode
	// Data is the file's content.
	Data []byte
}

// WriteInitramfs writes files as a newc ("070701") cpio archive, the format the Linux
// kernel unpacks as its initramfs (Documentation/driver-api/early-userspace/
// buffer-format.rst). Entries are written sorted by path, parents first, with mtime,
// uid and gid 0, so the output depends only on the files.
func WriteInitramfs(w io.Writer, files []InitramfsFile) error {
	entries := map[string]InitramfsFile{}
	for _, f := range files {
		p := path.Clean("/" + f.Path)
		if p == "/" {
			return fmt.Errorf("writing initramfs: entry %q names the root", f.Path)
		}
		if _, dup := entries[p]; dup {
			return fmt.Errorf("writing initramfs: %s given twice", p)
		}
		if f.Mode.IsDir() && len(f.Data) > 0 {
			return fmt.Errorf("writing initramfs: directory %s has data", p)
		}
		entries[p] = f
		for d := path.Dir(p); d != "/"; d = path.Dir(d) {
			if e, ok := entries[d]; ok && !e.Mode.IsDir() {
				return fmt.Errorf("writing initramfs: %s is a file and a parent directory", d)
			}
			if _, ok := entries[d]; !ok {
				entries[d] = InitramfsFile{Path: d, Mode: fs.ModeDir | 0o755}
			}
		}
	}
	names := make([]string, 0, len(entries))
	for p := range entries {
		names = append(names, p)
	}
	sort.Strings(names) // a parent sorts before its children
	bw := bufio.NewWriter(w)
	ino := 1
	put := func(name string, mode uint32, nlink int, data []byte) error {
		hdr := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
			ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
		ino++
		if _, err := bw.WriteString(hdr + name + "\x00"); err != nil {
			return err
		}
		if _, err := bw.Write(make([]byte, pad4(len(hdr)+len(name)+1))); err != nil {
			return err
		}
		if _, err := bw.Write(data); err != nil {
			return err
		}
		_, err := bw.Write(make([]byte, pad4(len(data))))
		return err
	}
	for _, p := range names {
		f := entries[p]
		perm := uint32(f.Mode.Perm())
		mode, nlink := uint32(0o100000)|perm, 1 // S_IFREG
		if f.Mode.IsDir() {
			mode, nlink = 0o040000|perm, 2 // S_IFDIR
		} else if perm == 0 {
			mode |= 0o644
		}
		if err := put(p[1:], mode, nlink, f.Data); err != nil {
			return fmt.Errorf("writing initramfs: %w", err)
		}
	}
	if err := put("TRAILER!!!", 0, 1, nil); err != nil {
		return fmt.Errorf("writing initramfs: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("writing initramfs: %w", err)
	}
	return nil
}

func pad4(n int) int { return (4 - n%4) % 4 }

// BuildInitramfs writes files as an initramfs into the test's temporary directory
// and returns its path.
func BuildInitramfs(t testing.TB, files []InitramfsFile) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "initramfs.cpio")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteInitramfs(f, files); err != nil {
		f.Close()
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}

// AgentModules are the modules (relative to the kernel's modules/ directory) snp-agent
// loads as init, dependencies first: Debian's 6.1 cloud kernel builds virtio_pci and
// virtio_console as modules (see modules.builtin), uncompressed.
var AgentModules = []string{
	"kernel/drivers/virtio/virtio_ring.ko",
	"kernel/drivers/virtio/virtio.ko",
	"kernel/drivers/virtio/virtio_pci_modern_dev.ko",
	"kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
	"kernel/drivers/virtio/virtio_pci.ko",
	"kernel/drivers/char/virtio_console.ko",
}

// BuildAgentInitrd builds snp-agent (static, -trimpath) and returns the path of an
// initramfs with it as /init, the AgentModules of the guest kernel in /lib/modules and
// their list in /etc/snp-agent/modules (what the agent loads as PID 1), plus extra
// files. It skips the test, naming what is missing, without the guest kernel's modules.
func BuildAgentInitrd(t testing.TB, extra ...InitramfsFile) string {
	t.Helper()
	kdir := GuestKernelDir()
	var files []InitramfsFile
	var list []string
	for _, m := range AgentModules {
		b, err := os.ReadFile(filepath.Join(kdir, "modules", m))
		if err != nil {
			t.Skipf("guest kernel module missing (run scripts/install-deps.sh as root): %v", err)
		}
		dst := "/lib/modules/" + path.Base(m)
		files = append(files, InitramfsFile{Path: dst, Data: b})
		list = append(list, dst)
	}
	agent := filepath.Join(t.TempDir(), "snp-agent")
	build := exec.Command("go", "build", "-trimpath", "-o", agent, "github.com/snpd/snpd/cmd/snp-agent")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building snp-agent: %v\n%s", err, out)
	}
	bin, err := os.ReadFile(agent)
	if err != nil {
		t.Fatal(err)
	}
	files = append(files,
		InitramfsFile{Path: "/init", Mode: 0o755, Data: bin},
		InitramfsFile{Path: "/etc/snp-agent/modules", Data: []byte(strings.Join(list, "\n") + "\n")},
		InitramfsFile{Path: "/dev", Mode: fs.ModeDir | 0o755},
		InitramfsFile{Path: "/proc", Mode: fs.ModeDir | 0o755},
		InitramfsFile{Path: "/sys", Mode: fs.ModeDir | 0o755},
	)
	return BuildInitramfs(t, append(files, extra...))
}
