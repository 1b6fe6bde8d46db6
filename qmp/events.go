package qmp

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"
)

// Event is an asynchronous QMP event. Events the package knows (SHUTDOWN, RESUME, STOP,
// GUEST_PANICKED, DEVICE_DELETED) are also decoded into Typed; every other event is
// passed through with Typed nil and its raw Data.
type Event struct {
	// Name is the QMP event name, e.g. "SHUTDOWN".
	Name string
	// Time is QEMU's timestamp for the event (host wall clock, microsecond resolution);
	// zero when QEMU sent none or an invalid one.
	Time time.Time
	// Data is the raw "data" member; nil when the event carried none.
	Data json.RawMessage
	// Typed is one of ShutdownEvent, ResumeEvent, StopEvent, GuestPanickedEvent or
	// DeviceDeletedEvent (values, not pointers) for those events; nil for any other event
	// and for a known event whose data did not match the schema.
	Typed any
}

// QMP event names the package decodes into typed values.
const (
	EventShutdown      = "SHUTDOWN"
	EventResume        = "RESUME"
	EventStop          = "STOP"
	EventGuestPanicked = "GUEST_PANICKED"
	EventDeviceDeleted = "DEVICE_DELETED"
)

// ShutdownEvent is SHUTDOWN (qapi/run-state.json): QEMU is about to exit or, with
// -no-shutdown, about to stop.
type ShutdownEvent struct {
	// Guest is true when the guest initiated the shutdown.
	Guest bool `json:"guest"`
	// Reason is a ShutdownCause: "host-qmp-quit", "host-signal", "guest-shutdown",
	// "guest-panic", "host-qmp-system-reset", ...
	Reason string `json:"reason"`
}

// ResumeEvent is RESUME: the VM started running (for example after cont). It has no data.
type ResumeEvent struct{}

// StopEvent is STOP: the VM was paused. It has no data.
type StopEvent struct{}

// GuestPanickedEvent is GUEST_PANICKED (qapi/run-state.json).
type GuestPanickedEvent struct {
	// Action is the GuestPanicAction QEMU takes: "pause", "poweroff" or "run".
	Action string `json:"action"`
	// Info is the raw GuestPanicInformation (a union on "type": hyper-v, s390, tdx);
	// nil when absent.
	Info json.RawMessage `json:"info,omitempty"`
}

// DeviceDeletedEvent is DEVICE_DELETED (qapi/qdev.json): a device's unplug finished.
type DeviceDeletedEvent struct {
	// Device is the device id; empty when the device had none.
	Device string `json:"device,omitempty"`
	// Path is the device's QOM path.
	Path string `json:"path"`
}

// decodeTyped decodes the data of the known events; nil for others or on mismatch.
func decodeTyped(name string, data json.RawMessage) any {
	switch name {
	case EventResume:
		return ResumeEvent{}
	case EventStop:
		return StopEvent{}
	case EventShutdown:
		var e ShutdownEvent
		if json.Unmarshal(data, &e) != nil {
			return nil
		}
		return e
	case EventGuestPanicked:
		var e GuestPanickedEvent
		if json.Unmarshal(data, &e) != nil {
			return nil
		}
		return e
	case EventDeviceDeleted:
		var e DeviceDeletedEvent
		if json.Unmarshal(data, &e) != nil {
			return nil
		}
		return e
	}
	return nil
}

// Subscription receives the events a Client reads after Subscribe. Its channel is
// buffered; when the subscriber does not keep up, new events are dropped for it (and
// counted) rather than blocking the client's reader, so commands never wait behind an
// unread event.
type Subscription struct {
	c       *Client
	ch      chan Event
	dropped uint64 // guarded by c.subMu
	closed  bool   // guarded by c.subMu
}

// DefaultEventBuffer is the channel capacity (events) of a Subscription made with
// Subscribe(0).
const DefaultEventBuffer = 256

// Subscribe returns a subscription to events read from now on. buffer is the channel
// capacity in events; 0 means DefaultEventBuffer. The channel is closed when the
// subscription or the client is closed. Subscribing on a closed client returns a
// subscription whose channel is already closed.
func (c *Client) Subscribe(buffer int) *Subscription {
	if buffer <= 0 {
		buffer = DefaultEventBuffer
	}
	s := &Subscription{c: c, ch: make(chan Event, buffer)}
	c.subMu.Lock()
	defer c.subMu.Unlock()
	if c.subsClosed {
		s.closed = true
		close(s.ch)
		return s
	}
	c.subs[s] = struct{}{}
	return s
}

// Events is the subscription's channel. It is closed by Close and when the client's
// connection ends.
func (s *Subscription) Events() <-chan Event { return s.ch }

// Dropped is the number of events dropped for this subscriber because its channel was
// full.
func (s *Subscription) Dropped() uint64 {
	s.c.subMu.Lock()
	defer s.c.subMu.Unlock()
	return s.dropped
}

// Wait returns the next event named one of names (any event when names is empty),
// discarding others, or an error when ctx ends or the subscription is closed (wrapping
// ErrClosed, with the client's cause when the connection ended).
func (s *Subscription) Wait(ctx context.Context, names ...string) (Event, error) {
	for {
		select {
		case ev, ok := <-s.ch:
			if !ok {
				return Event{}, fmt.Errorf("waiting for event %v: %w", names, s.c.closedErr())
			}
			if len(names) == 0 || slices.Contains(names, ev.Name) {
				return ev, nil
			}
		case <-ctx.Done():
			return Event{}, fmt.Errorf("waiting for event %v: %w", names, ctx.Err())
		}
	}
}

// Close ends the subscription and closes its channel. It is safe to call more than once.
func (s *Subscription) Close() {
	s.c.subMu.Lock()
	defer s.c.subMu.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	delete(s.c.subs, s)
	close(s.ch)
}

// broadcast hands ev to every subscriber without blocking.
func (c *Client) broadcast(ev Event) {
	c.subMu.Lock()
	defer c.subMu.Unlock()
	for s := range c.subs {
		select {
		case s.ch <- ev:
		default:
			s.dropped++
			c.dropped++
		}
	}
}

// closeSubscriptions closes every subscriber's channel; later Subscribe calls get closed
// channels.
func (c *Client) closeSubscriptions() {
	c.subMu.Lock()
	defer c.subMu.Unlock()
	c.subsClosed = true
	for s := range c.subs {
		s.closed = true
		close(s.ch)
	}
	clear(c.subs)
}

// DroppedEvents is the total number of events dropped across all subscribers because
// their channels were full.
func (c *Client) DroppedEvents() uint64 {
	c.subMu.Lock()
	defer c.subMu.Unlock()
	return c.dropped
}
