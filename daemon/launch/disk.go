package launch

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/snpd/snpd/daemon/api"
)

// Disks are opened by snpd and handed to QEMU as descriptors (an fdset per disk, see
// BuildArgv): QEMU never opens a disk path itself, so it cannot be made to open a host
// file the definition's owner could not open. Each disk is opened once, checked
// through the open descriptor (a regular file or block device, its real path, the
// owner's access to it), and that descriptor is what QEMU gets.

// OpenDisks opens every disk of s (read-only ones O_RDONLY, others O_RDWR and a second
// O_RDONLY descriptor, which QEMU may use for read-only access), fills each DiskSpec's
// Files and RealPath, and checks that owner (nil: root) may open it in that mode (see
// OpenDisk; roots are the directories the host sanctions for disks). On error nothing
// is left open; errors naming a disk the definition got wrong wrap api.ErrInvalid.
func OpenDisks(s *Spec, owner *api.Caller, roots ...string) (err error) {
	defer func() {
		if err != nil {
			s.closeDisks()
		}
	}()
	for i := range s.Disks {
		d := &s.Disks[i]
		if d.Files, d.RealPath, err = OpenDisk(d.Path, !d.ReadOnly, owner, roots...); err != nil {
			return fmt.Errorf("disk %d: %w", i, err)
		}
	}
	return nil
}

// OpenDisk opens the disk image at path for QEMU: O_RDONLY, and with write also O_RDWR
// first. It must be a regular file or a block device (a FIFO or socket is refused
// without blocking), and owner (nil: root, who may open anything) must be able to open
// it the same way by the ownership and mode of the file and of every directory on its
// real path, up to the root directory, or up to the one of roots it lies in: the host
// sanctions those directories (snpd's image_dir, the policy's devices.disk_dirs), and
// inside them each file's own ownership and mode decide. POSIX ACLs are not evaluated: a
// file or directory with one is allowed only when its mode bits allow it. It returns the
// descriptors and the real path.
func OpenDisk(path string, write bool, owner *api.Caller, roots ...string) (files []*os.File, real string, err error) {
	defer func() {
		if err != nil {
			for _, f := range files {
				f.Close()
			}
			files = nil
		}
	}()
	modes := []int{os.O_RDONLY}
	if write {
		modes = []int{os.O_RDWR, os.O_RDONLY}
	}
	for _, m := range modes {
		f, err := os.OpenFile(path, m|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
		if err != nil {
			return files, "", fmt.Errorf("opening disk %s: %w: %w", path, err, api.ErrInvalid)
		}
		files = append(files, f)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(files[0].Fd()), &st); err != nil {
		return files, "", fmt.Errorf("reading disk %s: %w", path, err)
	}
	if t := st.Mode & unix.S_IFMT; t != unix.S_IFREG && t != unix.S_IFBLK {
		return files, "", fmt.Errorf("disk %s: not a regular file or block device: %w", path, api.ErrInvalid)
	}
	// The real path of what was opened, not of what the path names now.
	real, err = os.Readlink("/proc/self/fd/" + strconv.Itoa(int(files[0].Fd())))
	if err != nil || !filepath.IsAbs(real) || strings.HasSuffix(real, " (deleted)") {
		return files, "", fmt.Errorf("disk %s: cannot tell its real path: %w", path, api.ErrInvalid)
	}
	if owner != nil && owner.UID != 0 {
		if err := mayOpen(real, st, write, owner, roots); err != nil {
			return files, "", fmt.Errorf("disk %s: %w: %w", path, err, api.ErrForbidden)
		}
	}
	return files, real, nil
}

// Access bits of a mode for one class (owner, group, other).
const (
	permRead  uint32 = 4
	permWrite uint32 = 2
	permExec  uint32 = 1
)

// mayOpen tells whether owner may reach the file at real (every directory on the way
// searchable, from the root of roots it lies in, else from /) and open it for reading,
// and writing with write. st is the opened file's.
func mayOpen(real string, st unix.Stat_t, write bool, owner *api.Caller, roots []string) error {
	top := "/"
	for _, r := range roots {
		r = filepath.Clean(r)
		if filepath.IsAbs(r) && strings.HasPrefix(real, strings.TrimSuffix(r, "/")+"/") && len(r) > len(top) {
			top = r
		}
	}
	for dir := filepath.Dir(real); ; dir = filepath.Dir(dir) {
		var ds unix.Stat_t
		if err := unix.Stat(dir, &ds); err != nil {
			return fmt.Errorf("checking access to %s: %w", dir, err)
		}
		if !permits(ds, permExec, owner) {
			return fmt.Errorf("uid %d cannot reach it: no search permission on %s%s", owner.UID, dir, aclNote(dir))
		}
		if dir == top || dir == "/" {
			break
		}
	}
	want, what := permRead, "read"
	if write {
		want, what = permRead|permWrite, "read and write"
	}
	if !permits(st, want, owner) {
		return fmt.Errorf("uid %d may not %s it (owner %d, group %d, mode %#o)%s", owner.UID, what, st.Uid, st.Gid, st.Mode&0o777, aclNote(real))
	}
	return nil
}

// permits applies the classic owner/group/other rule: the first class the caller
// belongs to decides.
func permits(st unix.Stat_t, want uint32, c *api.Caller) bool {
	mode := st.Mode & 0o777
	switch {
	case uint32(c.UID) == st.Uid:
		return (mode>>6)&want == want
	case uint32(c.GID) == st.Gid || slices.Contains(c.Groups, int(st.Gid)):
		return (mode>>3)&want == want
	default:
		return mode&want == want
	}
}

// aclNote mentions a POSIX ACL on path, which is not evaluated.
func aclNote(path string) string {
	if _, err := unix.Getxattr(path, "system.posix_acl_access", nil); err == nil || !errors.Is(err, unix.ENODATA) && !errors.Is(err, unix.ENOTSUP) && !errors.Is(err, unix.EOPNOTSUPP) {
		return " (it has a POSIX ACL, which snpd does not evaluate: grant access by mode bits)"
	}
	return ""
}

// closeDisks closes the disks' descriptors. Safe to call twice.
func (s *Spec) closeDisks() {
	for i := range s.Disks {
		for _, f := range s.Disks[i].Files {
			f.Close()
		}
		s.Disks[i].Files = nil
	}
}
