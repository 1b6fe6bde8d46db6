package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/snpd/snpd/daemon/api"
)

func TestPrintEventLines(t *testing.T) {
	at := time.Date(2026, 12, 3, 19, 1, 20, 123000000, time.UTC)
	yes, no := true, false
	for _, c := range []struct {
		ev   api.Event
		want string
	}{
		{api.Event{Seq: 1, VM: "web", State: api.StateRunning, At: at, PID: 42},
			"2026-12-03T19:01:20.123Z web state running pid=42\n"},
		{api.Event{Seq: 2, Kind: api.EventState, VM: "web", State: api.StateCrashed, At: at, PID: 42, Reason: "qemu exited\nunexpectedly"},
			"2026-12-03T19:01:20.123Z web state crashed pid=42: qemu exited; unexpectedly\n"},
		{api.Event{Seq: 3, Kind: api.EventPolicy, VM: "dbg", At: at, Point: "definition", Violations: []api.Violation{
			{Rule: "snp.forbid_debug", Message: "policy 0xb0000 has debug set (bit 19)"}, {Rule: "vcpu.models"}}},
			"2026-12-03T19:01:20.123Z dbg policy refused at definition: snp.forbid_debug (policy 0xb0000 has debug set (bit 19)); vcpu.models\n"},
		{api.Event{Seq: 4, Kind: api.EventAttestation, VM: "web", At: at, Source: "attest", OK: &yes},
			"2026-12-03T19:01:20.123Z web attestation attest ok\n"},
		{api.Event{Seq: 5, Kind: api.EventAttestation, VM: "web", At: at, Source: "verify", OK: &no, Failed: []string{"measurement", "report-data"}},
			"2026-12-03T19:01:20.123Z web attestation verify failed: measurement, report-data\n"},
	} {
		var b bytes.Buffer
		if err := printEvent(&b, c.ev, false); err != nil {
			t.Fatal(err)
		}
		if b.String() != c.want {
			t.Errorf("event %d:\n got %q\nwant %q", c.ev.Seq, b.String(), c.want)
		}
		b.Reset()
		if err := printEvent(&b, c.ev, true); err != nil {
			t.Fatal(err)
		}
		var back api.Event
		dec := json.NewDecoder(&b)
		dec.DisallowUnknownFields()
		if err := dec.Decode(&back); err != nil || back.Seq != c.ev.Seq || back.Kind != c.ev.KindName() || strings.Count(b.String(), "\n") != 0 {
			t.Errorf("event %d as JSON: %v %+v (rest %q)", c.ev.Seq, err, back, b.String())
		}
	}
}

// eventsProc is a running `snpctl events`.
type eventsProc struct {
	cmd    *exec.Cmd
	mu     sync.Mutex
	lines  []string
	stderr bytes.Buffer
	done   chan error
}

func startEvents(t *testing.T, bin, socket string, args ...string) *eventsProc {
	t.Helper()
	p := &eventsProc{cmd: exec.Command(bin, append([]string{"--socket", socket, "events"}, args...)...), done: make(chan error, 1)}
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.cmd.Process.Kill() })
	connected := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		first := true
		for sc.Scan() {
			p.mu.Lock()
			p.stderr.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
			if first {
				connected <- sc.Text()
				first = false
			}
		}
		close(connected)
	}()
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, sc.Text())
			p.mu.Unlock()
		}
		p.done <- p.cmd.Wait()
	}()
	select {
	case l := <-connected:
		if !strings.HasPrefix(l, "following snpd events on "+socket) {
			t.Fatalf("snpctl events %q: first stderr line %q", args, l)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("snpctl events %q did not connect", args)
	}
	return p
}

// waitLines waits until p printed n lines and returns them.
func (p *eventsProc) waitLines(t *testing.T, n int) []string {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		p.mu.Lock()
		l := append([]string(nil), p.lines...)
		p.mu.Unlock()
		if len(l) >= n {
			return l
		}
		if time.Now().After(deadline) {
			t.Fatalf("snpctl events printed %d lines, want %d: %q", len(l), n, l)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// wait returns the exit status once p ended.
func (p *eventsProc) wait(t *testing.T) (int, string) {
	t.Helper()
	select {
	case err := <-p.done:
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond) // the stderr reader's last line
		p.mu.Lock()
		defer p.mu.Unlock()
		return code, p.stderr.String()
	case <-time.After(30 * time.Second):
		t.Fatal("snpctl events did not end")
	}
	return 0, ""
}

// TestEventsCommandFollowsAndEnds runs the shipped (lean) snpctl's events command
// against snpd: a policy refusal at vm start and at the libvirt hook reach a follower
// in lines and in JSON, a --vm/--kind follower sees only its events, Ctrl-C ends one
// cleanly (exit 0), and snpd stopping ends the other with a line saying so (exit 1).
// No guest boots: the refused start stops before QEMU runs.
func TestEventsCommandFollowsAndEnds(t *testing.T) {
	for _, p := range []string{"/usr/bin/qemu-system-x86_64", "/usr/share/ovmf/OVMF.fd"} {
		if _, err := os.Stat(p); err != nil {
			t.Skipf("%s is missing (run scripts/install-deps.sh): %v", p, err)
		}
	}
	dir, err := os.MkdirTemp("", "snpctl-ev-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	bin := filepath.Join(dir, "bin")
	goBuild(t, filepath.Join(bin, "snpd"), "../snpd")
	goBuild(t, filepath.Join(bin, "snpctl"), ".")
	policy := "[firmware]\nallow_any = true\n[snp]\nforbid = [\"debug\"]\n[vcpu]\nmodels = [\"EPYC-v4\"]\n[memory]\nmax_mib = 1024\n"
	cfg := "platform = \"none\"\npolicy_file = \"policy.toml\"\nstop_timeout = \"2s\"\n"
	for name, text := range map[string]string{"policy.toml": policy, "snpd.toml": cfg} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	run := filepath.Join(dir, "run")
	socket := filepath.Join(run, "snpd.sock")
	var dout bytes.Buffer
	d := exec.Command(filepath.Join(bin, "snpd"), "--config", filepath.Join(dir, "snpd.toml"), "--state-dir", filepath.Join(dir, "state"), "--runtime-dir", run)
	d.Stdout, d.Stderr = &dout, &dout
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = d.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = d.Process.Signal(syscall.SIGTERM)
		<-exited
		if t.Failed() {
			t.Logf("snpd output:\n%s", dout.String())
		}
	})
	c := api.NewClient(socket)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := c.Status(ctx); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("snpd did not answer: %v", err)
		}
	}
	snpctl := filepath.Join(bin, "snpctl")
	lines := startEvents(t, snpctl, socket)
	jsonl := startEvents(t, snpctl, socket, "--json")
	policyOnly := startEvents(t, snpctl, socket, "--vm", "dbg", "--kind", "policy")

	def := "name = \"dbg\"\nvcpus = 1\nmemory_mib = 64\nfirmware = \"/usr/share/ovmf/OVMF.fd\"\n[snp]\npolicy = 0xb0000\n"
	if _, err := c.Define(ctx, api.DefineRequest{File: "dbg.toml", TOML: def}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Start(ctx, "dbg"); !errors.Is(err, api.ErrPolicy) {
		t.Fatalf("starting dbg: %v, want a policy refusal", err)
	}
	domain := `<domain type='kvm'><name>lvbad</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='q35'>hvm</type><loader type='rom'>/usr/share/ovmf/OVMF.fd</loader></os>
<cpu mode='custom'><model fallback='forbid'>qemu64</model></cpu></domain>`
	if err := c.Do(ctx, "POST", api.LibvirtDomainsPath, api.LibvirtDomainRequest{Name: "lvbad", XML: domain}, nil); !errors.Is(err, api.ErrPolicy) {
		t.Fatalf("registering lvbad: %v, want a policy refusal", err)
	}

	got := lines.waitLines(t, 4)
	want := []string{
		" dbg state starting",
		" dbg policy refused at definition: snp.forbid_debug (policy 0xb0000 has debug set (bit 19))",
		" dbg state failed: start failed",
		" lvbad policy refused at libvirt_hook: vcpu.models (",
	}
	for i, w := range want {
		if i >= len(got) || !strings.Contains(got[i], w) {
			t.Errorf("line %d: %q, want it to contain %q", i+1, got, w)
			continue
		}
		if _, err := time.Parse(time.RFC3339Nano, strings.Fields(got[i])[0]); err != nil {
			t.Errorf("line %d does not start with an RFC 3339 time: %q", i+1, got[i])
		}
	}
	var kinds []string
	for _, l := range jsonl.waitLines(t, 4) {
		var ev api.Event
		if err := json.Unmarshal([]byte(l), &ev); err != nil {
			t.Fatalf("--json line %q: %v", l, err)
		}
		kinds = append(kinds, fmt.Sprintf("%s:%s:%s", ev.VM, ev.Kind, ev.State))
	}
	if strings.Join(kinds, " ") != "dbg:state:starting dbg:policy: dbg:state:failed lvbad:policy:" {
		t.Errorf("--json kinds %q", kinds)
	}
	if l := policyOnly.waitLines(t, 1); len(l) != 1 || !strings.Contains(l[0], " dbg policy refused at definition") {
		t.Errorf("--vm dbg --kind policy printed %q", l)
	}

	// Ctrl-C: a clean end.
	_ = lines.cmd.Process.Signal(os.Interrupt)
	if code, stderr := lines.wait(t); code != 0 || strings.Contains(stderr, "Error") {
		t.Errorf("after Ctrl-C: exit %d, stderr %q", code, stderr)
	}
	// snpd stops: the followers say so and fail.
	_ = d.Process.Signal(syscall.SIGTERM)
	<-exited
	for _, p := range []*eventsProc{jsonl, policyOnly} {
		code, stderr := p.wait(t)
		if code != 1 || !strings.Contains(stderr, "Error: snpd ended the event stream") || strings.Count(stderr, "Error") != 1 {
			t.Errorf("after snpd stopped: exit %d, stderr %q", code, stderr)
		}
	}
	// And without snpd, one line with the hint.
	out, err := exec.Command(snpctl, "--socket", socket, "events").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "snpd is not running") || strings.Count(strings.TrimSpace(string(out)), "\n") != 0 {
		t.Errorf("events without snpd: %v %q", err, out)
	}
}
