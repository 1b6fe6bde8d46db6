package api

import (
	"errors"
	"net/http"
)

// Sentinel error kinds. The server wraps its errors with one of these (fmt.Errorf("...: %w",
// api.ErrNotFound)); ErrorStatus maps them to an HTTP status and Error.Is maps a decoded
// error body back, so errors.Is works the same on both sides of the socket.
var (
	ErrInvalid     = errors.New("invalid request")
	ErrNotFound    = errors.New("not found")
	ErrConflict    = errors.New("conflict")
	ErrForbidden   = errors.New("permission denied")
	ErrTooLarge    = errors.New("request too large")
	ErrPolicy      = errors.New("policy violation")
	ErrUnavailable = errors.New("unavailable")
	ErrInternal    = errors.New("internal error")
)

// Kind names as they travel in Error.Kind.
const (
	KindInvalid     = "invalid"
	KindNotFound    = "not_found"
	KindConflict    = "conflict"
	KindForbidden   = "forbidden"
	KindTooLarge    = "too_large"
	KindPolicy      = "policy"
	KindUnavailable = "unavailable"
	KindInternal    = "internal"
)

var kinds = []struct {
	kind   string
	err    error
	status int
}{
	{KindInvalid, ErrInvalid, http.StatusBadRequest},
	{KindNotFound, ErrNotFound, http.StatusNotFound},
	{KindConflict, ErrConflict, http.StatusConflict},
	{KindForbidden, ErrForbidden, http.StatusForbidden},
	{KindTooLarge, ErrTooLarge, http.StatusRequestEntityTooLarge},
	{KindPolicy, ErrPolicy, http.StatusUnprocessableEntity},
	{KindUnavailable, ErrUnavailable, http.StatusServiceUnavailable},
	{KindInternal, ErrInternal, http.StatusInternalServerError},
}

// Error is the body of every non-2xx response, and the error the client returns for it.
type Error struct {
	// Kind is one of the Kind* constants.
	Kind string `json:"kind"`
	// Message is one line saying what went wrong.
	Message string `json:"error"`
	// Violations lists every broken host-policy rule (Kind "policy" only).
	Violations []Violation `json:"violations,omitempty"`
	// Status is the HTTP status (filled by the client; not sent).
	Status int `json:"-"`
}

func (e *Error) Error() string { return e.Message }

// Is reports whether target is the sentinel for e's kind.
func (e *Error) Is(target error) bool {
	for _, k := range kinds {
		if k.err == target {
			return k.kind == e.Kind
		}
	}
	return false
}

// ErrorKind returns the kind name and HTTP status for err: the first sentinel err wraps,
// else internal/500.
func ErrorKind(err error) (kind string, status int) {
	for _, k := range kinds {
		if errors.Is(err, k.err) {
			return k.kind, k.status
		}
	}
	return KindInternal, http.StatusInternalServerError
}

// KindForStatus maps an HTTP status without a decodable body back to a kind.
func KindForStatus(status int) string {
	for _, k := range kinds {
		if k.status == status {
			return k.kind
		}
	}
	if status >= 400 && status < 500 {
		return KindInvalid
	}
	return KindInternal
}
