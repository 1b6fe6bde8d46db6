package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// BackupSuffix names the copy of the last good store beside it: state.db.last-good.
const BackupSuffix = ".last-good"

// ErrDamaged is matched (errors.Is) by Open's error for a store that failed its check,
// or that is empty or missing while its backup says it held data.
var ErrDamaged = errors.New("state store damaged")

// damageError is why a store file is not sound, before the recovery step is known.
type damageError struct{ reason string }

func (e *damageError) Error() string { return e.reason }

// damagedStoreError is Open's error for a damaged store: one line naming the file, what
// is wrong, that it was not changed, and how to recover.
type damagedStoreError struct{ msg string }

func (e *damagedStoreError) Error() string        { return e.msg }
func (e *damagedStoreError) Is(target error) bool { return target == ErrDamaged }

// damaged builds the error for the store at path: the restore command when backup is
// a sound copy, else how to start afresh.
func damaged(path, backup, reason string) error {
	reason = strings.Join(strings.Fields(reason), " ")
	msg := fmt.Sprintf("state store %s is damaged: %s; snpd wrote nothing to it", path, reason)
	_, statErr := os.Stat(path)
	exists := statErr == nil
	aside := fmt.Sprintf("mv %s %s.damaged", path, path)
	if _, err := os.Stat(backup); err == nil {
		if berr := verify(backup); berr == nil {
			restore := "cp " + backup + " " + path
			if exists {
				restore = aside + " && " + restore
			}
			return &damagedStoreError{msg + fmt.Sprintf(". Restore the last good copy (taken when snpd last started; later changes are lost): %s (see docs/troubleshooting.md)", restore)}
		} else {
			msg += fmt.Sprintf("; its backup %s is not usable either (%s)", backup, strings.Join(strings.Fields(berr.Error()), " "))
		}
	} else {
		msg += fmt.Sprintf("; there is no backup (%s)", backup)
	}
	if !exists {
		return &damagedStoreError{msg + fmt.Sprintf(". To start with an empty store (every definition and run record is lost): rm %s (see docs/troubleshooting.md)", backup)}
	}
	return &damagedStoreError{msg + fmt.Sprintf(". To start with an empty store (every definition and run record is lost): %s (see docs/troubleshooting.md)", aside)}
}

// verify checks the store file at path without writing to it: opened read-only (a
// shared lock; another snpd holding it is an error, not damage), its layout checked
// without a memory mapping, then bbolt's consistency check, then every stored value
// must decode as JSON. A bbolt panic, or a fault reading the mapping, is damage too.
// Damage is returned as a *damageError.
func verify(path string) (err error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, ReadOnly: true})
	if err != nil {
		var pe *fs.PathError
		switch {
		case errors.Is(err, berrors.ErrTimeout):
			return lockedErr(path)
		case errors.As(err, &pe):
			return fmt.Errorf("opening state store: %w", err)
		}
		return &damageError{"bbolt cannot open it: " + err.Error()}
	}
	defer db.Close()

	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("opening state store: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("reading state store: %w", err)
	}
	if err := checkLayout(f, st.Size()); err != nil {
		return &damageError{err.Error()}
	}

	// checkLayout made every page bbolt will read lie inside the file and the page tree
	// acyclic; should bbolt still trip, its panic (and, in this goroutine, a fault on the
	// mapping) is damage, not a crash of snpd.
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = &damageError{fmt.Sprintf("bbolt failed reading it: %v", r)}
		}
	}()
	return db.View(func(tx *bolt.Tx) error {
		var problems []string
		for e := range tx.Check() {
			problems = append(problems, e.Error())
		}
		if n := len(problems); n > 0 {
			more := ""
			if n > 1 {
				more = fmt.Sprintf(" (and %d more problems)", n-1)
			}
			return &damageError{"bbolt's consistency check: " + problems[0] + more}
		}
		return checkValues(tx)
	})
}

// checkValues decodes nothing but checks that every value snpd stores is JSON.
func checkValues(tx *bolt.Tx) error {
	bad := func(bucket string, k []byte) error {
		return &damageError{fmt.Sprintf("the %s record %q is not valid JSON", bucket, k)}
	}
	for _, name := range [][]byte{bucketVMs, bucketLibvirt} {
		b := tx.Bucket(name)
		if b == nil {
			continue
		}
		err := b.ForEach(func(k, v []byte) error {
			if v == nil || !json.Valid(v) {
				return bad(string(name), k)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	runs := tx.Bucket(bucketRuns)
	if runs == nil {
		return nil
	}
	return runs.ForEachBucket(func(vm []byte) error {
		return runs.Bucket(vm).ForEach(func(k, v []byte) error {
			if v == nil || !json.Valid(v) {
				return bad("run of vm "+string(vm), k)
			}
			return nil
		})
	})
}

// writeBackup copies the store to dst atomically: a temporary file, written by
// Tx.WriteTo from one read transaction and fsync'd, renamed over dst, then the
// directory fsync'd. On error dst is unchanged.
func (s *Store) writeBackup(dst string) (err error) {
	tmp := dst + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("writing the store backup: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
			err = fmt.Errorf("writing the store backup %s: %w", dst, err)
		}
	}()
	if err := s.db.View(func(tx *bolt.Tx) error { _, err := tx.WriteTo(f); return err }); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, dst); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(dst))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
