package daemon

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/snpd/snpd/config"
	"github.com/snpd/snpd/daemon/api"
	"github.com/snpd/snpd/daemon/guestchan"
	"github.com/snpd/snpd/daemon/guestchan/guestchantest"
	"github.com/snpd/snpd/daemon/launch"
	"github.com/snpd/snpd/daemon/store"
)

// TestGuestSessionsFollowManager: Watch opens a session when a VM with the agent's
// serial port starts (a real child process stands in for QEMU, the fake chardev server
// for its agent.sock), maps the CID its argv carries, and drops both when it exits.
func TestGuestSessionsFollowManager(t *testing.T) {
	s, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	q := guestchantest.NewChardev(t)
	vmDir := filepath.Dir(q.Socket)
	// The two -device arguments launch.BuildArgv emits for a vsock CID and the agent port.
	argv := []string{"/bin/sleep", "-device", `{"driver":"vhost-vsock-pci","guest-cid":41,"id":"vsock0","iommu_platform":true}`,
		"-device", `{"bus":"virtio-serial0.0","chardev":"agent0","driver":"virtserialport","id":"agent0","name":"` + launch.AgentPortName + `"}`}
	start := func(ctx context.Context, vm *config.VM, h startHooks) (vmProcess, error) {
		inst, _, err := launch.StartProcess("/bin/sleep", []string{"60"}, nil, filepath.Join(vmDir, "stderr"))
		if err != nil {
			return nil, err
		}
		rec := &api.LaunchRecord{Name: vm.Name, PID: inst.PID, StartTicks: inst.StartTicks, Argv: argv, RuntimeDir: vmDir, ExpectedDigest: "ab"}
		if err := h.BeforeCont(rec); err != nil {
			inst.Kill()
			return nil, err
		}
		return instanceProc{inst}, nil
	}
	m := NewManager(ManagerOptions{Store: s, Start: start, Validate: validateDefinition, RuntimeDir: t.TempDir()})
	defer m.Close()
	if _, err := m.Define(api.DefineRequest{File: "w1.toml", TOML: vmTOML("w1", "")}, nil); err != nil {
		t.Fatal(err)
	}
	g := &guestchan.GuestSessions{Record: managerRecord(m)}
	defer g.Close()
	ctx, cancel := context.WithCancel(context.Background())
	watched := make(chan struct{})
	go func() { g.Watch(ctx, sessionFleet{m}); close(watched) }()
	defer func() { cancel(); <-watched }()
	if _, err := m.Start(context.Background(), "w1"); err != nil {
		t.Fatal(err)
	}
	guest, raw := q.Guest(t)
	r, err := guestchantest.AskRecord(t, guest, "")
	if err != nil || r.VM != "w1" || !strings.Contains(string(r.Record), `"expected_digest":"ab"`) {
		t.Fatalf("record of w1: %+v %v", r, err)
	}
	if name, ok := g.VMForCID(41); !ok || name != "w1" {
		t.Fatalf("CID 41 -> %q %v", name, ok)
	}
	if _, err := m.Kill(context.Background(), "w1"); err != nil {
		t.Fatal(err)
	}
	_ = raw.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := raw.Read(make([]byte, 1)); err == nil {
		t.Fatal("session still open after the VM exited")
	}
	if _, ok := g.VMForCID(41); ok {
		t.Fatal("CID still mapped after the VM exited")
	}
	if g.Session("w1") != nil {
		t.Fatal("session still registered after the VM exited")
	}
}
