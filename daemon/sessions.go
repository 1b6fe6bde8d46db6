package daemon

import (
	"encoding/json"
	"fmt"
	"path/filepath"

	"github.com/snpd/snpd/daemon/api"
	"github.com/snpd/snpd/daemon/launch"
)

// managerRecord adapts the Manager to GuestSessions.Record: the record of the VM's
// current run, only while it is running.
func managerRecord(m *Manager) func(string) ([]byte, error) {
	return func(name string) ([]byte, error) {
		info, err := m.Get(name)
		if err != nil {
			return nil, err
		}
		if info.Last == nil || info.Last.State != api.StateRunning || len(info.Last.Record) == 0 {
			return nil, fmt.Errorf("vm %s is not running", name)
		}
		return info.Last.Record, nil
	}
}

// sessionFleet adapts the Manager to guestchan.Fleet: the guest channel of a running VM
// is the one its launch record's argv carries (what it was launched with, not what its
// definition says now).
type sessionFleet struct{ m *Manager }

func (f sessionFleet) Subscribe(vm string) (<-chan api.Event, func()) { return f.m.Subscribe(vm) }

func (f sessionFleet) Names() ([]string, error) {
	vms, err := f.m.List()
	if err != nil {
		return nil, err
	}
	names := make([]string, len(vms))
	for i, v := range vms {
		names[i] = v.Name
	}
	return names, nil
}

func (f sessionFleet) Channel(name string) (socket string, cid uint32, ok bool) {
	info, err := f.m.Get(name)
	if err != nil || info.Last == nil || info.Last.State != api.StateRunning || len(info.Last.Record) == 0 {
		return "", 0, false
	}
	var rec api.LaunchRecord
	if err := json.Unmarshal(info.Last.Record, &rec); err != nil {
		return "", 0, false
	}
	serial, cid := launch.RecordedChannel(rec.Argv)
	if serial {
		socket = f.m.agentSocket(name, info.Last, &rec)
	}
	return socket, cid, true
}

// agentSocket is the path of the agent.sock of VM name's run (whose launch record is
// rec): in the runtime directory the run recorded, else the record's, else the default.
func (m *Manager) agentSocket(name string, run *api.Run, rec *api.LaunchRecord) string {
	dir := run.RuntimeDir
	if dir == "" {
		dir = rec.RuntimeDir
	}
	if dir == "" {
		dir = m.vmRuntimeDir(name)
	}
	return filepath.Join(dir, launch.AgentSocketName)
}
