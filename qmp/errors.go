package qmp

import (
	"errors"
	"fmt"
)

// Error is an error reply from QEMU: {"error": {"class": ..., "desc": ...}}. It keeps both
// fields so callers can branch on the class. Commands return it wrapped; match it with
//
//	var qe *qmp.Error
//	if errors.As(err, &qe) && qe.Class == qmp.ClassCommandNotFound { ... }
type Error struct {
	// Class is QEMU's ErrorClass: "GenericError", "CommandNotFound", "DeviceNotActive",
	// "DeviceNotFound", "KVMMissingCap" (qapi/error.json).
	Class string `json:"class"`
	// Desc is QEMU's human-readable description.
	Desc string `json:"desc"`
}

// QMP error classes (qapi/error.json, QEMU 10.0).
const (
	ClassGenericError    = "GenericError"
	ClassCommandNotFound = "CommandNotFound"
	ClassDeviceNotActive = "DeviceNotActive"
	ClassDeviceNotFound  = "DeviceNotFound"
	ClassKVMMissingCap   = "KVMMissingCap"
)

// Error returns "QEMU <class>: <desc>".
func (e *Error) Error() string {
	class := e.Class
	if class == "" {
		class = "error"
	}
	return fmt.Sprintf("QEMU %s: %s", class, e.Desc)
}

var (
	// ErrClosed is returned (wrapped) by every call on a Client whose connection has
	// ended, by Close or because QEMU went away or sent something unparseable; Client.Err
	// says which.
	ErrClosed = errors.New("QMP connection closed")

	// ErrNoGreeting is returned (wrapped, together with the context's error) when the
	// QMP greeting does not arrive before the context ends. The message says why, as
	// far as the socket table tells: QEMU serves one QMP client per monitor socket and
	// does not accept a second one until the first disconnects (then the error also
	// wraps ErrMonitorBusy); a QEMU that accepted the connection and sent nothing, or
	// that accepts nothing while no one holds the monitor, is hung or stopped.
	ErrNoGreeting = errors.New("no QMP greeting before the deadline")

	// ErrMonitorBusy is wrapped with ErrNoGreeting when the connection was not accepted
	// because another client holds the monitor.
	ErrMonitorBusy = errors.New("another QMP client holds the monitor (QEMU serves one client per socket)")

	// ErrDisconnected is the cause recorded when QEMU closes the connection (it exited,
	// or quit ran).
	ErrDisconnected = errors.New("QEMU closed the QMP connection")

	// ErrMessageTooLarge is the cause recorded when QEMU sends a single message longer
	// than Options.MaxMessageBytes; the connection is closed.
	ErrMessageTooLarge = errors.New("QMP message too large")
)
