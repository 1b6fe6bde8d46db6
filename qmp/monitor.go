package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	goqmp "github.com/digitalocean/go-qemu/qmp"
)

// Monitor adapts a Client to go-qemu's qmp.Monitor interface, so go-qemu's qemu and raw
// packages can run on this package's hardened connection. Each Run is bounded by
// Timeout. Prefer Client's context-taking methods in new code.
type Monitor struct {
	// Path is the QMP unix socket Connect dials.
	Path string
	// Timeout bounds Connect and each Run; 0 means 30 s.
	Timeout time.Duration

	mu sync.Mutex
	c  *Client
}

var _ goqmp.Monitor = (*Monitor)(nil)

// NewMonitor returns a Monitor for the socket at path; call Connect before use.
func NewMonitor(path string, timeout time.Duration) *Monitor {
	return &Monitor{Path: path, Timeout: timeout}
}

func (m *Monitor) timeout() time.Duration {
	if m.Timeout <= 0 {
		return 30 * time.Second
	}
	return m.Timeout
}

func (m *Monitor) client() (*Client, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.c == nil {
		return nil, errors.New("QMP monitor not connected")
	}
	return m.c, nil
}

// Connect dials Path and negotiates capabilities within Timeout.
func (m *Monitor) Connect() error {
	ctx, cancel := context.WithTimeout(context.Background(), m.timeout())
	defer cancel()
	c, err := Dial(ctx, m.Path, nil)
	if err != nil {
		return err
	}
	m.mu.Lock()
	old := m.c
	m.c = c
	m.mu.Unlock()
	if old != nil {
		old.Close()
	}
	return nil
}

// Disconnect closes the connection.
func (m *Monitor) Disconnect() error {
	m.mu.Lock()
	c := m.c
	m.c = nil
	m.mu.Unlock()
	if c == nil {
		return nil
	}
	return c.Close()
}

// Run executes a raw command ({"execute": ..., "arguments": ...}) and returns the reply
// as {"return": ...}, the form go-qemu's raw package decodes.
func (m *Monitor) Run(command []byte) ([]byte, error) {
	c, err := m.client()
	if err != nil {
		return nil, err
	}
	var cmd struct {
		Execute   string          `json:"execute"`
		Arguments json.RawMessage `json:"arguments"`
	}
	if err := json.Unmarshal(command, &cmd); err != nil {
		return nil, fmt.Errorf("decoding QMP command: %w", err)
	}
	var args any
	if len(cmd.Arguments) > 0 && string(cmd.Arguments) != "null" {
		args = cmd.Arguments
	}
	ctx, cancel := context.WithTimeout(context.Background(), m.timeout())
	defer cancel()
	ret, err := c.ExecuteRaw(ctx, cmd.Execute, args)
	if err != nil {
		return nil, err
	}
	return json.Marshal(struct {
		Return json.RawMessage `json:"return"`
	}{ret})
}

// Events streams events as go-qemu's qmp.Event until ctx ends or the connection closes.
// Unlike SocketMonitor's, the channel need not be drained: events the caller does not
// take are dropped for it (buffer: DefaultEventBuffer).
func (m *Monitor) Events(ctx context.Context) (<-chan goqmp.Event, error) {
	c, err := m.client()
	if err != nil {
		return nil, err
	}
	sub := c.Subscribe(0)
	out := make(chan goqmp.Event, DefaultEventBuffer)
	go func() {
		defer close(out)
		defer sub.Close()
		for {
			select {
			case <-ctx.Done():
				return
			case ev, ok := <-sub.Events():
				if !ok {
					return
				}
				ge := goqmp.Event{Event: ev.Name}
				if len(ev.Data) > 0 {
					_ = json.Unmarshal(ev.Data, &ge.Data) // non-object data is left nil
				}
				if !ev.Time.IsZero() {
					ge.Timestamp.Seconds = ev.Time.Unix()
					ge.Timestamp.Microseconds = int64(ev.Time.Nanosecond() / 1000)
				}
				select {
				case out <- ge:
				default: // caller not draining: drop rather than block
				}
			}
		}
	}()
	return out, nil
}
