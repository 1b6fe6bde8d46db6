package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/snpd/snpd/daemon/api"
)

// Role is what a caller may do, decided once per connection from SO_PEERCRED.
type Role int

// Roles, weakest first.
const (
	// RoleNone may do nothing: every request is answered 403.
	RoleNone Role = iota
	// RoleRead may call GET routes (list, show, log, events, status).
	RoleRead
	// RoleOperate may change things (define, start, stop...): root and the operate group.
	RoleOperate
)

func (r Role) String() string {
	switch r {
	case RoleRead:
		return "read"
	case RoleOperate:
		return "operate"
	}
	return "none"
}

// Peer is the process on the other end of an API connection, from SO_PEERCRED and
// SO_PEERGROUPS (the credentials at connect time, not the client's say-so).
type Peer struct {
	PID, UID, GID int
	// Groups are the supplementary group ids.
	Groups []int
	Role   Role
}

// Caller is the peer's identity as the API's wire type (nil for a nil peer).
func (p *Peer) Caller() *api.Caller {
	if p == nil {
		return nil
	}
	return &api.Caller{UID: p.UID, GID: p.GID, Groups: p.Groups}
}

type peerKey struct{}

// PeerFrom returns the peer of the connection that carried r's request (nil outside
// the API server).
func PeerFrom(ctx context.Context) *Peer {
	p, _ := ctx.Value(peerKey{}).(*Peer)
	return p
}

// Authorizer maps peer credentials to a Role: uid 0 operates; a member (primary or
// supplementary) of OperateGID operates; of ReadGID reads; anyone else gets RoleNone.
// A gid of -1 means no such group.
type Authorizer struct {
	OperateGID, ReadGID int
}

// Role decides the role of a peer.
func (a Authorizer) Role(uid, gid int, groups []int) Role {
	in := func(g int) bool { return g >= 0 && (gid == g || slices.Contains(groups, g)) }
	switch {
	case uid == 0:
		return RoleOperate
	case in(a.OperateGID):
		return RoleOperate
	case in(a.ReadGID):
		return RoleRead
	}
	return RoleNone
}

// lookupGroup resolves a group name or numeric gid; "" gives -1.
func lookupGroup(name string) (int, error) {
	if name == "" {
		return -1, nil
	}
	if n, err := strconv.Atoi(name); err == nil {
		return n, nil
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		return -1, fmt.Errorf("looking up group %q: %w", name, err)
	}
	return strconv.Atoi(g.Gid)
}

// peerCred reads SO_PEERCRED and SO_PEERGROUPS of a unix connection.
func peerCred(c net.Conn) (*Peer, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return nil, fmt.Errorf("connection is %T, not a unix socket", c)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil, err
	}
	var p *Peer
	var opErr error
	err = raw.Control(func(fd uintptr) {
		cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if err != nil {
			opErr = fmt.Errorf("reading SO_PEERCRED: %w", err)
			return
		}
		p = &Peer{PID: int(cred.Pid), UID: int(cred.Uid), GID: int(cred.Gid)}
		p.Groups, opErr = peerGroups(int(fd))
	})
	if err != nil {
		return nil, err
	}
	return p, opErr
}

// peerGroups reads SO_PEERGROUPS (Linux >= 4.13). x/sys/unix has no wrapper for this
// option (it returns an array of gid_t), hence the raw getsockopt.
func peerGroups(fd int) ([]int, error) {
	buf := make([]uint32, 64)
	for {
		size := uint32(len(buf) * 4)
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_PEERGROUPS,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&size)), 0)
		if errno == unix.ERANGE && int(size/4) > len(buf) && size < 1<<20 {
			buf = make([]uint32, size/4)
			continue
		}
		if errno != 0 {
			return nil, fmt.Errorf("reading SO_PEERGROUPS: %w", errno)
		}
		out := make([]int, size/4)
		for i := range out {
			out[i] = int(buf[i])
		}
		return out, nil
	}
}

// listenAPI creates the API socket at path, mode 0660, group gid (-1: keep root's).
// It refuses if a live process answers on path, and replaces a stale socket file.
func listenAPI(path string, gid int) (*net.UnixListener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("creating socket directory: %w", err)
	}
	if st, err := os.Lstat(path); err == nil {
		if st.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket; refusing to replace it", path)
		}
		if answers(path) {
			return nil, fmt.Errorf("another snpd is already answering on %s (systemctl status snpd)", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("removing stale socket: %w", err)
		}
	}
	// The socket file must never exist with wider permissions than 0660, so bind with a
	// umask that yields that mode (umask is process-wide; snpd binds before starting any
	// other goroutine that creates files).
	old := syscall.Umask(0o117)
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	l.SetUnlinkOnClose(true)
	if gid >= 0 {
		if err := os.Lchown(path, -1, gid); err != nil {
			l.Close()
			return nil, fmt.Errorf("setting the socket's group: %w", err)
		}
	}
	if err := os.Chmod(path, 0o660); err != nil {
		l.Close()
		return nil, fmt.Errorf("setting the socket's mode: %w", err)
	}
	return l, nil
}

// answers tells whether a server answers HTTP on the unix socket at path within 2 s.
// A socket that accepts but never answers is not a live snpd: it is held by a process
// that inherited the listener without serving it, such as a child of a killed snpd
// caught between fork and exec (its descriptors close at exec).
func answers(path string) bool {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.WriteString(c, "GET /v1/status HTTP/1.1\r\nHost: snpd\r\nConnection: close\r\n\r\n"); err != nil {
		return false
	}
	var b [1]byte
	n, _ := c.Read(b[:])
	return n > 0
}

// HandlerFunc is an API handler: it writes a 2xx response itself, or returns an error
// that the server maps to its status (by the api.Err* kind it wraps) and a JSON body.
type HandlerFunc func(w http.ResponseWriter, r *http.Request) error

// Route is one entry of the API route table.
type Route struct {
	// Pattern is a Go 1.22 ServeMux pattern with method, e.g. "GET /v1/vms/{name}".
	Pattern string
	// Need is the weakest role allowed to call it.
	Need    Role
	Handler HandlerFunc
}

// newMux builds the mux from the route table, with authorization and error mapping.
func newMux(routes []Route, log *slog.Logger) *http.ServeMux {
	mux := http.NewServeMux()
	wrap := func(need Role, h HandlerFunc) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			p := PeerFrom(r.Context())
			var err error
			switch {
			case p == nil || p.Role == RoleNone:
				err = fmt.Errorf("uid %d is not root and not in snpd's operate or read group: %w", peerUID(p), api.ErrForbidden)
			case p.Role < need:
				err = fmt.Errorf("uid %d may only read; %s needs root or snpd's operate group: %w", p.UID, r.Method+" "+r.URL.Path, api.ErrForbidden)
			default:
				if err = readBody(w, r); err == nil {
					err = h(w, r)
				}
			}
			if err != nil {
				writeError(w, err)
				kind, status := api.ErrorKind(err)
				lvl := slog.LevelInfo
				if status >= 500 {
					lvl = slog.LevelError
				}
				log.Log(r.Context(), lvl, "request failed", "method", r.Method, "path", r.URL.Path, "uid", peerUID(p), "kind", kind, "err", err)
			}
		})
	}
	for _, rt := range routes {
		mux.Handle(rt.Pattern, wrap(rt.Need, rt.Handler))
	}
	mux.Handle("/", wrap(RoleRead, func(w http.ResponseWriter, r *http.Request) error {
		return fmt.Errorf("no API route %s %s: %w", r.Method, r.URL.Path, api.ErrNotFound)
	}))
	return mux
}

func peerUID(p *Peer) int {
	if p == nil {
		return -1
	}
	return p.UID
}

// writeJSON writes v as the JSON body with status.
func writeJSON(w http.ResponseWriter, status int, v any) error {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	return json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, err error) {
	var pe *PolicyError
	if errors.As(err, &pe) {
		_ = writeJSON(w, http.StatusUnprocessableEntity, pe.wire())
		return
	}
	kind, status := api.ErrorKind(err)
	_ = writeJSON(w, status, api.Error{Kind: kind, Message: err.Error()})
}

// decodeJSON decodes r's body (at most api.MaxBodySize bytes) into v strictly: unknown
// fields, trailing data and oversized bodies are api.ErrInvalid/ErrTooLarge errors.
func decodeJSON(r *http.Request, v any) error {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return fmt.Errorf("request body is larger than %d bytes: %w", mbe.Limit, api.ErrTooLarge)
		}
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("decoding request body: empty body: %w", api.ErrInvalid)
		}
		return fmt.Errorf("decoding request body: %v: %w", err, api.ErrInvalid)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return fmt.Errorf("request body is larger than %d bytes: %w", mbe.Limit, api.ErrTooLarge)
		}
		return fmt.Errorf("decoding request body: data after the JSON value: %w", api.ErrInvalid)
	}
	return nil
}

// vmName returns the validated {name} path value.
func vmName(r *http.Request) (string, error) {
	name := r.PathValue("name")
	return name, api.ValidName(name)
}

// apiTimeouts bound how long a client may take: to send a request's headers (from the
// connection's start, or the end of the previous request), to send its body, and to
// stay connected idle between requests. A handler that runs long (a stop waiting for
// the guest, an event stream) is not bounded by them. Variables so tests can shorten
// them.
var apiTimeouts = struct{ Header, Body, Idle time.Duration }{
	Header: 10 * time.Second,
	Body:   10 * time.Second,
	Idle:   30 * time.Second,
}

// withReadDeadline sets the read deadline of a request's body before anything else
// runs: a refused request or a method the mux answers itself (405) leaves it in place,
// so the server's own reading of an unread body cannot wait forever; readBody clears it
// once the body is read.
func withReadDeadline(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(apiTimeouts.Body))
		h.ServeHTTP(w, r)
	})
}

// readBody reads the whole request body (at most api.MaxBodySize bytes) within the
// read deadline withReadDeadline set, then clears the deadline: the handler may run
// long, and a read deadline expiring under it would cancel its request context. The
// handler reads the body from memory.
func readBody(w http.ResponseWriter, r *http.Request) error {
	rc := http.NewResponseController(w)
	if r.Body != nil && r.Body != http.NoBody {
		b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, api.MaxBodySize))
		if err != nil {
			var mbe *http.MaxBytesError
			switch {
			case errors.As(err, &mbe):
				return fmt.Errorf("request body is larger than %d bytes: %w", mbe.Limit, api.ErrTooLarge)
			case errors.Is(err, os.ErrDeadlineExceeded):
				return fmt.Errorf("reading request body: not complete within %s: %w", apiTimeouts.Body, api.ErrInvalid)
			}
			return fmt.Errorf("reading request body: %v: %w", err, api.ErrInvalid)
		}
		r.Body = io.NopCloser(bytes.NewReader(b))
	}
	_ = rc.SetReadDeadline(time.Time{})
	return nil
}

// newHTTPServer returns the API's http.Server: peer credentials are read once per
// connection (by the connLimiter the server is given as its listener, else here in
// ConnContext), and connections whose credentials cannot be read are served with
// RoleNone. Headers, bodies and idle keep-alive connections are bounded by apiTimeouts.
func newHTTPServer(handler http.Handler, auth Authorizer, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           withReadDeadline(handler),
		ReadHeaderTimeout: apiTimeouts.Header,
		IdleTimeout:       apiTimeouts.Idle,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if lc, ok := c.(*limitedConn); ok {
				return context.WithValue(ctx, peerKey{}, lc.peer)
			}
			p, err := peerCred(c)
			if err != nil {
				log.Warn("reading peer credentials", "err", err)
				return context.WithValue(ctx, peerKey{}, &Peer{UID: -1, GID: -1, Role: RoleNone})
			}
			p.Role = auth.Role(p.UID, p.GID, p.Groups)
			return context.WithValue(ctx, peerKey{}, p)
		},
	}
}
