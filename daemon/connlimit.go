package daemon

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/snpd/snpd/daemon/api"
)

// ConnLimits bound the API connections open at once, by the peer's credentials
// (SO_PEERCRED at accept): one user cannot use up snpd's descriptors, and the operators
// (root and the operate group) have a budget of their own that no one else can touch.
type ConnLimits struct {
	// PerUID bounds the connections of one uid that does not operate (read role, or none).
	PerUID int
	// Others bounds the connections of every uid that does not operate, together.
	Others int
	// PerOperator bounds the connections of one non-root member of the operate group.
	PerOperator int
	// Operators bounds the connections of root and the operate group together; root has
	// no bound of its own beyond this one.
	Operators int
}

// DefaultConnLimits are snpd's connection bounds. snpctl uses one connection per
// command, the libvirt hook one per call, `vm events` one per stream.
var DefaultConnLimits = ConnLimits{PerUID: 64, Others: 256, PerOperator: 256, Operators: 1024}

// connLimiter is the API listener: it reads each connection's peer credentials once,
// decides its role, and refuses a connection beyond its bounds at once, with a 503
// saying which bound (a connection of that uid must close first).
type connLimiter struct {
	net.Listener
	auth Authorizer
	lim  ConnLimits
	log  *slog.Logger

	mu        sync.Mutex
	byUID     map[int]int
	others    int
	operators int
	refusing  chan struct{} // bounds the goroutines answering refused connections
	lastLog   time.Time
	unlogged  int // refusals since lastLog
}

// limitConnections wraps the API listener with DefaultConnLimits.
func limitConnections(l net.Listener, auth Authorizer, log *slog.Logger) *connLimiter {
	return &connLimiter{Listener: l, auth: auth, lim: DefaultConnLimits, log: log,
		byUID: map[int]int{}, refusing: make(chan struct{}, 16)}
}

// Accept returns the next connection within bounds (a *limitedConn carrying its Peer);
// connections beyond them are answered and closed here.
func (l *connLimiter) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		p, err := peerCred(c)
		if err != nil {
			l.log.Warn("reading peer credentials", "err", err)
			p = &Peer{UID: -1, GID: -1}
		}
		p.Role = RoleNone
		if p.UID >= 0 {
			p.Role = l.auth.Role(p.UID, p.GID, p.Groups)
		}
		if why := l.admit(p); why != "" {
			l.refuse(c, p, why)
			continue
		}
		return &limitedConn{Conn: c, peer: p, l: l}, nil
	}
}

// admit counts a new connection of p, or says which bound it would break.
func (l *connLimiter) admit(p *Peer) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := l.byUID[p.UID]
	switch {
	case p.Role == RoleOperate && l.operators >= l.lim.Operators:
		return fmt.Sprintf("root and snpd's operate group have %d connections open, the most allowed", l.operators)
	case p.Role == RoleOperate && p.UID != 0 && n >= l.lim.PerOperator:
		return fmt.Sprintf("uid %d has %d connections open, the most allowed for one operator", p.UID, n)
	case p.Role != RoleOperate && n >= l.lim.PerUID:
		return fmt.Sprintf("uid %d has %d connections open, the most allowed for a user who does not operate", p.UID, n)
	case p.Role != RoleOperate && l.others >= l.lim.Others:
		return fmt.Sprintf("users who do not operate have %d connections open, the most allowed", l.others)
	}
	l.byUID[p.UID] = n + 1
	if p.Role == RoleOperate {
		l.operators++
	} else {
		l.others++
	}
	return ""
}

func (l *connLimiter) release(p *Peer) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.byUID[p.UID]--; l.byUID[p.UID] <= 0 {
		delete(l.byUID, p.UID)
	}
	if p.Role == RoleOperate {
		l.operators--
	} else {
		l.others--
	}
}

// open returns how many connections uid holds (tests).
func (l *connLimiter) open(uid int) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.byUID[uid]
}

// refuse answers a connection beyond its bounds with a 503 (when few such answers are in
// flight; otherwise it just closes it) and logs refusals at most every 10 s.
func (l *connLimiter) refuse(c net.Conn, p *Peer, why string) {
	l.mu.Lock()
	l.unlogged++
	if time.Since(l.lastLog) > 10*time.Second {
		l.log.Warn("refusing API connections beyond the bounds", "uid", p.UID, "reason", why, "refused", l.unlogged)
		l.lastLog, l.unlogged = time.Now(), 0
	}
	l.mu.Unlock()
	select {
	case l.refusing <- struct{}{}:
	default:
		c.Close()
		return
	}
	go func() {
		defer func() { <-l.refusing }()
		defer c.Close()
		body, _ := json.Marshal(api.Error{Kind: api.KindUnavailable,
			Message: "too many connections: " + why + "; close some (snpd closes idle ones after " + apiTimeouts.Idle.String() + "): " + api.ErrUnavailable.Error()})
		_ = c.SetDeadline(time.Now().Add(200 * time.Millisecond))
		fmt.Fprintf(c, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s",
			http.StatusServiceUnavailable, http.StatusText(http.StatusServiceUnavailable), len(body), body)
		// Read what the client sent until it closes or the deadline, so that closing
		// does not reset the connection before the client reads the answer.
		if cw, ok := c.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(c, 64<<10))
	}()
}

// limitedConn is an accepted API connection; closing it frees its place.
type limitedConn struct {
	net.Conn
	peer *Peer
	l    *connLimiter
	once sync.Once
}

func (c *limitedConn) Close() error {
	c.once.Do(func() { c.l.release(c.peer) })
	return c.Conn.Close()
}

// CloseWrite shuts down the writing side, as *net.UnixConn does: the HTTP server uses it
// to let a client read a final answer before the connection closes.
func (c *limitedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
