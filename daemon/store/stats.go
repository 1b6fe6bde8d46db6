package store

import (
	"fmt"
	"os"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Stats is what the store reports about itself (snpd's metrics).
type Stats struct {
	// SizeBytes is the size of the store file on disk in bytes (bbolt grows it in
	// steps ahead of its data and never shrinks it).
	SizeBytes int64
	// LastWrite is when a write transaction last committed (durably: bbolt fsyncs before
	// Commit returns); opening the store counts as one.
	LastWrite time.Time
}

// Stats reports the store's size and last successful write. It takes no transaction,
// so it never waits for one.
func (s *Store) Stats() (Stats, error) {
	fi, err := os.Stat(s.db.Path())
	if err != nil {
		return Stats{}, fmt.Errorf("reading store statistics: %w", err)
	}
	st := Stats{SizeBytes: fi.Size()}
	if ns := s.lastWrite.Load(); ns != 0 {
		st.LastWrite = time.Unix(0, ns)
	}
	return st, nil
}

// update runs fn in a write transaction and notes the time when it committed.
func (s *Store) update(fn func(*bolt.Tx) error) error {
	if err := s.db.Update(fn); err != nil {
		return err
	}
	s.wrote()
	return nil
}

func (s *Store) wrote() { s.lastWrite.Store(time.Now().UnixNano()) }
