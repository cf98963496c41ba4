package agent

import (
	"encoding/binary"
	"fmt"
	"unicode/utf8"
)

// Kind says how a command ended.
type Kind uint8

const (
	Exited   Kind = 0 // the command exited; Code is its exit status
	Signaled Kind = 1 // a signal ended it; Code is the signal number
	NotRun   Kind = 2 // the agent did not run it (bad request, no such command); Message says why
	TimedOut Kind = 3 // killed when the request's time limit passed
)

func (k Kind) String() string {
	switch k {
	case Exited:
		return "exited"
	case Signaled:
		return "signaled"
	case NotRun:
		return "not-run"
	case TimedOut:
		return "timed-out"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

const (
	exitFixed = 8
	// MaxMessage bounds an exit frame's message.
	MaxMessage = 1024
)

// Status is the exit frame: how the command ended.
type Status struct {
	Kind    Kind
	Code    int32
	Message string
}

// Success reports a command that exited with status 0.
func (s Status) Success() bool { return s.Kind == Exited && s.Code == 0 }

func (s Status) String() string {
	switch s.Kind {
	case Exited:
		return fmt.Sprintf("exit status %d", s.Code)
	case Signaled:
		return fmt.Sprintf("killed by signal %d", s.Code)
	}
	if s.Message != "" {
		return s.Kind.String() + ": " + s.Message
	}
	return s.Kind.String()
}

// encode returns the exit frame's payload; a message longer than
// MaxMessage is cut at a rune boundary.
func (s Status) encode() []byte {
	msg := s.Message
	if len(msg) > MaxMessage {
		msg = msg[:MaxMessage]
		for len(msg) > 0 && !utf8.ValidString(msg) {
			msg = msg[:len(msg)-1]
		}
	}
	b := make([]byte, exitFixed, exitFixed+len(msg))
	b[0] = byte(s.Kind)
	binary.LittleEndian.PutUint32(b[4:8], uint32(s.Code))
	return append(b, msg...)
}

// DecodeStatus parses an exit frame's payload.
func DecodeStatus(p []byte) (Status, error) {
	if len(p) < exitFixed {
		return Status{}, protocolError("exit frame of %d bytes, shorter than %d", len(p), exitFixed)
	}
	if p[1] != 0 || p[2] != 0 || p[3] != 0 {
		return Status{}, protocolError("exit frame reserved bytes % x are not zero", p[1:4])
	}
	s := Status{Kind: Kind(p[0]), Code: int32(binary.LittleEndian.Uint32(p[4:8]))}
	if s.Kind > TimedOut {
		return Status{}, protocolError("exit frame of unknown kind %d", p[0])
	}
	msg := p[exitFixed:]
	if len(msg) > MaxMessage {
		return Status{}, protocolError("exit message of %d bytes exceeds %d", len(msg), MaxMessage)
	}
	if !utf8.Valid(msg) {
		return Status{}, protocolError("exit message is not UTF-8")
	}
	s.Message = string(msg)
	return s, nil
}
