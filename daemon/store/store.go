package store

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"sync/atomic"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/snpd/snpd/daemon/api"
)

// File is the store's file name inside the state directory.
const File = "state.db"

var (
	bucketVMs  = []byte("vms")
	bucketRuns = []byte("runs")
	bucketMeta = []byte("meta")
	keySchema  = []byte("schema")
)

const storeSchema = "1"

// Store is snpd's durable state: VM definitions and one record per start (api.Run), in a
// bbolt file. Every method is one transaction: a crash at any point leaves either the old
// or the new state, never a mix (bbolt's copy-on-write pages plus an fsync'd meta page).
type Store struct {
	db   *bolt.DB
	list listMemo // ListRows' decoded rows (list.go)

	// BackupErr is why Open could not refresh the backup of the last good store (nil:
	// it did). The store works without it; the previous backup, if any, stays.
	BackupErr error
	// lastWrite is when a write transaction last committed, in Unix nanoseconds
	// (stats.go).
	lastWrite atomic.Int64
}

// StoredVM is a VM definition as stored.
type StoredVM struct {
	Name string `json:"name"`
	// TOML is the definition text as the operator wrote it; File where it came from.
	TOML string `json:"toml"`
	File string `json:"file,omitempty"`
	// Definition is the decoded, defaulted config.VM as JSON.
	Definition json.RawMessage `json:"definition"`
	DefinedAt  time.Time       `json:"defined_at"`
	// DefinedBy is who defined it (nil: snpd itself, as root): its disks are opened with
	// these rights at every start.
	DefinedBy *api.Caller `json:"defined_by,omitempty"`
}

// Open opens the store in stateDir, creating it when there is none. Nothing is written
// to an existing file before it is known to be sound: it is first opened read-only and
// checked (checkLayout without mapping it, then bbolt's Tx.Check, then every stored
// value decodes as JSON); only then is it opened for writing. A store that fails the
// check is an error wrapping ErrDamaged that names the recovery step, and the file is
// left exactly as it was. After a successful check Open keeps a copy of the store
// beside it (Backup, written with Tx.WriteTo and renamed into place); that copy is also
// what tells an empty or missing state.db from a new one: with a backup present, the
// store is expected to hold data.
//
// It fails after one second if another process holds the file's lock (another snpd
// using the same state directory).
func Open(stateDir string) (*Store, error) {
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return nil, fmt.Errorf("creating state directory: %w", err)
	}
	path := filepath.Join(stateDir, File)
	backup := path + BackupSuffix
	_, backupErr := os.Stat(backup)
	haveBackup := backupErr == nil
	st, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist) && haveBackup:
		return nil, damaged(path, backup, "it is missing, but a backup of it exists, so it held data")
	case errors.Is(err, fs.ErrNotExist):
		// A new store.
	case err != nil:
		return nil, fmt.Errorf("opening state store: %w", err)
	case !st.Mode().IsRegular():
		return nil, fmt.Errorf("opening state store %s: not a regular file", path)
	case st.Size() == 0 && haveBackup:
		return nil, damaged(path, backup, "it is empty (0 bytes), but a backup of it exists, so it held data")
	case st.Size() == 0:
		// Created, never initialized: snpd stopped during its very first start, before
		// anything was stored (the backup is written right after initializing).
	default:
		if err := verify(path); err != nil {
			var de *damageError
			if errors.As(err, &de) {
				return nil, damaged(path, backup, de.reason)
			}
			return nil, err
		}
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return nil, lockedErr(path)
		}
		return nil, fmt.Errorf("opening state store %s: %w", path, err)
	}
	s := &Store{db: db}
	if err := s.initialize(); err != nil {
		db.Close()
		return nil, writeErr(fmt.Sprintf("initializing state store %s", path), err)
	}
	s.wrote() // opening counts as a write (Stats)
	s.BackupErr = s.writeBackup(backup)
	return s, nil
}

func lockedErr(path string) error {
	return fmt.Errorf("opening state store %s: locked by another process (is another snpd using this state directory?)", path)
}

// initialize creates the buckets and the schema marker where they are missing and
// refuses a schema this snpd does not understand; a store that has them all is not
// written to.
func (s *Store) initialize() error {
	ready := false
	err := s.db.View(func(tx *bolt.Tx) error {
		ready = true
		for _, b := range [][]byte{bucketVMs, bucketRuns, bucketMeta, bucketLibvirt} {
			if tx.Bucket(b) == nil {
				ready = false
			}
		}
		if meta := tx.Bucket(bucketMeta); meta != nil {
			v := meta.Get(keySchema)
			if v != nil && string(v) != storeSchema {
				return fmt.Errorf("schema %q, this snpd understands %q", v, storeSchema)
			}
			ready = ready && v != nil
		}
		return nil
	})
	if err != nil || ready {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketVMs, bucketRuns, bucketMeta, bucketLibvirt} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bucketMeta)
		if v := meta.Get(keySchema); v != nil && string(v) != storeSchema {
			return fmt.Errorf("schema %q, this snpd understands %q", v, storeSchema)
		}
		return meta.Put(keySchema, []byte(storeSchema))
	})
}

// writeErr gives a failed write transaction its context; a full state directory is
// named as such (api.ErrUnavailable: retry once space is freed; nothing was written).
func writeErr(what string, err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("%s: the state directory is full, nothing was written (free space and retry): %w: %w", what, err, api.ErrUnavailable)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// Close closes the store file.
func (s *Store) Close() error { return s.db.Close() }

// Check runs bbolt's consistency check over the whole file and returns every problem.
func (s *Store) Check() error {
	var errs []error
	err := s.db.View(func(tx *bolt.Tx) error {
		for e := range tx.Check() {
			errs = append(errs, e)
		}
		return nil
	})
	return errors.Join(append(errs, err)...)
}

// PutVM stores a definition. An existing VM of that name is an api.ErrConflict unless
// replace is set.
func (s *Store) PutVM(vm StoredVM, replace bool) error {
	b, err := json.Marshal(vm)
	if err != nil {
		return fmt.Errorf("encoding vm %q: %w", vm.Name, err)
	}
	err = s.update(func(tx *bolt.Tx) error {
		vms := tx.Bucket(bucketVMs)
		if vms.Get([]byte(vm.Name)) != nil && !replace {
			return fmt.Errorf("vm %q is already defined (undefine it first, or redefine with --replace): %w", vm.Name, api.ErrConflict)
		}
		return vms.Put([]byte(vm.Name), b)
	})
	if err != nil {
		return writeErr(fmt.Sprintf("storing vm %q", vm.Name), err)
	}
	return nil
}

// GetVM returns the definition of name, or an api.ErrNotFound error.
func (s *Store) GetVM(name string) (*StoredVM, error) {
	var vm StoredVM
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketVMs).Get([]byte(name))
		if v == nil {
			return fmt.Errorf("vm %q is not defined: %w", name, api.ErrNotFound)
		}
		return json.Unmarshal(v, &vm)
	})
	if err != nil {
		return nil, fmt.Errorf("reading vm %q: %w", name, err)
	}
	return &vm, nil
}

// ListVMs returns every definition sorted by name.
func (s *Store) ListVMs() ([]StoredVM, error) {
	var out []StoredVM
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketVMs).ForEach(func(k, v []byte) error {
			var vm StoredVM
			if err := json.Unmarshal(v, &vm); err != nil {
				return fmt.Errorf("decoding vm %q: %w", k, err)
			}
			out = append(out, vm)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("listing vms: %w", err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// DeleteVM removes a definition and all its runs in one transaction.
func (s *Store) DeleteVM(name string) error {
	err := s.update(func(tx *bolt.Tx) error {
		vms := tx.Bucket(bucketVMs)
		if vms.Get([]byte(name)) == nil {
			return fmt.Errorf("vm %q is not defined: %w", name, api.ErrNotFound)
		}
		if err := vms.Delete([]byte(name)); err != nil {
			return err
		}
		runs := tx.Bucket(bucketRuns)
		if runs.Bucket([]byte(name)) != nil {
			return runs.DeleteBucket([]byte(name))
		}
		return nil
	})
	if err != nil {
		return writeErr(fmt.Sprintf("deleting vm %q", name), err)
	}
	return nil
}

func seqKey(seq int) []byte {
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], uint64(seq))
	return k[:]
}

// NewRun allocates the next run of a defined VM (Seq = last + 1), stores run with that
// Seq and returns it.
func (s *Store) NewRun(name string, run api.Run) (api.Run, error) {
	err := s.update(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketVMs).Get([]byte(name)) == nil {
			return fmt.Errorf("vm %q is not defined: %w", name, api.ErrNotFound)
		}
		rb, err := tx.Bucket(bucketRuns).CreateBucketIfNotExists([]byte(name))
		if err != nil {
			return err
		}
		run.Seq = 1
		if k, _ := rb.Cursor().Last(); k != nil {
			run.Seq = int(binary.BigEndian.Uint64(k)) + 1
		}
		b, err := json.Marshal(run)
		if err != nil {
			return err
		}
		return rb.Put(seqKey(run.Seq), b)
	})
	if err != nil {
		return api.Run{}, writeErr(fmt.Sprintf("recording start of vm %q", name), err)
	}
	return run, nil
}

// PutRun overwrites run (by its Seq) of a defined VM.
func (s *Store) PutRun(name string, run *api.Run) error {
	b, err := json.Marshal(run)
	if err != nil {
		return fmt.Errorf("encoding run %d of vm %q: %w", run.Seq, name, err)
	}
	err = s.update(func(tx *bolt.Tx) error {
		rb := tx.Bucket(bucketRuns).Bucket([]byte(name))
		if rb == nil || tx.Bucket(bucketVMs).Get([]byte(name)) == nil {
			return fmt.Errorf("vm %q is not defined: %w", name, api.ErrNotFound)
		}
		return rb.Put(seqKey(run.Seq), b)
	})
	if err != nil {
		return writeErr(fmt.Sprintf("recording run %d of vm %q", run.Seq, name), err)
	}
	return nil
}

// Runs returns the runs of name, oldest first, and how many there are in total;
// at most limit (0: all) of the newest are returned.
func (s *Store) Runs(name string, limit int) ([]api.Run, int, error) {
	var out []api.Run
	total := 0
	err := s.db.View(func(tx *bolt.Tx) error {
		rb := tx.Bucket(bucketRuns).Bucket([]byte(name))
		if rb == nil {
			return nil
		}
		total = rb.Stats().KeyN
		c := rb.Cursor()
		for k, v := c.Last(); k != nil && (limit == 0 || len(out) < limit); k, v = c.Prev() {
			var r api.Run
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("decoding run %d: %w", binary.BigEndian.Uint64(k), err)
			}
			out = append(out, r)
		}
		return nil
	})
	if err != nil {
		return nil, 0, fmt.Errorf("reading runs of vm %q: %w", name, err)
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out, total, nil
}

// LastRun returns the newest run of name (nil if it never started) and the run count.
func (s *Store) LastRun(name string) (*api.Run, int, error) {
	runs, total, err := s.Runs(name, 1)
	if err != nil || len(runs) == 0 {
		return nil, total, err
	}
	return &runs[0], total, nil
}
