package api

import (
	"encoding/json"
	"fmt"
	"time"
)

// DefaultSocket is where snpd listens unless configured otherwise and where snpctl looks
// when neither --socket nor SNPD_SOCKET is given.
const DefaultSocket = "/run/snpd/snpd.sock"

// MaxBodySize bounds every request body the server reads (2 MiB: a VM definition is at
// most 1 MiB of TOML, JSON-quoted).
const MaxBodySize = 2 << 20

// State is a VM's lifecycle state.
type State string

// VM states. A VM that was never started, or whose last run ended cleanly, is stopped.
const (
	StateStopped  State = "stopped"
	StateStarting State = "starting" // QEMU started paused, not yet resumed
	StateRunning  State = "running"
	StateStopping State = "stopping"
	StateCrashed  State = "crashed" // QEMU died without being asked to
	StateFailed   State = "failed"  // the start failed, or a half-started QEMU was killed
)

// Terminal reports whether s means no QEMU process belongs to the VM.
func (s State) Terminal() bool {
	return s == StateStopped || s == StateCrashed || s == StateFailed
}

// ValidName checks a VM name: 1..63 characters of [A-Za-z0-9._-], not starting with '.'
// or '-' (so it can never be a path separator, a relative path or a shell word).
func ValidName(name string) error {
	if name == "" || len(name) > 63 {
		return fmt.Errorf("vm name %q: must be 1 to 63 characters: %w", name, ErrInvalid)
	}
	if name[0] == '.' || name[0] == '-' {
		return fmt.Errorf("vm name %q: must not start with '.' or '-': %w", name, ErrInvalid)
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("vm name %q: character %q not allowed (only A-Z a-z 0-9 . _ -): %w", name, c, ErrInvalid)
		}
	}
	return nil
}

// DefineRequest is the body of POST /v1/vms: the VM definition as TOML text, decoded
// strictly by the server (errors carry File and line numbers).
type DefineRequest struct {
	// File names the definition in error messages (usually the path snpctl read).
	File string `json:"file,omitempty"`
	// TOML is the definition text (at most 1 MiB).
	TOML string `json:"toml"`
	// Dir is the absolute directory relative paths in the definition are resolved
	// against (snpctl sends the file's directory); empty: relative paths are errors.
	Dir string `json:"dir,omitempty"`
	// Replace allows redefining a VM that exists and is not running.
	Replace bool `json:"replace,omitempty"`
}

// VMSummary is one row of GET /v1/vms.
type VMSummary struct {
	Name  string `json:"name"`
	State State  `json:"state"`
	// PID of QEMU while a process belongs to the VM, else 0.
	PID int `json:"pid,omitempty"`
	// Since is when State was entered.
	Since time.Time `json:"since"`
	// Starts counts launches since the VM was defined.
	Starts int `json:"starts"`
	// Restart is the restart policy: "never" or "on-crash".
	Restart string `json:"restart,omitempty"`
	// VCPUs and MemoryMiB (MiB) from the definition.
	VCPUs     int    `json:"vcpus"`
	MemoryMiB uint64 `json:"memory_mib"`
}

// ListResponse is the body of GET /v1/vms.
type ListResponse struct {
	VMs []VMSummary `json:"vms"`
}

// Transition is one state change with its time.
type Transition struct {
	State  State     `json:"state"`
	At     time.Time `json:"at"`
	Reason string    `json:"reason,omitempty"`
}

// ExitStatus is how a QEMU process ended.
type ExitStatus struct {
	// Known is false when the status could not be observed (the process was not snpd's
	// child, e.g. after snpd restarted); Code and Signal are then empty.
	Known bool `json:"known"`
	// Code is the exit code when QEMU exited normally (nil otherwise).
	Code *int `json:"code,omitempty"`
	// Signal names the signal that killed QEMU ("SIGKILL"), if any.
	Signal string `json:"signal,omitempty"`
	// Detail says how the status was determined or why it is unknown.
	Detail string `json:"detail,omitempty"`
}

func (e *ExitStatus) String() string {
	switch {
	case e == nil:
		return "-"
	case !e.Known:
		return "unknown (" + e.Detail + ")"
	case e.Signal != "":
		return "killed by " + e.Signal
	case e.Code != nil:
		return fmt.Sprintf("exit code %d", *e.Code)
	}
	return "-"
}

// Run is one start of a VM: the launch record plus what happened to the process.
type Run struct {
	// Seq numbers runs of a VM from 1.
	Seq int `json:"seq"`
	// PID of QEMU (0 if it never started) and its start time in clock ticks since boot
	// (/proc/PID/stat field 22), which identifies the process across pid reuse.
	PID            int    `json:"pid,omitempty"`
	ProcStartTicks uint64 `json:"proc_start_ticks,omitempty"`
	// QEMU is the executable path QEMU was started from; Exe what the process runs
	// (LaunchRecord.QEMUExe), which reattach checks.
	QEMU string `json:"qemu,omitempty"`
	Exe  string `json:"exe,omitempty"`
	// RuntimeDir is the per-VM runtime directory (qmp.sock, console.log).
	RuntimeDir string `json:"runtime_dir,omitempty"`
	// State is the run's current state; Transitions every state with its time.
	State       State        `json:"state"`
	Transitions []Transition `json:"transitions"`
	// StopBy is when QEMU is killed if the guest has not powered off: set when a
	// graceful stop begins, so that a stop interrupted by an snpd restart is finished by
	// the next snpd on the same clock.
	StopBy *time.Time `json:"stop_by,omitempty"`
	// Exit is set once the process ended (nil while it runs).
	Exit *ExitStatus `json:"exit,omitempty"`
	// Error is why the start failed, if it did.
	Error string `json:"error,omitempty"`
	// Record is the launch record (expected digest, component digests, argv, QEMU
	// version...) as the launcher produced it; nil if the start failed before.
	Record json.RawMessage `json:"record,omitempty"`
}

// VMInfo is the body of GET /v1/vms/{name}.
type VMInfo struct {
	VMSummary
	// DefinedAt is when the current definition was stored.
	DefinedAt time.Time `json:"defined_at"`
	// TOML is the definition text as defined; Definition its decoded form.
	TOML       string          `json:"toml"`
	Definition json.RawMessage `json:"definition"`
	// Last is the most recent run (nil if never started).
	Last *Run `json:"last,omitempty"`
}

// StopRequest is the body of POST /v1/vms/{name}/stop.
type StopRequest struct {
	// TimeoutSeconds bounds the graceful power-off before QEMU is killed; 0 uses the
	// daemon's stop_timeout.
	TimeoutSeconds float64 `json:"timeout_seconds,omitempty"`
}

// Event kinds on GET /v1/events: Event.Kind, and the server-sent event's "event:" name.
const (
	// EventState is a VM's state change: State, PID, Reason.
	EventState = "state"
	// EventPolicy is the host policy refusing a VM or libvirt domain: Point,
	// Violations, Reason.
	EventPolicy = "policy"
	// EventAttestation is a report checked against a VM's launch record: Source, OK,
	// Failed.
	EventAttestation = "attestation"
)

// EventKinds lists every event kind.
var EventKinds = []string{EventState, EventPolicy, EventAttestation}

// Event is one event on GET /v1/events (server-sent events, one JSON per "data:" line).
// State changes were the only kind before Kind existed, and their JSON is unchanged
// apart from "kind"; a client that knows only state events can ask for them alone
// (?kind=state) or skip events whose Kind is not EventState.
type Event struct {
	// Seq increases by one per event since snpd started.
	Seq uint64 `json:"seq"`
	// Kind is EventState, EventPolicy or EventAttestation ("" means EventState).
	Kind string `json:"kind,omitempty"`
	// VM names the VM (or libvirt domain) the event is about.
	VM string `json:"vm"`
	// State is the state entered (state events).
	State State     `json:"state,omitempty"`
	At    time.Time `json:"at"`
	// PID is QEMU's process id (state events; 0 when none).
	PID int `json:"pid,omitempty"`
	// Reason says why, in one line (state and policy events).
	Reason string `json:"reason,omitempty"`
	// Point is where the policy refused (policy events): "definition" (vm start),
	// "libvirt_hook" or "runtime" (the paused QEMU differed from the spec).
	Point string `json:"point,omitempty"`
	// Violations are the broken rules, in the policy's order (policy events).
	Violations []Violation `json:"violations,omitempty"`
	// Source is how the report came (attestation events): "attest" (snpd challenged
	// the guest) or "verify" (POST /v1/verify).
	Source string `json:"source,omitempty"`
	// OK is the verdict: true only when every check passed (attestation events).
	OK *bool `json:"ok,omitempty"`
	// Failed names the checks that failed (attestation events).
	Failed []string `json:"failed,omitempty"`
}

// KindName is e's kind, EventState when Kind is empty.
func (e *Event) KindName() string {
	if e.Kind == "" {
		return EventState
	}
	return e.Kind
}

// Status is the body of GET /v1/status.
type Status struct {
	Version   string    `json:"version"`
	Platform  string    `json:"platform"`
	PID       int       `json:"pid"`
	StartedAt time.Time `json:"started_at"`
	StateDir  string    `json:"state_dir"`
	// Socket is the path of the API socket snpd serves: the socket systemd passed when
	// socket-activated (snpd.socket), else the configured one.
	Socket string `json:"socket"`
	QEMU   string `json:"qemu"`
	// Policy is the host policy file every definition, launch and libvirt domain is
	// checked against; empty when snpd runs without one (RunWithoutPolicy).
	Policy string `json:"policy"`
	// RunWithoutPolicy is true when the configuration says run_without_policy = true:
	// every definition and libvirt domain is accepted.
	RunWithoutPolicy bool          `json:"run_without_policy,omitempty"`
	VMs              map[State]int `json:"vms"`
	// Reattached lists what happened to each VM found running at start (and to each
	// orphan QEMU killed then); Reattaching counts the VMs whose adoption is still going
	// on (it runs while snpd serves; such a VM answers 409 to start, stop and kill).
	Reattached  []ReattachResult `json:"reattached,omitempty"`
	Reattaching int              `json:"reattaching,omitempty"`
}

// ReattachResult is what snpd did with one VM recorded as running when it started.
type ReattachResult struct {
	VM     string `json:"vm"`
	PID    int    `json:"pid"`
	State  State  `json:"state"`
	Detail string `json:"detail"`
}

// Caller is who asked for something, as the kernel reported it for the API connection
// (SO_PEERCRED, SO_PEERGROUPS): uid, primary gid and supplementary groups.
type Caller struct {
	UID    int   `json:"uid"`
	GID    int   `json:"gid"`
	Groups []int `json:"groups,omitempty"`
}
