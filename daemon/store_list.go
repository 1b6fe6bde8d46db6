package daemon

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/snpd/snpd/daemon/api"
)

// listRow is one VM as `vm list` shows it: what summary reads of its definition and of
// its newest run, and how many runs it has.
type listRow struct {
	Name       string          `json:"name"`
	Definition json.RawMessage `json:"definition"`
	DefinedAt  time.Time       `json:"defined_at"`
	// Last is the newest run's head (nil: never started, or skipped); Starts the number
	// of runs (the newest run's Seq: runs are numbered 1, 2, ... and only removed with
	// their VM).
	Last   *api.Run `json:"-"`
	Starts int      `json:"-"`
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

// listRows reads every VM with the head of its newest run in one read transaction,
// sorted by name (bbolt keeps keys sorted). For a name where skipRuns returns true the
// runs are not read (the caller has a newer copy in memory). Keeping the list path to
// one transaction and no full decode of launch records or TOML text keeps `vm list`
// cheap with many VMs (BenchmarkManagerList20).
func (s *Store) listRows(skipRuns func(name string) bool) ([]listRow, error) {
	var out []listRow
	err := s.db.View(func(tx *bolt.Tx) error {
		runs := tx.Bucket(bucketRuns)
		return tx.Bucket(bucketVMs).ForEach(func(k, v []byte) error {
			var row listRow
			if err := json.Unmarshal(v, &row); err != nil {
				return fmt.Errorf("decoding vm %q: %w", k, err)
			}
			if skipRuns(row.Name) {
				out = append(out, row)
				return nil
			}
			if rb := runs.Bucket(k); rb != nil {
				if rk, rv := rb.Cursor().Last(); rk != nil {
					var h runHead
					if err := json.Unmarshal(rv, &h); err != nil {
						return fmt.Errorf("decoding run %d of vm %q: %w", binary.BigEndian.Uint64(rk), k, err)
					}
					r := &api.Run{Seq: h.Seq, PID: h.PID, State: h.State}
					if n := len(h.Transitions); n > 0 {
						r.Transitions = []api.Transition{{At: h.Transitions[n-1].At}}
					}
					row.Last, row.Starts = r, int(binary.BigEndian.Uint64(rk))
				}
			}
			out = append(out, row)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("listing vms: %w", err)
	}
	return out, nil
}
