package store

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/snpd/snpd/daemon/api"
)

// damageVMs is how many VMs filledStore stores: enough for the vms bucket to span
// several leaf pages under a branch page.
const damageVMs = 40

// filledStore creates a store with damageVMs definitions and a run each, closes it,
// and opens and closes it once more so that its backup holds them. It returns the state
// directory.
func filledStore(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	pad := strings.Repeat("#", 900)
	for i := range damageVMs {
		name := fmt.Sprintf("vm%02d", i)
		if err := s.PutVM(StoredVM{Name: name, TOML: pad, Definition: json.RawMessage(`{"vcpus":1}`)}, false); err != nil {
			t.Fatal(err)
		}
		if _, err := s.NewRun(name, api.Run{State: api.StateStopped}); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	s, err = Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if s.BackupErr != nil {
		t.Fatal(s.BackupErr)
	}
	s.Close()
	return dir
}

// fileState is what must not change about a file snpd refuses: its bytes, size,
// modification and change times.
type fileState struct {
	data         []byte
	mtime, ctime syscall.Timespec
}

func stateOf(t *testing.T, path string) fileState {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return fileState{b, st.Mtim, st.Ctim}
}

func (a fileState) same(b fileState) bool {
	return bytes.Equal(a.data, b.data) && a.mtime == b.mtime && a.ctime == b.ctime
}

// pageIDs returns the page ids of the store's vms bucket tree: its root first, then the
// rest of its pages (branch first when it has one).
func pageIDs(t *testing.T, path string) (root uint64, pages []uint64, pageSize int) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	pageSize = db.Info().PageSize
	err = db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketVMs)
		root = uint64(b.RootPage())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Walk the tree with the layout reader, collecting page ids.
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var walk func(id uint64)
	walk = func(id uint64) {
		pages = append(pages, id)
		hdr := make([]byte, pageSize)
		if _, err := f.ReadAt(hdr, int64(id)*int64(pageSize)); err != nil {
			t.Fatal(err)
		}
		if binary.LittleEndian.Uint16(hdr[8:]) != flagBranch {
			return
		}
		for i := range int(binary.LittleEndian.Uint16(hdr[10:])) {
			walk(binary.LittleEndian.Uint64(hdr[pageHeaderSize+i*elementSize+8:]))
		}
	}
	walk(root)
	return root, pages, pageSize
}

func patch(t *testing.T, path string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func flipBit(t *testing.T, path string, off int64, bit uint) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	patch(t, path, off, []byte{b[off] ^ 1<<bit})
}

// expectRefused opens the damaged store in dir and checks the refusal: an ErrDamaged
// error on one line naming the file and the recovery command, no panic, and the file
// exactly as it was (bytes, mtime, ctime), or still absent.
func expectRefused(t *testing.T, dir string, wantInMsg ...string) error {
	t.Helper()
	path := filepath.Join(dir, File)
	var before fileState
	_, statErr := os.Stat(path)
	if statErr == nil {
		before = stateOf(t, path)
	}
	var s *Store
	var err error
	func() {
		defer func() {
			if r := recover(); r != nil {
				t.Fatalf("Open panicked: %v", r)
			}
		}()
		s, err = Open(dir)
	}()
	if err == nil {
		s.Close()
		t.Fatal("a damaged store opened")
	}
	if !errors.Is(err, ErrDamaged) {
		t.Fatalf("error %v does not match ErrDamaged", err)
	}
	msg := err.Error()
	if strings.Contains(msg, "\n") {
		t.Errorf("error is not one line: %q", msg)
	}
	for _, w := range append([]string{path, "wrote nothing", "docs/troubleshooting.md"}, wantInMsg...) {
		if !strings.Contains(msg, w) {
			t.Errorf("error lacks %q: %s", w, msg)
		}
	}
	if statErr == nil {
		if after := stateOf(t, path); !before.same(after) {
			t.Errorf("the damaged file was changed by Open (mtime %v -> %v)", before.mtime, after.mtime)
		}
	} else if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a missing store was created: %v", err)
	}
	if _, err := os.Stat(path + BackupSuffix + ".tmp"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a backup was being written: %v", err)
	}
	return err
}

// restoreCommand extracts the shell command the error names for restoring.
func restoreCommand(t *testing.T, err error) string {
	t.Helper()
	msg := err.Error()
	i := strings.Index(msg, "later changes are lost): ")
	j := strings.LastIndex(msg, " (see docs/troubleshooting.md)")
	if i < 0 || j < i {
		t.Fatalf("no restore command in %q", msg)
	}
	return msg[i+len("later changes are lost): ") : j]
}

// checkRestores runs the restore command the error names and checks that the store
// then opens with every VM.
func checkRestores(t *testing.T, dir string, err error) {
	t.Helper()
	cmd := restoreCommand(t, err)
	if out, err := exec.Command("sh", "-c", cmd).CombinedOutput(); err != nil {
		t.Fatalf("restore command %q: %v\n%s", cmd, err, out)
	}
	s, err := Open(dir)
	if err != nil {
		t.Fatalf("after %q: %v", cmd, err)
	}
	defer s.Close()
	vms, err := s.ListVMs()
	if err != nil || len(vms) != damageVMs {
		t.Fatalf("after restoring: %d vms (%v), want %d", len(vms), err, damageVMs)
	}
	if err := s.Check(); err != nil {
		t.Fatal(err)
	}
}

// TestStoreDamagedIsRefusedUntouched damages a store in the ways seen in the field and
// in a few more; each is refused with one line naming the file and the command that
// restores the backup, the file is not written, and the command works.
func TestStoreDamagedIsRefusedUntouched(t *testing.T) {
	for _, c := range []struct {
		name   string
		damage func(t *testing.T, path string)
	}{
		{"truncated to 16 KiB", func(t *testing.T, path string) {
			if err := os.Truncate(path, 16<<10); err != nil {
				t.Fatal(err)
			}
		}},
		{"truncated mid-page", func(t *testing.T, path string) {
			st, _ := os.Stat(path)
			if err := os.Truncate(path, st.Size()-5000); err != nil {
				t.Fatal(err)
			}
		}},
		{"random data page", func(t *testing.T, path string) {
			_, pages, ps := pageIDs(t, path)
			junk := make([]byte, ps)
			rand.New(rand.NewSource(1)).Read(junk)
			patch(t, path, int64(pages[len(pages)-1])*int64(ps), junk)
		}},
		{"random root page", func(t *testing.T, path string) {
			root, _, ps := pageIDs(t, path)
			junk := make([]byte, ps)
			rand.New(rand.NewSource(2)).Read(junk)
			patch(t, path, int64(root)*int64(ps), junk)
		}},
		{"zeroed data page", func(t *testing.T, path string) {
			_, pages, ps := pageIDs(t, path)
			patch(t, path, int64(pages[1])*int64(ps), make([]byte, ps))
		}},
		{"zeroed file", func(t *testing.T, path string) {
			st, _ := os.Stat(path)
			patch(t, path, 0, make([]byte, st.Size()))
		}},
		{"both meta pages bit-flipped", func(t *testing.T, path string) {
			_, _, ps := pageIDs(t, path)
			flipBit(t, path, pageHeaderSize+40, 3)           // meta 0's high-water mark
			flipBit(t, path, int64(ps)+pageHeaderSize+16, 0) // meta 1's root
		}},
		{"page id bit-flipped", func(t *testing.T, path string) {
			_, pages, ps := pageIDs(t, path)
			flipBit(t, path, int64(pages[2])*int64(ps), 4)
		}},
		{"element count bit-flipped", func(t *testing.T, path string) {
			_, pages, ps := pageIDs(t, path)
			flipBit(t, path, int64(pages[1])*int64(ps)+11, 6)
		}},
		{"branch points at itself", func(t *testing.T, path string) {
			root, pages, ps := pageIDs(t, path)
			if len(pages) < 3 {
				t.Fatal("the vms bucket has no branch page; store more VMs")
			}
			// A child pointer turned into the branch's own id: a cycle that sends bbolt's
			// own walk into endless recursion.
			var id [8]byte
			binary.LittleEndian.PutUint64(id[:], root)
			patch(t, path, int64(root)*int64(ps)+pageHeaderSize+elementSize+8, id[:])
		}},
		{"leaf element offset bit-flipped", func(t *testing.T, path string) {
			_, pages, ps := pageIDs(t, path)
			flipBit(t, path, int64(pages[1])*int64(ps)+pageHeaderSize+4+2, 7) // pos of element 0
		}},
		{"keys out of order", func(t *testing.T, path string) {
			// Only bbolt's own check sees this: element 1's key made equal to element 0's.
			_, pages, ps := pageIDs(t, path)
			off := int64(pages[1]) * int64(ps)
			b, _ := os.ReadFile(path)
			e1 := off + pageHeaderSize + elementSize
			pos := int64(binary.LittleEndian.Uint32(b[e1+4:]))
			key0 := b[off+pageHeaderSize+int64(binary.LittleEndian.Uint32(b[off+pageHeaderSize+4:])):][:4]
			patch(t, path, e1+pos, key0)
		}},
		{"value no longer JSON", func(t *testing.T, path string) {
			_, pages, ps := pageIDs(t, path)
			b, _ := os.ReadFile(path)
			p := b[int64(pages[1])*int64(ps) : int64(pages[1]+1)*int64(ps)]
			i := bytes.Index(p, []byte(`{"name":`))
			if i < 0 {
				t.Fatal("no stored VM in the page")
			}
			patch(t, path, int64(pages[1])*int64(ps)+int64(i), []byte("X"))
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := filledStore(t)
			path := filepath.Join(dir, File)
			c.damage(t, path)
			err := expectRefused(t, dir, "mv "+path+" "+path+".damaged && cp "+path+BackupSuffix+" "+path)
			t.Logf("%v", err)
			checkRestores(t, dir, err)
		})
	}
}

// TestStoreEmptyOrMissingWithBackup: a 0-byte or missing state.db next to a backup held
// data, so it is refused (not silently replaced by an empty store), and the restore
// command named works. Without a backup a 0-byte file is a store whose first start
// ended before it was initialized, and opens as a new one.
func TestStoreEmptyOrMissingWithBackup(t *testing.T) {
	t.Run("0 bytes", func(t *testing.T) {
		dir := filledStore(t)
		path := filepath.Join(dir, File)
		if err := os.Truncate(path, 0); err != nil {
			t.Fatal(err)
		}
		err := expectRefused(t, dir, "empty (0 bytes)", "cp "+path+BackupSuffix)
		checkRestores(t, dir, err)
	})
	t.Run("missing", func(t *testing.T) {
		dir := filledStore(t)
		path := filepath.Join(dir, File)
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
		err := expectRefused(t, dir, "missing")
		checkRestores(t, dir, err)
	})
	t.Run("0 bytes without backup", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, File), nil, 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := Open(dir)
		if err != nil {
			t.Fatalf("a never-initialized store: %v", err)
		}
		s.Close()
		if _, err := os.Stat(filepath.Join(dir, File+BackupSuffix)); err != nil {
			t.Errorf("no backup after initializing: %v", err)
		}
	})
	t.Run("damaged without backup", func(t *testing.T) {
		dir := filledStore(t)
		path := filepath.Join(dir, File)
		if err := os.Remove(path + BackupSuffix); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(path, 16<<10); err != nil {
			t.Fatal(err)
		}
		expectRefused(t, dir, "no backup", "mv "+path+" "+path+".damaged")
	})
	t.Run("backup damaged too", func(t *testing.T) {
		dir := filledStore(t)
		path := filepath.Join(dir, File)
		for _, p := range []string{path, path + BackupSuffix} {
			if err := os.Truncate(p, 16<<10); err != nil {
				t.Fatal(err)
			}
		}
		err := expectRefused(t, dir, "not usable either")
		if strings.Contains(err.Error(), "Restore the last good copy") {
			t.Errorf("a damaged backup is offered for restoring: %v", err)
		}
	})
}

// TestStoreSoundOpensWithoutWriting: opening a sound store writes nothing to it (the
// check is read-only and the buckets exist), and refreshes its backup, which is itself
// a sound store with the same contents.
func TestStoreSoundOpensWithoutWriting(t *testing.T) {
	dir := filledStore(t)
	path := filepath.Join(dir, File)
	before := stateOf(t, path)
	time.Sleep(10 * time.Millisecond) // a write would show in mtime
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	vms, err := s.ListVMs()
	s.Close()
	if err != nil || len(vms) != damageVMs {
		t.Fatalf("%d vms (%v)", len(vms), err)
	}
	if after := stateOf(t, path); !before.same(after) {
		t.Errorf("opening a sound store wrote to it")
	}
	if err := verify(path + BackupSuffix); err != nil {
		t.Fatalf("backup: %v", err)
	}
	bdir := t.TempDir()
	b, _ := os.ReadFile(path + BackupSuffix)
	if err := os.WriteFile(filepath.Join(bdir, File), b, 0o600); err != nil {
		t.Fatal(err)
	}
	bs, err := Open(bdir)
	if err != nil {
		t.Fatal(err)
	}
	defer bs.Close()
	if bv, err := bs.ListVMs(); err != nil || len(bv) != damageVMs {
		t.Fatalf("backup holds %d vms (%v)", len(bv), err)
	}
}

// TestStoreRandomBitFlips flips random bits in the pages of a store, one file per flip:
// Open either refuses it (ErrDamaged, file untouched) or opens a store that passes
// bbolt's check; it never panics or crashes the process (a fault inside bbolt would
// end this test binary).
func TestStoreRandomBitFlips(t *testing.T) {
	dir := filledStore(t)
	path := filepath.Join(dir, File)
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	backup, err := os.ReadFile(path + BackupSuffix)
	if err != nil {
		t.Fatal(err)
	}
	_, _, ps := pageIDs(t, path)
	rng := rand.New(rand.NewSource(14))
	refused := 0
	const rounds = 300
	for round := range rounds {
		d := t.TempDir()
		b := bytes.Clone(orig)
		// Flip bits within the first 64 bytes of a page (headers, meta fields, element
		// tables), where structure lives, or anywhere.
		for range 1 + rng.Intn(3) {
			page := rng.Intn(len(b) / ps)
			off := page*ps + rng.Intn(64)
			if rng.Intn(3) == 0 {
				off = rng.Intn(len(b))
			}
			b[off] ^= 1 << rng.Intn(8)
		}
		if err := os.WriteFile(filepath.Join(d, File), b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, File+BackupSuffix), backup, 0o600); err != nil {
			t.Fatal(err)
		}
		before := stateOf(t, filepath.Join(d, File))
		s, err := Open(d)
		if err != nil {
			if !errors.Is(err, ErrDamaged) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("round %d: %v", round, err)
			}
			if !before.same(stateOf(t, filepath.Join(d, File))) {
				t.Fatalf("round %d: refused file was changed", round)
			}
			refused++
			continue
		}
		if err := s.Check(); err != nil {
			t.Errorf("round %d: opened a store that fails bbolt's check: %v", round, err)
		}
		_, _ = s.ListVMs()
		s.Close()
	}
	t.Logf("%d of %d flipped stores refused, the rest sound", refused, rounds)
	if refused == 0 {
		t.Error("no flipped store was refused: the flips never hit structure")
	}
}

// FuzzCheckLayout: the layout check reads arbitrary bytes as a bbolt file without
// panicking, and any file it accepts can be opened and checked by bbolt without a
// crash: it is what makes mapping a damaged file safe. The input edits a sound store
// (each 4 bytes: a 3-byte offset and a byte to XOR there) and cuts it to cut bytes
// (0: not cut); with cut 1 the input is the whole file instead.
func FuzzCheckLayout(f *testing.F) {
	dir := f.TempDir()
	s, err := Open(dir)
	if err != nil {
		f.Fatal(err)
	}
	for i := range 8 {
		_ = s.PutVM(StoredVM{Name: fmt.Sprintf("v%d", i), TOML: strings.Repeat("x", 700), Definition: json.RawMessage(`{}`)}, false)
	}
	s.Close()
	good, err := os.ReadFile(filepath.Join(dir, File))
	if err != nil {
		f.Fatal(err)
	}
	f.Add([]byte{}, uint32(0))
	f.Add([]byte{0x0a, 0x20, 0x00, 0x40}, uint32(0)) // page 2, byte 10: an element count
	f.Add([]byte{0x28, 0x10, 0x00, 0x02}, uint32(0)) // meta 1's high-water mark
	f.Add([]byte{}, uint32(16<<10))
	f.Add(good[:64], uint32(1))
	f.Fuzz(func(t *testing.T, edits []byte, cut uint32) {
		var data []byte
		if cut == 1 {
			data = edits
		} else {
			data = bytes.Clone(good)
			for i := 0; i+4 <= len(edits); i += 4 {
				off := int(edits[i]) | int(edits[i+1])<<8 | int(edits[i+2])<<16
				data[off%len(data)] ^= edits[i+3]
			}
			if cut > 1 && int(cut) < len(data) {
				data = data[:cut]
			}
		}
		if checkLayout(bytes.NewReader(data), int64(len(data))) != nil {
			return
		}
		d := t.TempDir()
		p := filepath.Join(d, File)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		_ = verify(p) // must return, not crash
	})
}
