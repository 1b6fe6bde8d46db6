package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// Client talks to snpd over its unix socket, one connection per request. The zero value
// is not usable; use NewClient.
//
// It writes the request and reads the response on the calling goroutine with net/http's
// Request.Write and ReadResponse instead of an http.Transport: a Transport keeps a pool
// and runs a reader and a writer goroutine per connection, which a CLI making one request
// pays for in thread hand-offs (each a wake-up the kernel must schedule). On a loaded host
// those wake-ups are where `snpctl vm list` spent its time (BenchmarkStart20WhileListing).
type Client struct {
	// Socket is the API socket path.
	Socket string
}

// SocketFromEnv returns flagValue if set, else $SNPD_SOCKET, else DefaultSocket.
func SocketFromEnv(flagValue string) string {
	if flagValue != "" {
		return flagValue
	}
	if s := os.Getenv("SNPD_SOCKET"); s != "" {
		return s
	}
	return DefaultSocket
}

// NewClient returns a client for the snpd API socket at socket.
func NewClient(socket string) *Client {
	return &Client{Socket: socket}
}

// Do sends a request with in (if non-nil) as JSON body and decodes a 2xx JSON response
// into out (if non-nil). Non-2xx responses become *Error (errors.Is matches the sentinel
// kinds); transport failures become one-line errors with a hint.
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	resp, err := c.send(ctx, method, path, in)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, MaxBodySize))
		return nil
	}
	if w, ok := out.(io.Writer); ok {
		_, err := io.Copy(w, resp.Body)
		if err != nil {
			return fmt.Errorf("reading response: %w", err)
		}
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decoding response to %s %s: %w", method, path, err)
	}
	return nil
}

func (c *Client) send(ctx context.Context, method, path string, in any) (*http.Response, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, fmt.Errorf("encoding request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://snpd"+path, body)
	if err != nil {
		return nil, fmt.Errorf("building request: %w", err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Close = true // one request per connection: the server closes after replying
	resp, err := c.roundTrip(ctx, req)
	if err != nil {
		return nil, c.transportError(err)
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		return nil, decodeError(resp)
	}
	return resp, nil
}

// roundTrip dials the socket, writes req and reads the response head. The returned body
// closes the connection; until then ctx's end closes it too, failing a blocked read.
func (c *Client) roundTrip(ctx context.Context, req *http.Request) (*http.Response, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.Socket)
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	fail := func(err error) (*http.Response, error) {
		stop()
		conn.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	bw := bufio.NewWriter(conn)
	if err := req.Write(bw); err != nil {
		return fail(fmt.Errorf("writing request: %w", err))
	}
	if err := bw.Flush(); err != nil {
		return fail(fmt.Errorf("writing request: %w", err))
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		return fail(fmt.Errorf("reading response: %w", err))
	}
	resp.Body = &connBody{ReadCloser: resp.Body, conn: conn, stop: stop}
	return resp, nil
}

// connBody is a response body that owns its connection.
type connBody struct {
	io.ReadCloser
	conn net.Conn
	stop func() bool
}

func (b *connBody) Close() error {
	b.stop()
	err := b.ReadCloser.Close()
	if cerr := b.conn.Close(); err == nil && !errors.Is(cerr, net.ErrClosed) {
		err = cerr
	}
	return err
}

func (c *Client) transportError(err error) error {
	switch {
	case errors.Is(err, syscall.ENOENT), errors.Is(err, syscall.ECONNREFUSED):
		return &Error{Kind: KindUnavailable, Message: fmt.Sprintf("snpd is not running (no answer on %s): systemctl status snpd", c.Socket)}
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return &Error{Kind: KindForbidden, Message: fmt.Sprintf("permission denied on %s: run as root or as a member of snpd's operate or read group", c.Socket)}
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	}
	return &Error{Kind: KindUnavailable, Message: fmt.Sprintf("talking to snpd on %s: %v", c.Socket, err)}
}

func decodeError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var e Error
	if json.Unmarshal(b, &e) != nil || e.Message == "" {
		e = Error{Kind: KindForStatus(resp.StatusCode), Message: strings.TrimSpace(string(b))}
		if e.Message == "" {
			e.Message = resp.Status
		}
	}
	e.Status = resp.StatusCode
	if e.Kind == KindForbidden && !strings.Contains(e.Message, "group") {
		e.Message += ": run as root or as a member of snpd's operate group (read group for read-only commands)"
	}
	return &e
}

// Status returns the daemon's status.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	var s Status
	return &s, c.Do(ctx, http.MethodGet, "/v1/status", nil, &s)
}

// List returns every defined VM, sorted by name.
func (c *Client) List(ctx context.Context) ([]VMSummary, error) {
	var l ListResponse
	err := c.Do(ctx, http.MethodGet, "/v1/vms", nil, &l)
	return l.VMs, err
}

func vmPath(name, suffix string) string { return "/v1/vms/" + url.PathEscape(name) + suffix }

// Get returns one VM with its definition and last run.
func (c *Client) Get(ctx context.Context, name string) (*VMInfo, error) {
	var v VMInfo
	return &v, c.Do(ctx, http.MethodGet, vmPath(name, ""), nil, &v)
}

// Define stores a VM definition (TOML text) and returns the stored VM.
func (c *Client) Define(ctx context.Context, req DefineRequest) (*VMInfo, error) {
	var v VMInfo
	return &v, c.Do(ctx, http.MethodPost, "/v1/vms", req, &v)
}

// Undefine removes a stopped VM and its run history.
func (c *Client) Undefine(ctx context.Context, name string) error {
	return c.Do(ctx, http.MethodDelete, vmPath(name, ""), nil, nil)
}

// Runs returns a VM's runs (launch records with their state history), oldest first.
func (c *Client) Runs(ctx context.Context, name string) ([]Run, error) {
	var r []Run
	return r, c.Do(ctx, http.MethodGet, vmPath(name, "/runs"), nil, &r)
}

// Start launches a VM and returns once it runs (or the start failed).
func (c *Client) Start(ctx context.Context, name string) (*VMInfo, error) {
	var v VMInfo
	return &v, c.Do(ctx, http.MethodPost, vmPath(name, "/start"), struct{}{}, &v)
}

// Stop powers a VM off gracefully, killing QEMU after the timeout.
func (c *Client) Stop(ctx context.Context, name string, req StopRequest) (*VMInfo, error) {
	var v VMInfo
	return &v, c.Do(ctx, http.MethodPost, vmPath(name, "/stop"), req, &v)
}

// Kill kills a VM's QEMU at once (SIGKILL).
func (c *Client) Kill(ctx context.Context, name string) (*VMInfo, error) {
	var v VMInfo
	return &v, c.Do(ctx, http.MethodPost, vmPath(name, "/kill"), struct{}{}, &v)
}

// Log writes the last maxBytes bytes (0: server default) of the VM's console log to w.
func (c *Client) Log(ctx context.Context, name string, maxBytes int, w io.Writer) error {
	p := vmPath(name, "/log")
	if maxBytes > 0 {
		p += "?bytes=" + strconv.Itoa(maxBytes)
	}
	return c.Do(ctx, http.MethodGet, p, nil, w)
}

// Events streams events (of VM vm, or all if empty) to fn until ctx ends, fn returns an
// error, or the server closes the stream (then it returns nil, as before event kinds).
func (c *Client) Events(ctx context.Context, vm string, fn func(Event) error) error {
	err := c.FollowEvents(ctx, EventsOptions{VM: vm}, fn)
	if err == ErrEventsEnded { // a clean end; a broken connection stays an error
		return nil
	}
	return err
}

// EventsOptions select the events of GET /v1/events.
type EventsOptions struct {
	// VM keeps only the events about this VM ("": every VM).
	VM string
	// Kinds keeps only events of these kinds (EventState, EventPolicy,
	// EventAttestation; nil: every kind).
	Kinds []string
	// Connected, when set, is called once snpd has subscribed the stream: every event
	// from then on is delivered.
	Connected func()
}

// ErrEventsEnded is what FollowEvents returns when the event stream ends from snpd's
// side: snpd closed it (stopping or restarting), or the connection broke.
var ErrEventsEnded = errors.New("snpd ended the event stream (it stopped or restarted)")

// FollowEvents streams the events o selects to fn until ctx ends (it returns ctx.Err()),
// fn returns an error (it returns that), or the stream ends from snpd's side:
// ErrEventsEnded itself when snpd closed it, an error wrapping it and naming the read
// error when the connection broke (snpd killed).
func (c *Client) FollowEvents(ctx context.Context, o EventsOptions, fn func(Event) error) error {
	q := url.Values{}
	if o.VM != "" {
		q.Set("vm", o.VM)
	}
	if len(o.Kinds) > 0 {
		q.Set("kind", strings.Join(o.Kinds, ","))
	}
	p := "/v1/events"
	if len(q) > 0 {
		p += "?" + q.Encode()
	}
	resp, err := c.send(ctx, http.MethodGet, p, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	// snpd answers once it has subscribed the stream (its first line is a comment).
	if o.Connected != nil {
		o.Connected()
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		var ev Event
		if err := json.Unmarshal([]byte(data), &ev); err != nil {
			return fmt.Errorf("decoding event: %w", err)
		}
		if err := fn(ev); err != nil {
			return err
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("%w: %v", ErrEventsEnded, err)
	}
	return ErrEventsEnded
}
