package store

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/snpd/snpd/daemon/api"
)

// TestMain lets TestStoreSurvivesSIGKILLMidWrite re-execute the test binary as a store
// writer to be killed mid-write.
func TestMain(m *testing.M) {
	if dir := os.Getenv("SNPD_TEST_STORE_WRITER"); dir != "" {
		storeWriter(dir)
		return
	}
	os.Exit(m.Run())
}

func TestStoreRoundTrip(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	vm := StoredVM{Name: "a", TOML: "name = \"a\"\n", Definition: json.RawMessage(`{"name":"a"}`), DefinedAt: time.Now().UTC()}
	if err := s.PutVM(vm, false); err != nil {
		t.Fatal(err)
	}
	if err := s.PutVM(vm, false); !errors.Is(err, api.ErrConflict) {
		t.Fatalf("second define: got %v, want conflict", err)
	}
	r1, err := s.NewRun("a", api.Run{State: api.StateStarting})
	if err != nil {
		t.Fatal(err)
	}
	r2, err := s.NewRun("a", api.Run{State: api.StateStarting})
	if err != nil {
		t.Fatal(err)
	}
	if r1.Seq != 1 || r2.Seq != 2 {
		t.Fatalf("seqs %d %d, want 1 2", r1.Seq, r2.Seq)
	}
	r2.State = api.StateRunning
	r2.PID = 42
	if err := s.PutRun("a", &r2); err != nil {
		t.Fatal(err)
	}
	last, n, err := s.LastRun("a")
	if err != nil || n != 2 || last.PID != 42 || last.State != api.StateRunning {
		t.Fatalf("LastRun = %+v, %d, %v", last, n, err)
	}
	if _, err := s.NewRun("nope", api.Run{}); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("run of undefined vm: %v", err)
	}
	if err := s.DeleteVM("a"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.LastRun("a"); err != nil {
		t.Fatal(err)
	}
	if runs, n, _ := s.Runs("a", 0); len(runs) != 0 || n != 0 {
		t.Fatalf("runs survived undefine: %d", n)
	}
	if _, err := s.GetVM("a"); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("GetVM after delete: %v", err)
	}
}

func TestStoreRefusesSecondOpener(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// bbolt's flock is per open file description, so a second open in this process
	// conflicts just as another snpd would.
	if _, err := Open(dir); err == nil || !strings.Contains(err.Error(), "locked") {
		t.Fatalf("second open: %v, want a lock error", err)
	}
}

// storeWriter is run in a re-executed test binary: it writes forever, each transaction
// storing a VM whose TOML names counter i together with run i, and prints i after each
// commit.
func storeWriter(dir string) {
	s, err := Open(dir)
	if err != nil {
		fmt.Println("error", err)
		os.Exit(2)
	}
	pad := strings.Repeat("x", 3000) // spans pages, so a torn write would show
	for i := 1; ; i++ {
		err := s.db.Update(func(tx *bolt.Tx) error {
			vm := StoredVM{Name: "w", TOML: fmt.Sprintf("# %d\n%s", i, pad), Definition: json.RawMessage(`{}`)}
			b, _ := json.Marshal(vm)
			if err := tx.Bucket(bucketVMs).Put([]byte("w"), b); err != nil {
				return err
			}
			rb, err := tx.Bucket(bucketRuns).CreateBucketIfNotExists([]byte("w"))
			if err != nil {
				return err
			}
			rj, _ := json.Marshal(api.Run{Seq: i, State: api.StateRunning, Error: pad})
			return rb.Put(seqKey(i), rj)
		})
		if err != nil {
			fmt.Println("error", err)
			os.Exit(2)
		}
		fmt.Println(i)
	}
}

func TestStoreSurvivesSIGKILLMidWrite(t *testing.T) {
	for round := 0; round < 4; round++ {
		dir := t.TempDir()
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), "SNPD_TEST_STORE_WRITER="+dir)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(out)
		// Kill after a varying number of commits, at an arbitrary point of the next.
		want := 20 + round*37
		last := 0
		for sc.Scan() {
			n, err := strconv.Atoi(sc.Text())
			if err != nil {
				t.Fatalf("writer: %s", sc.Text())
			}
			last = n
			if n >= want {
				break
			}
		}
		time.Sleep(time.Duration(round) * time.Millisecond)
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
		if last < want {
			t.Fatalf("writer stopped after %d commits", last)
		}

		s, err := Open(dir)
		if err != nil {
			t.Fatalf("reopening after SIGKILL: %v", err)
		}
		if err := s.Check(); err != nil {
			t.Fatalf("consistency check after SIGKILL: %v", err)
		}
		vm, err := s.GetVM("w")
		if err != nil {
			t.Fatal(err)
		}
		runs, total, err := s.Runs("w", 0)
		if err != nil {
			t.Fatal(err)
		}
		var counter int
		fmt.Sscanf(vm.TOML, "# %d", &counter)
		// Every commit printed before the kill is there, and the VM and its runs come
		// from the same transaction.
		if counter < last || total != counter || runs[len(runs)-1].Seq != counter {
			t.Fatalf("round %d: vm counter %d, %d runs (last seq %d), writer had committed %d", round, counter, total, runs[len(runs)-1].Seq, last)
		}
		s.Close()
	}
}

func TestStoreFullDisk(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a small tmpfs to fill needs root")
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=256k,mode=0700"); err != nil {
		t.Skipf("cannot mount a tmpfs here (%v): full-disk case untestable", err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(dir, syscall.MNT_DETACH) })
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	big := strings.Repeat("y", 20000)
	var stored []string
	var werr error
	for i := 0; i < 100; i++ {
		name := fmt.Sprintf("vm%d", i)
		werr = s.PutVM(StoredVM{Name: name, TOML: big, Definition: json.RawMessage(`{}`)}, false)
		if werr != nil {
			break
		}
		stored = append(stored, name)
	}
	if werr == nil {
		t.Fatal("256 KiB tmpfs never filled")
	}
	if !errors.Is(werr, syscall.ENOSPC) {
		t.Logf("write error on a full disk: %v", werr)
	}
	if !strings.Contains(werr.Error(), "storing vm") {
		t.Errorf("error lacks context: %v", werr)
	}
	// Reads still work in the same process, and after reopening everything committed is
	// there and the file is consistent.
	if _, err := s.GetVM(stored[0]); err != nil {
		t.Fatalf("reading after ENOSPC: %v", err)
	}
	s.Close()
	s, err = Open(dir)
	if err != nil {
		t.Fatalf("reopening after ENOSPC: %v", err)
	}
	defer s.Close()
	if err := s.Check(); err != nil {
		t.Fatalf("check after ENOSPC: %v", err)
	}
	vms, err := s.ListVMs()
	if err != nil || len(vms) != len(stored) {
		t.Fatalf("after ENOSPC: %d vms (%v), want %d", len(vms), err, len(stored))
	}
}

// TestListRowsForgetsUndefined: the rows ListRows remembers are dropped with their VM.
func TestListRowsForgetsUndefined(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, name := range []string{"a", "b"} {
		if err := s.PutVM(StoredVM{Name: name, Definition: []byte(`{"vcpus":1}`)}, false); err != nil {
			t.Fatal(err)
		}
	}
	none := func(string) bool { return false }
	if rows, err := s.ListRows(none); err != nil || len(rows) != 2 {
		t.Fatalf("ListRows: %d rows, %v", len(rows), err)
	}
	if err := s.DeleteVM("a"); err != nil {
		t.Fatal(err)
	}
	rows, err := s.ListRows(none)
	if err != nil || len(rows) != 1 || rows[0].Name != "b" {
		t.Fatalf("ListRows after delete: %+v, %v", rows, err)
	}
	if n := len(s.list.vms); n != 1 {
		t.Errorf("%d VMs remembered after undefine, want 1", n)
	}
}
