package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strings"
	"time"

	"github.com/snpd/snpd/config"
	"github.com/snpd/snpd/daemon/api"
	"github.com/snpd/snpd/daemon/guestchan"
	"github.com/snpd/snpd/daemon/launch"
	"github.com/snpd/snpd/daemon/store"
	"github.com/snpd/snpd/systemd"
)

// Version is snpd's version, reported by GET /v1/status (set with -ldflags -X).
var Version = "dev"

// Server is snpd's API server: the route table over the Manager, served on the unix
// socket with per-connection authorization.
type Server struct {
	cfg      *config.Daemon
	mgr      *Manager
	store    *store.Store
	log      *slog.Logger
	started  time.Time
	reattach *Reattaching // the VMs found with a QEMU at start
	att      *Attestor    // attestation (daemon/attest.go); nil: routes answer unavailable
	obs      *observer    // metrics and non-state events (daemon/observe.go); nil: none
	// socket is the path of the API socket actually served: the one systemd passed when
	// socket-activated (snpd.socket's ListenStream), else cfg.Socket. "" outside Run.
	socket string
}

// contextWithoutCancel keeps r's values but not its cancellation.
func contextWithoutCancel(r *http.Request) context.Context {
	return context.WithoutCancel(r.Context())
}

func jsonLine(v any) ([]byte, error) { return json.Marshal(v) }

// gcPercent is snpd's GOGC unless the environment sets one. snpd's live heap is 1-2 MB,
// so the default 100 collects every 2-4 MB of allocation: several times a second while
// `vm list` is polled during a burst of starts. Each cycle stops the world twice, and on
// a host whose CPUs are busy with guests a stop waits for every snpd thread to get a CPU.
// At 400 the heap may reach about 5x the live heap (~10 MB) and cycles are 2.5x rarer;
// BenchmarkStart20WhileListing: `snpctl vm list` p99 22.1/21.3 -> 18.9/19.6 ms flat and
// 24.4/15.6 -> 15.7/11.7 ms deployed (two runs each, interleaved).
const gcPercent = 400

// tuneGC applies gcPercent unless GOGC is set.
func tuneGC() {
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(gcPercent)
	}
}

// Run is snpd: it opens the store, reattaches to running VMs, serves the API on the
// unix socket (or the socket systemd passed) until ctx ends, then stops serving and
// returns. Running guests are never touched on the way out. cfg must have defaults
// applied; Run validates it. Logs go to slog.Default().
func Run(ctx context.Context, cfg *config.Daemon) error {
	log := slog.Default()
	tuneGC()
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("validating config: %w", err)
	}
	operateGID, err := lookupGroup(cfg.OperateGroup)
	if err != nil {
		return err
	}
	readGID, err := lookupGroup(cfg.ReadGroup)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(cfg.RuntimeDir, 0o755); err != nil {
		return fmt.Errorf("creating runtime directory: %w", err)
	}

	// The socket first: a live snpd answering there means we must not touch its store.
	ln, activated, err := systemd.APIListener("api")
	if err != nil {
		return fmt.Errorf("using the activated socket: %w", err)
	}
	if !activated {
		// The socket's group is the read group (the wider one: operators must be in it
		// too to reach the file), else the operate group; SO_PEERCRED then decides.
		gid := readGID
		if gid < 0 {
			gid = operateGID
		}
		ln, err = listenAPI(cfg.Socket, gid)
		if err != nil {
			return err
		}
	}
	defer ln.Close()
	// The metrics listener too (when [metrics] is configured), before the store.
	obs, err := newObserver(cfg, operateGID, readGID, log)
	if err != nil {
		return err
	}
	defer obs.close()

	st, err := store.Open(cfg.StateDir)
	if err != nil {
		return err
	}
	defer st.Close()
	if st.BackupErr != nil {
		log.Warn("the backup of the last good state store was not refreshed", "err", st.BackupErr)
	}

	launcher := &launch.Launcher{QEMU: cfg.QEMU, Platform: launch.Platform(cfg.Platform), RuntimeDir: cfg.RuntimeDir}
	placer, where, closePlacer := guestCgroups(ctx, log)
	defer closePlacer()
	launcher.Placer, launcher.NoPlacer = placer, where
	policy, err := loadPolicy(cfg)
	if err != nil {
		return err
	}
	if policy == nil {
		log.Warn("running WITHOUT a host policy (run_without_policy = true): every definition and libvirt domain is accepted")
	}
	mgr := NewManager(ManagerOptions{
		Store: st, Start: obs.wrapStart(launcherStart(launcher, admission(policy, cfg.ImageDir))), Validate: validateDefinition,
		Policy: policy, Platform: cfg.Platform, Prepare: launcherPrepare(launcher),
		RuntimeDir: cfg.RuntimeDir, ImageDir: cfg.ImageDir, QEMU: cfg.QEMU, StopTimeout: time.Duration(cfg.StopTimeout), Log: log,
	})
	defer mgr.Close()
	obs.watch(mgr)
	if cfg.VMDir != "" {
		if err := importVMDir(mgr, cfg.VMDir, log); err != nil {
			return err
		}
	}
	// Orphans are killed and the VMs to adopt reserved before the API serves; the
	// adoption itself (a QMP round trip per VM) goes on while it does.
	reattach, err := mgr.Reattach(ctx)
	if err != nil {
		return fmt.Errorf("reattaching to running vms: %w", err)
	}

	s := &Server{cfg: cfg, mgr: mgr, store: st, log: log, started: time.Now().UTC(), reattach: reattach,
		socket: ln.Addr().String(), obs: obs}
	// Guest sessions: snpd's end of each VM's serial channel, and the vsock listener for
	// guest-initiated requests (fails soft on hosts without vsock).
	sessions := &guestchan.GuestSessions{Record: managerRecord(mgr), Log: log}
	defer sessions.Close()
	if s.att, err = NewAttestor(cfg, policy, attestLookup(mgr, cfg.GuestChannel, sessions)); err != nil {
		return err
	}
	s.att.Sessions, sessions.Cache = sessions, s.att.Cache
	s.att.LookupLibvirt = libvirtLookup(mgr)
	go sessions.Watch(ctx, sessionFleet{mgr})
	if vl, err := guestchan.VsockListen(cfg.GuestChannel.VsockPort); err != nil {
		logVsockListenFailure(log, cfg.GuestChannel.VsockPort, err)
	} else {
		go func() {
			if err := sessions.ServeGuests(ctx, vl); err != nil {
				log.Warn("serving guest vsock requests", "err", err)
			}
		}()
	}
	obs.attach(ctx, st, sessions, s.att, reattach)
	auth := Authorizer{OperateGID: operateGID, ReadGID: readGID}
	srv := newHTTPServer(obs.instrumentAPI(newMux(s.routes(), log)), auth, log)
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(limitConnections(ln, auth, log)) }()

	if err := waitAnswering(ctx, s.socket); err != nil {
		return err
	}
	_, pending := reattach.Results()
	log.Info("snpd ready", "socket", s.socket, "activated", activated, "platform", cfg.Platform, "pid", os.Getpid(), "reattaching", pending)
	go func() {
		select {
		case <-reattach.Done():
			res, _ := reattach.Results()
			log.Info("reattach done", "vms", len(res))
		case <-ctx.Done():
		}
	}()
	if err := systemd.Ready(statusLine(mgr)); err != nil {
		log.Warn("notifying systemd", "err", err)
	}
	go func() {
		err := systemd.WatchdogLoopFunc(ctx, func(context.Context) error {
			_, err := st.ListVMs()
			return err
		})
		if err != nil {
			log.Warn("systemd watchdog", "err", err)
		}
	}()
	go func() {
		events, cancel := mgr.Subscribe("")
		defer cancel()
		for range events {
			if err := systemd.Status("%s", statusLine(mgr)); err != nil {
				log.Debug("notifying systemd", "err", err)
			}
		}
	}()

	select {
	case <-ctx.Done():
	case err := <-serveErr:
		return fmt.Errorf("serving the API: %w", err)
	}
	log.Info("snpd stopping; guests keep running")
	_ = systemd.Stopping()
	mgr.Close() // ends event streams
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
	}
	return nil
}

// guestCgroups decides where guests' QEMUs run, and says it once in the log: under
// systemd, a scope each in machine.slice (registered with systemd-machined when it
// runs); else, when snpd's cgroup v2 is delegated to it, a cgroup each under it; else in
// snpd's own cgroup, their limits not applied (where then says why, for the records).
func guestCgroups(ctx context.Context, log *slog.Logger) (p launch.Placer, where string, closeFn func()) {
	m, err := systemd.DetectMachines(ctx)
	if err == nil {
		if m.Registered() {
			log.Info("guests run in scopes of their own in machine.slice, registered with systemd-machined")
		} else {
			log.Info("guests run in scopes of their own in machine.slice (systemd-machined is not running: install systemd-container to register them)")
		}
		return machinePlacer{m}, "", m.Close
	}
	if !errors.Is(err, systemd.ErrNoSystemd) {
		log.Warn("systemd is the init system but does not answer on the system bus", "err", err)
	}
	reason := err.Error()
	c, cerr := launch.NewCgroupPlacer("")
	if cerr == nil {
		log.Info("guests run in cgroups of their own under snpd's delegated cgroup", "cgroup", c.Dir)
		return c, "", func() {}
	}
	reason = "no cgroup of its own (" + reason + "; " + cerr.Error() + "): cpu_weight, memory_max_mib and tasks_max are not applied"
	log.Warn("guests run in snpd's own cgroup", "why", reason)
	return nil, reason, func() {}
}

// machinePlacer adapts systemd.Machines to launch.Placer.
type machinePlacer struct{ m *systemd.Machines }

func (p machinePlacer) Place(ctx context.Context, name string, pid int, lim launch.Limits) (string, error) {
	return p.m.Place(ctx, name, pid, lim.CPUWeight, lim.MemoryMax, lim.TasksMax)
}

// waitAnswering returns once the API socket accepts connections (READY=1 must mean it).
func waitAnswering(ctx context.Context, path string) error {
	for i := 0; ; i++ {
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if i > 50 || ctx.Err() != nil {
			return fmt.Errorf("checking the API answers on %s: %w", path, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// statusLine is systemd's STATUS=: VM counts by state.
func statusLine(m *Manager) string {
	c, err := m.Counts()
	if err != nil {
		return "store error: " + err.Error()
	}
	total := 0
	var parts []string
	for st, n := range c {
		total += n
		parts = append(parts, fmt.Sprintf("%d %s", n, st))
	}
	sort.Strings(parts)
	if total == 0 {
		return "no vms defined"
	}
	return fmt.Sprintf("%d vms: %s", total, strings.Join(parts, ", "))
}

// importVMDir defines every *.toml in dir not yet in the store. A bad file is an error:
// snpd refuses to start on a configuration it cannot honour.
func importVMDir(m *Manager, dir string, log *slog.Logger) error {
	files, err := filepath.Glob(filepath.Join(dir, "*.toml"))
	if err != nil {
		return fmt.Errorf("listing vm_dir: %w", err)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return fmt.Errorf("reading vm definition: %w", err)
		}
		_, err = m.Define(api.DefineRequest{File: f, TOML: string(b)}, nil)
		if errors.Is(err, api.ErrConflict) {
			continue
		}
		if err != nil {
			return fmt.Errorf("importing %s: %w", f, err)
		}
		log.Info("imported vm definition", "file", f)
	}
	return nil
}
