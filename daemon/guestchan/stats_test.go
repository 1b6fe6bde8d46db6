package guestchan

import (
	"os"
	"testing"
	"time"

	"github.com/snpd/snpd/daemon/guestchan/guestchantest"
)

// TestGuestSessionCounts: a session counts as kept from StartSerial to Stop, and as
// connected only while it holds a connection to the guest side.
func TestGuestSessionCounts(t *testing.T) {
	g := &GuestSessions{Record: sessionRecords}
	defer g.Close()
	if kept, conn := g.Counts(); kept != 0 || conn != 0 {
		t.Fatalf("no sessions: %d kept, %d connected", kept, conn)
	}
	q1, q2 := guestchantest.NewChardev(t), guestchantest.NewChardev(t)
	g.StartSerial("vm1", q1.Socket)
	g.StartSerial("vm2", q2.Socket)
	waitCounts := func(kept, connected int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			k, c := g.Counts()
			if k == kept && c == connected {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("counts %d kept, %d connected; want %d, %d", k, c, kept, connected)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitCounts(2, 2) // the fake chardevs accept both sessions' dials
	// vm2's guest side goes away and cannot be dialled again: kept, not connected.
	raw := q2.Raw(t)
	if err := os.Remove(q2.Socket); err != nil {
		t.Fatal(err)
	}
	raw.Close()
	waitCounts(2, 1)
	g.Stop("vm1")
	waitCounts(1, 0)
	g.Stop("vm2")
	waitCounts(0, 0)
}
