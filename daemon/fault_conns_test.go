package daemon

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/snpd/snpd/daemon/api"
	"github.com/snpd/snpd/daemon/store"
)

// hogSlots is how many connections hogMain tries to hold at once.
const hogSlots = 300

// hogMain runs in a re-executed test binary (SNPD_TEST_HOG=socket), as a hostile user
// would: it tries to hold hogSlots connections to snpd, a third idle after one request
// (keep-alive), a third sending a chunked body a byte at a time, a third sending headers
// a line at a time, and dials again whenever snpd closes one. Every 200 ms it prints
// "open N dials D answered503 R": connections currently open, dials so far, and how many
// were answered 503 (refused beyond the bounds).
func hogMain(socket string) {
	var open, dials, refused atomic.Int64
	hold := func(c net.Conn, mode int) {
		closed := make(chan struct{})
		go func() {
			defer close(closed)
			b, _ := io.ReadAll(io.LimitReader(c, 1<<20))
			if bytes.HasPrefix(b, []byte("HTTP/1.1 503")) {
				refused.Add(1)
			}
		}()
		switch mode {
		case 0:
			fmt.Fprint(c, "GET /v1/status HTTP/1.1\r\nHost: snpd\r\n\r\n")
		case 1:
			fmt.Fprint(c, "POST /v1/verify HTTP/1.1\r\nHost: snpd\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
		case 2:
			fmt.Fprint(c, "GET /v1/status HTTP/1.1\r\n")
		}
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-closed:
				return
			case <-tick.C:
			}
			switch mode {
			case 1:
				_, _ = fmt.Fprint(c, "1\r\n \r\n")
			case 2:
				_, _ = fmt.Fprint(c, "X-Slow: 1\r\n")
			}
		}
	}
	for i := range hogSlots {
		go func() {
			for {
				dials.Add(1)
				c, err := net.Dial("unix", socket)
				if err != nil {
					time.Sleep(100 * time.Millisecond)
					continue
				}
				open.Add(1)
				hold(c, i%3)
				open.Add(-1)
				c.Close()
				time.Sleep(500 * time.Millisecond) // a flood of dials is not what this tests
			}
		}()
	}
	for {
		time.Sleep(200 * time.Millisecond)
		fmt.Printf("open %d dials %d answered503 %d\n", open.Load(), dials.Load(), refused.Load())
	}
}

var (
	worldBinOnce sync.Once
	worldBin     string
	worldBinErr  error
)

// worldTestBinary returns a copy of this test binary that other uids may execute (go
// test builds it in a directory only its user can enter).
func worldTestBinary(t *testing.T) string {
	t.Helper()
	worldBinOnce.Do(func() {
		dir, err := os.MkdirTemp("", "snpd-testbin-")
		if err != nil {
			worldBinErr = err
			return
		}
		os.Chmod(dir, 0o755)
		b, err := os.ReadFile(os.Args[0])
		if err != nil {
			worldBinErr = err
			return
		}
		worldBin = dir + "/daemon.test"
		worldBinErr = os.WriteFile(worldBin, b, 0o755)
	})
	if worldBinErr != nil {
		t.Fatalf("copying the test binary: %v", worldBinErr)
	}
	return worldBin
}

// fdCount counts pid's open file descriptors.
func fdCount(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestSlowClientsDoNotStarveOperators: a read-role user (not root) tries to hold 300
// connections to the real snpd, whose descriptor limit is 200, with idle keep-alives,
// never-ending bodies and never-ending headers, redialing whatever snpd closes, as the
// ~20,000-connection attack did against the default limit. snpd holds at most
// DefaultConnLimits.PerUID of them (its descriptors stay bounded), answers the rest 503,
// and meanwhile answers root's status and kill, an operate-group user's snpctl status,
// and another read-role user's, each within 2 s.
func TestSlowClientsDoNotStarveOperators(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("running clients as other uids needs root")
	}
	bin := buildSnpctl(t)
	e := newTestEnv(t, "")
	d := startDaemon(t, e)
	mustDefine(t, d.Client, "vm1", "")
	pid := d.cmd.Process.Pid
	base := fdCount(t, pid)
	// The attack exhausted snpd's descriptors; at this test's scale a limit of 200 plays
	// that part: 300 connections held would leave none for root.
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: 200, Max: 200}, nil); err != nil {
		t.Fatalf("lowering snpd's descriptor limit: %v", err)
	}

	hog := exec.Command(worldTestBinary(t), "-test.run=^$")
	hog.Env = append(os.Environ(), "SNPD_TEST_HOG="+e.Socket)
	hog.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: testUID, Gid: testReadGID, Groups: []uint32{testReadGID}}}
	out, err := hog.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := hog.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = hog.Process.Kill(); _ = hog.Wait() })
	var mu sync.Mutex
	var last string
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			mu.Lock()
			last = sc.Text()
			mu.Unlock()
		}
	}()
	hogStats := func() (open, dials, refused int) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Sscanf(last, "open %d dials %d answered503 %d", &open, &dials, &refused)
		return
	}
	waitFor(t, "the hog to be refused", 20*time.Second, func() (bool, error) {
		_, dials, refused := hogStats()
		return dials >= hogSlots && refused > 0, nil
	})

	maxFDs, maxLatency := 0, time.Duration(0)
	timed := func(what string, f func(ctx context.Context) error) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		began := time.Now()
		err := f(ctx)
		took := time.Since(began)
		maxLatency = max(maxLatency, took)
		if err != nil {
			t.Errorf("%s while a read user hogs connections: %v (after %s)", what, err, took)
		}
	}
	deadline := time.Now().Add(6 * time.Second)
	for i := 0; time.Now().Before(deadline); i++ {
		timed("root status", func(ctx context.Context) error { _, err := d.Client.Status(ctx); return err })
		timed("root kill", func(ctx context.Context) error {
			if _, err := d.Client.Kill(ctx, "vm1"); !errors.Is(err, api.ErrConflict) {
				return fmt.Errorf("want conflict (vm1 is not running), got %w", err)
			}
			return nil
		})
		if i%5 == 0 {
			for _, u := range []struct {
				what   string
				uid    int
				groups []int
			}{{"operate-group status", testUID + 1, []int{testReadGID, testOperateGID}}, {"other read user's status", testUID + 2, []int{testReadGID}}} {
				timed(u.what, func(ctx context.Context) error {
					cmd := exec.CommandContext(ctx, bin, "--socket", e.Socket, "status")
					gs := []uint32{uint32(u.groups[0]), uint32(u.groups[len(u.groups)-1])}
					cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(u.uid), Gid: gs[0], Groups: gs}}
					if out, err := cmd.CombinedOutput(); err != nil {
						return fmt.Errorf("snpctl status: %v: %s", err, out)
					}
					return nil
				})
			}
		}
		maxFDs = max(maxFDs, fdCount(t, pid))
		time.Sleep(100 * time.Millisecond)
	}
	open, dials, refused := hogStats()
	t.Logf("hog: %d open, %d dials, %d answered 503; snpd fds: %d at rest, at most %d under the hog; slowest answer %s",
		open, dials, refused, base, maxFDs, maxLatency)
	// The hog's PerUID connections, refusals in flight (at most 16) and the checks' own.
	if limit := base + DefaultConnLimits.PerUID + 16 + 8; maxFDs > limit {
		t.Errorf("snpd held %d descriptors under the hog, more than %d", maxFDs, limit)
	}
	if open > DefaultConnLimits.PerUID+50 {
		t.Errorf("the hog holds %d connections open", open)
	}

	_ = hog.Process.Kill()
	_ = hog.Wait()
	waitFor(t, "snpd to drop the hog's connections", 10*time.Second, func() (bool, error) {
		return fdCount(t, pid) <= base+2, nil
	})
}

// TestSlowAndIdleConnectionsAreClosed runs snpd with every apiTimeouts bound at 1 s and
// checks each one closes its connection: an idle keep-alive, a body that never ends (a
// 400 first) and headers that never end — while an event stream, a handler that runs
// long, outlives them all.
func TestSlowAndIdleConnectionsAreClosed(t *testing.T) {
	e := newTestEnv(t, "")
	d := startDaemon(t, e, "SNPD_TEST_API_TIMEOUT=1s")

	// The event stream first: it must still deliver after 3 s.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan api.Event, 16)
	ended := make(chan error, 1)
	go func() {
		ended <- d.Client.Events(ctx, "", func(ev api.Event) error { got <- ev; return nil })
	}()

	closedWithin := func(what, request string, trickle string, want string) {
		t.Helper()
		c, err := net.Dial("unix", e.Socket)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprint(c, request)
		done := make(chan []byte, 1)
		go func() { b, _ := io.ReadAll(c); done <- b }()
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		giveUp := time.After(10 * time.Second)
		began := time.Now()
		for {
			select {
			case b := <-done:
				took := time.Since(began)
				t.Logf("%s: closed after %s: %q", what, took.Round(time.Millisecond), firstLine(b))
				if took > 4*time.Second {
					t.Errorf("%s: closed only after %s", what, took)
				}
				if !strings.Contains(string(b), want) {
					t.Errorf("%s: answer %q lacks %q", what, b, want)
				}
				return
			case <-tick.C:
				if trickle != "" {
					_, _ = fmt.Fprint(c, trickle)
				}
			case <-giveUp:
				t.Fatalf("%s: connection still open after 10 s", what)
			}
		}
	}
	closedWithin("idle keep-alive", "GET /v1/status HTTP/1.1\r\nHost: snpd\r\n\r\n", "", "200 OK")
	closedWithin("never-ending body", "POST /v1/verify HTTP/1.1\r\nHost: snpd\r\nTransfer-Encoding: chunked\r\n\r\n", "1\r\n \r\n",
		"not complete within 1s")
	closedWithin("never-ending headers", "GET /v1/status HTTP/1.1\r\n", "X-Slow: 1\r\n", "")

	// A start that fails at once (its firmware is missing) still publishes "starting"
	// and "failed": the stream, open for 3 s now, must carry them.
	if _, err := d.Client.Define(ctxT(t, 5*time.Second), api.DefineRequest{File: "after.toml",
		TOML: "name = \"after\"\nfirmware = \"" + e.Dir + "/no-such-firmware.fd\"\n"}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Client.Start(ctxT(t, 10*time.Second), "after"); !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("start with a missing firmware: %v, want invalid", err)
	}
	select {
	case ev := <-got:
		if ev.VM != "after" {
			t.Errorf("event %+v", ev)
		}
	case err := <-ended:
		t.Fatalf("the event stream ended under the 1 s bounds: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("no event on the stream")
	}
}

func firstLine(b []byte) string {
	l, _, _ := bytes.Cut(b, []byte("\n"))
	return strings.TrimSpace(string(l))
}

// TestConnLimiterBounds checks the bookkeeping of connLimiter directly: per-uid and pool
// bounds for users who do not operate, the operators' own pool, and places freed on
// close.
func TestConnLimiterBounds(t *testing.T) {
	l := &connLimiter{lim: ConnLimits{PerUID: 2, Others: 3, PerOperator: 2, Operators: 4}, byUID: map[int]int{}}
	reader := func(uid int) *Peer { return &Peer{UID: uid, Role: RoleRead} }
	op := func(uid int) *Peer { return &Peer{UID: uid, Role: RoleOperate} }
	for i, c := range []struct {
		p  *Peer
		ok bool
	}{
		{reader(1000), true}, {reader(1000), true}, {reader(1000), false}, // per uid
		{reader(1001), true}, {reader(1002), false}, // the others' pool is full
		{op(1003), true}, {op(1003), true}, {op(1003), false}, // per operator
		{op(0), true}, {op(0), true}, {op(0), false}, // the operators' pool
	} {
		if why := l.admit(c.p); (why == "") != c.ok {
			t.Errorf("step %d: uid %d %v: admitted %v (%s), want %v", i, c.p.UID, c.p.Role, why == "", why, c.ok)
		}
	}
	l.release(reader(1000))
	if why := l.admit(reader(1002)); why != "" {
		t.Errorf("after a close: %s", why)
	}
	if n := l.open(1000); n != 1 {
		t.Errorf("uid 1000 holds %d, want 1", n)
	}
	if s := strconv.Itoa(l.operators); s != "4" {
		t.Errorf("operators %s, want 4", s)
	}
}

// TestRefusedRequestBodyIsBounded: a request refused before its body is read (403: the
// read role calling an operate route) and whose body never ends is still closed at the
// body deadline; without one, the server's own read of the unread body would wait
// forever. Served in-process, with the peer's role set by the listener.
func TestRefusedRequestBodyIsBounded(t *testing.T) {
	old := apiTimeouts
	apiTimeouts.Header, apiTimeouts.Body, apiTimeouts.Idle = time.Second, time.Second, time.Second
	defer func() { apiTimeouts = old }()
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	srv := &Server{mgr: NewManager(ManagerOptions{Store: st, Validate: validateDefinition, RuntimeDir: t.TempDir()}), store: st}
	hs := newHTTPServer(newMux(srv.routes(), slogDiscard()), Authorizer{OperateGID: -1, ReadGID: -1}, slogDiscard())
	sock := t.TempDir() + "/api.sock"
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	lim := limitConnections(ln, Authorizer{}, slogDiscard())
	go func() { _ = hs.Serve(asReader{lim}) }()
	defer hs.Close()

	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprint(c, "POST /v1/vms HTTP/1.1\r\nHost: snpd\r\nTransfer-Encoding: chunked\r\n\r\n")
	done := make(chan []byte, 1)
	go func() { b, _ := io.ReadAll(c); done <- b }()
	began := time.Now()
	giveUp := time.After(10 * time.Second)
	for {
		select {
		case b := <-done:
			if took := time.Since(began); took > 4*time.Second {
				t.Errorf("closed only after %s", took)
			}
			if !strings.Contains(string(b), "403 Forbidden") {
				t.Errorf("answer %q, want a 403", b)
			}
			return
		case <-time.After(200 * time.Millisecond):
			_, _ = fmt.Fprint(c, "1\r\n \r\n")
		case <-giveUp:
			t.Fatal("connection still open after 10 s")
		}
	}
}

// asReader hands out the limiter's connections with their peer turned into a read-role
// user's (the test runs as root, who always operates).
type asReader struct{ *connLimiter }

func (a asReader) Accept() (net.Conn, error) {
	c, err := a.connLimiter.Accept()
	if err != nil {
		return nil, err
	}
	lc := c.(*limitedConn)
	lc.peer = &Peer{UID: 1000, Role: RoleRead}
	return lc, nil
}
