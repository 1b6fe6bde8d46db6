package systemd

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"

	sddbus "github.com/coreos/go-systemd/v22/dbus"
	"github.com/coreos/go-systemd/v22/machine1"
	"github.com/coreos/go-systemd/v22/unit"
	"github.com/godbus/dbus/v5"
)

// Machines puts each guest's QEMU in a transient scope of its own in machine.slice,
// registered with systemd-machined as a machine of class "vm" and service "snpd", as
// libvirt does: `machinectl list`, `systemctl status` and `systemd-cgls` show and
// control the guests, their limits are the scope's CPUWeight=, MemoryMax= and
// TasksMax=, and the guests live outside snpd.service's cgroup, so the unit's default
// KillMode never reaches them. Without machined (systemd-container not installed) the
// scope is created directly with systemd's StartTransientUnit. It implements
// launch.Placer (package daemon wires it; see DetectPlacer there). Safe for concurrent
// use.
type Machines struct {
	mu      sync.Mutex
	machine *machine1.Conn // nil: no machined, use systemd
	manager *sddbus.Conn
}

// Booted tells whether systemd is the init system (sd_booted: /run/systemd/system).
func Booted() bool {
	st, err := os.Stat("/run/systemd/system")
	return err == nil && st.IsDir()
}

// NewMachines connects to systemd-machined, or else to systemd's manager, on the system
// bus. It fails when neither answers (snpd then runs guests in its own cgroup).
func NewMachines(ctx context.Context) (*Machines, error) {
	if mc, err := machine1.New(); err == nil {
		if _, err := mc.ListMachines(); err == nil {
			return &Machines{machine: mc}, nil
		}
		mc.Close()
	}
	return newManagerOnly(ctx)
}

// newManagerOnly connects to systemd's manager only (scopes without machined).
func newManagerOnly(ctx context.Context) (*Machines, error) {
	// NewSystemConnectionContext closes the connection when its context ends, so the
	// connection gets a context of its own.
	c, err := sddbus.NewSystemConnectionContext(context.WithoutCancel(ctx))
	if err != nil {
		return nil, fmt.Errorf("connecting to systemd on the system bus: %w", err)
	}
	if _, err := c.GetManagerProperty("Version"); err != nil {
		c.Close()
		return nil, fmt.Errorf("asking systemd for its version: %w", err)
	}
	return &Machines{manager: c}, nil
}

// Registered tells whether guests are registered with systemd-machined (else they get
// plain scopes).
func (m *Machines) Registered() bool { return m.machine != nil }

// Close closes the bus connections. Machines and scopes stay: they outlive it.
func (m *Machines) Close() {
	if m.machine != nil {
		m.machine.Close()
	}
	if m.manager != nil {
		m.manager.Close()
	}
}

// MachineName is the machine name of VM name: "snpd-<name>" where that is a host name
// machined accepts (at most 64 characters of labels of letters, digits and '-', none
// empty or starting or ending with '-'), else "snpd-" and 16 hex digits of the name's
// SHA-256 (VM names may hold '_', which host names may not).
func MachineName(vm string) string {
	n := "snpd-" + vm
	if validHostname(n) {
		return n
	}
	sum := sha256.Sum256([]byte(vm))
	return "snpd-" + hex.EncodeToString(sum[:8])
}

func validHostname(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, l := range strings.Split(s, ".") {
		if l == "" || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for _, c := range l {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// ScopeName is the unit of VM name's scope when machined is absent.
func ScopeName(vm string) string { return "snpd-vm-" + unit.UnitNameEscape(vm) + ".scope" }

// Place creates VM name's scope with QEMU process pid (all its threads move) and the
// limits (zero: not set), and returns the scope's unit name. With machined the machine
// is MachineName(name), its scope machined's "machine-<name>.scope".
func (m *Machines) Place(ctx context.Context, name string, pid int, cpuWeight, memoryMax, tasksMax uint64) (string, error) {
	props := []sddbus.Property{{Name: "Description", Value: dbus.MakeVariant("snpd guest " + name)}}
	for _, p := range []struct {
		name string
		v    uint64
	}{{"CPUWeight", cpuWeight}, {"MemoryMax", memoryMax}, {"TasksMax", tasksMax}} {
		if p.v != 0 {
			props = append(props, sddbus.Property{Name: p.name, Value: dbus.MakeVariant(p.v)})
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	type result struct {
		unit string
		err  error
	}
	done := make(chan result, 1)
	go func() {
		if m.machine != nil {
			mn := MachineName(name)
			// No After=snpd.service: machined answers only once the scope started, and a
			// scope ordered after snpd.service waits for it while snpd is still starting.
			if err := m.machine.CreateMachine(mn, nil, "snpd", "vm", pid, "", props); err != nil {
				done <- result{err: fmt.Errorf("creating machine %s: %w", mn, err)}
				return
			}
			d, err := m.machine.DescribeMachine(mn)
			u, _ := d["Unit"].(string)
			if err != nil || u == "" {
				u = "machine-" + unit.UnitNameEscape(mn) + ".scope"
			}
			done <- result{unit: u}
			return
		}
		u := ScopeName(name)
		props = append(props,
			sddbus.Property{Name: "Slice", Value: dbus.MakeVariant("machine.slice")},
			sddbus.Property{Name: "Delegate", Value: dbus.MakeVariant(true)},
			sddbus.Property{Name: "CollectMode", Value: dbus.MakeVariant("inactive-or-failed")},
			sddbus.PropPids(uint32(pid)))
		ch := make(chan string, 1)
		if _, err := m.manager.StartTransientUnitContext(context.WithoutCancel(ctx), u, "fail", props, ch); err != nil {
			done <- result{err: fmt.Errorf("creating scope %s: %w", u, err)}
			return
		}
		if r := <-ch; r != "done" {
			done <- result{err: fmt.Errorf("creating scope %s: job %s", u, r)}
			return
		}
		done <- result{unit: u}
	}()
	select {
	case r := <-done:
		return r.unit, r.err
	case <-ctx.Done():
		return "", fmt.Errorf("placing qemu %d in its scope: %w", pid, ctx.Err())
	}
}

// ErrNoSystemd is returned by DetectMachines when systemd is not the init system.
var ErrNoSystemd = errors.New("systemd is not the init system")

// DetectMachines returns Machines when systemd is the init system and answers.
func DetectMachines(ctx context.Context) (*Machines, error) {
	if !Booted() {
		return nil, ErrNoSystemd
	}
	return NewMachines(ctx)
}
