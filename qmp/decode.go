package qmp

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// messageKind says what a line from the QMP socket was.
type messageKind int

const (
	kindGreeting messageKind = iota + 1
	kindReply
	kindEvent
)

// message is one decoded line from the QMP socket: the greeting, a command reply
// (return or error, with the id we sent) or an asynchronous event.
type message struct {
	kind messageKind

	greeting Greeting

	// Replies.
	id     uint64 // 0: the reply carried no id (QEMU omits it when it could not parse the request)
	ret    json.RawMessage
	qmpErr *Error

	// Events.
	event Event
}

// wireMessage is the union of every member a QMP server sends. Pointers tell present
// from absent.
type wireMessage struct {
	QMP       *wireGreeting   `json:"QMP"`
	Event     *string         `json:"event"`
	Data      json.RawMessage `json:"data"`
	Timestamp *struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
	ID     json.RawMessage `json:"id"`
	Return json.RawMessage `json:"return"`
	Error  *Error          `json:"error"`
}

type wireGreeting struct {
	Version      *VersionInfo `json:"version"`
	Capabilities []string     `json:"capabilities"`
}

// decodeMessage parses one line received from a QMP server. It never panics; any input
// that is not a well-formed greeting, reply or event is an error.
func decodeMessage(line []byte) (message, error) {
	var w wireMessage
	line = bytes.TrimSpace(line)
	if len(line) == 0 || line[0] != '{' {
		return message{}, fmt.Errorf("decoding QMP message: not a JSON object: %.40q", line)
	}
	if err := json.Unmarshal(line, &w); err != nil {
		return message{}, fmt.Errorf("decoding QMP message: %w", err)
	}
	present := 0
	for _, p := range []bool{w.QMP != nil, w.Event != nil, w.Return != nil || w.Error != nil} {
		if p {
			present++
		}
	}
	if present != 1 {
		return message{}, errors.New("decoding QMP message: not exactly one of greeting, event or reply")
	}
	switch {
	case w.QMP != nil:
		if w.QMP.Version == nil {
			return message{}, errors.New("decoding QMP greeting: no version")
		}
		return message{kind: kindGreeting, greeting: Greeting{Version: *w.QMP.Version, Capabilities: w.QMP.Capabilities}}, nil
	case w.Event != nil:
		if *w.Event == "" {
			return message{}, errors.New("decoding QMP event: empty event name")
		}
		ev := Event{Name: *w.Event, Data: w.Data}
		if w.Timestamp != nil {
			ts := w.Timestamp
			if ts.Seconds >= 0 && ts.Microseconds >= 0 && ts.Microseconds < 1e6 {
				ev.Time = time.Unix(ts.Seconds, ts.Microseconds*1000)
			}
		}
		ev.Typed = decodeTyped(ev.Name, ev.Data)
		return message{kind: kindEvent, event: ev}, nil
	default:
		m := message{kind: kindReply, qmpErr: w.Error}
		if w.Error == nil {
			m.ret = w.Return
		}
		if len(w.ID) > 0 && string(w.ID) != "null" {
			id, err := strconv.ParseUint(string(w.ID), 10, 64)
			if err != nil || id == 0 {
				return message{}, fmt.Errorf("decoding QMP reply: id %.40q is not one this client sends", w.ID)
			}
			m.id = id
		}
		return m, nil
	}
}
