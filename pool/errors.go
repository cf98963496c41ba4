package pool

import (
	"errors"
	"fmt"
)

// Kinds of error a caller branches on (the API maps each to its status).
var (
	ErrBadRequest  = errors.New("bad request")             // 400
	ErrForbidden   = errors.New("forbidden")               // 403
	ErrNotFound    = errors.New("not found")               // 404
	ErrExists      = errors.New("already exists")          // 409
	ErrGone        = errors.New("gone")                    // 410
	ErrUnavailable = errors.New("temporarily unavailable") // 503
)

// kindError carries its message as is and unwraps to its kind, so the
// message reads naturally and errors.Is still works.
type kindError struct {
	kind error
	msg  string
}

func (e *kindError) Error() string { return e.msg }
func (e *kindError) Unwrap() error { return e.kind }

func errorf(kind error, format string, args ...any) error {
	return &kindError{kind: kind, msg: fmt.Sprintf(format, args...)}
}
