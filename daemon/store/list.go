package store

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/maphash"
	"maps"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/snpd/snpd/daemon/api"
)

// ListRow is one VM as `vm list` shows it: the summary fields of its definition, and
// the head of its newest run with how many runs it has.
type ListRow struct {
	Name      string
	DefinedAt time.Time
	DefFields
	// Last is the newest run's head (nil: never started, or skipped); Starts the number
	// of runs (the newest run's Seq: runs are numbered 1, 2, ... and only removed with
	// their VM).
	Last   *api.Run
	Starts int
}

// DefFields are the definition fields a summary shows.
type DefFields struct {
	VCPUs     int    `json:"vcpus"`
	MemoryMiB uint64 `json:"memory_mib"`
	Restart   string `json:"restart"`
}

// vmHead is the part of a stored VM row a list row needs.
type vmHead struct {
	Name       string    `json:"name"`
	DefinedAt  time.Time `json:"defined_at"`
	Definition DefFields `json:"definition"`
}

// runHead is the part of a stored api.Run a list row needs; decoding only it skips the
// launch record, argv and exit details.
type runHead struct {
	Seq         int       `json:"seq"`
	PID         int       `json:"pid,omitempty"`
	State       api.State `json:"state"`
	Transitions []struct {
		At time.Time `json:"at"`
	} `json:"transitions"`
}

// listMemo remembers what ListRows decoded, per VM, keyed by a hash of the stored bytes
// it was decoded from: a row or run that has not changed is not decoded again, and one
// that has (any write) hashes differently, so the memo needs no invalidation and is
// never stale. Decoding was most of the cost of `vm list` (BenchmarkManagerList20).
type listMemo struct {
	mu   sync.Mutex
	seed maphash.Seed
	vms  map[string]memoEntry[vmHead]
	runs map[string]memoEntry[api.Run]
}

type memoEntry[T any] struct {
	sum uint64
	val T
}

// decodeMemo returns the value decoded from b, from m when b is unchanged since.
func decodeMemo[T any](m map[string]memoEntry[T], seed maphash.Seed, name string, b []byte, decode func([]byte) (T, error)) (T, error) {
	sum := maphash.Bytes(seed, b)
	if e, ok := m[name]; ok && e.sum == sum {
		return e.val, nil
	}
	v, err := decode(b)
	if err == nil {
		m[name] = memoEntry[T]{sum, v}
	}
	return v, err
}

// ListRows reads every VM with the head of its newest run in one read transaction,
// sorted by name (bbolt keeps keys sorted). For a name where skipRuns returns true the
// runs are not read (the caller has a newer copy in memory). Keeping the list path to
// one transaction, no full decode of launch records or TOML text, and no decode at all
// of what has not changed keeps `vm list` cheap with many VMs (BenchmarkManagerList20).
func (s *Store) ListRows(skipRuns func(name string) bool) ([]ListRow, error) {
	var out []ListRow
	m := &s.list
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.vms == nil {
		m.seed = maphash.MakeSeed()
		m.vms, m.runs = map[string]memoEntry[vmHead]{}, map[string]memoEntry[api.Run]{}
	}
	err := s.db.View(func(tx *bolt.Tx) error {
		runs := tx.Bucket(bucketRuns)
		return tx.Bucket(bucketVMs).ForEach(func(k, v []byte) error {
			name := string(k)
			h, err := decodeMemo(m.vms, m.seed, name, v, func(b []byte) (h vmHead, err error) {
				return h, json.Unmarshal(b, &h)
			})
			if err != nil {
				return fmt.Errorf("decoding vm %q: %w", k, err)
			}
			row := ListRow{Name: h.Name, DefinedAt: h.DefinedAt, DefFields: h.Definition}
			if skipRuns(row.Name) {
				out = append(out, row)
				return nil
			}
			if rb := runs.Bucket(k); rb != nil {
				if rk, rv := rb.Cursor().Last(); rk != nil {
					r, err := decodeMemo(m.runs, m.seed, name, rv, decodeRunHead)
					if err != nil {
						return fmt.Errorf("decoding run %d of vm %q: %w", binary.BigEndian.Uint64(rk), k, err)
					}
					row.Last, row.Starts = &r, int(binary.BigEndian.Uint64(rk))
				}
			}
			out = append(out, row)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("listing vms: %w", err)
	}
	// Forget undefined VMs.
	if len(m.vms) > len(out) {
		keep := make(map[string]bool, len(out))
		for _, r := range out {
			keep[r.Name] = true
		}
		maps.DeleteFunc(m.vms, func(n string, _ memoEntry[vmHead]) bool { return !keep[n] })
		maps.DeleteFunc(m.runs, func(n string, _ memoEntry[api.Run]) bool { return !keep[n] })
	}
	return out, nil
}

// decodeRunHead decodes a stored run into the run a summary needs: seq, pid, state and
// the time of its newest transition.
func decodeRunHead(b []byte) (api.Run, error) {
	var h runHead
	if err := json.Unmarshal(b, &h); err != nil {
		return api.Run{}, err
	}
	r := api.Run{Seq: h.Seq, PID: h.PID, State: h.State}
	if n := len(h.Transitions); n > 0 {
		r.Transitions = []api.Transition{{At: h.Transitions[n-1].At}}
	}
	return r, nil
}
