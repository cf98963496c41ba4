package agent

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
	"time"
)

// Magic opens every request; Version is the one this package speaks.
const (
	Magic   = "VAGT"
	Version = 1
)

// Limits a request must keep. Everything fits one frame (MaxPayload).
const (
	requestFixed = 20 // magic, version, argc, envc, flags, timeout, stdin length
	MaxArgs      = 1024
	MaxEnv       = 1024
	// MaxTimeout bounds the time limit a caller may ask for (a day): the
	// field is milliseconds in a u32, which could say 49 days.
	MaxTimeout = 24 * time.Hour
)

// Request is one command for the agent. A request without Args is a ping:
// the agent answers at once with an exit frame of status 0, which is how
// the pool learns that a guest is ready.
type Request struct {
	Args    []string      // argv; Args[0] is looked up in the guest's PATH
	Env     []string      // KEY=VALUE entries added to the agent's environment
	Stdin   []byte        // the command's whole standard input (then EOF)
	Timeout time.Duration // killed after this long; 0: the agent's default
}

// Validate checks what Encode would refuse and Decode would reject.
func (r Request) Validate() error {
	if len(r.Args) > MaxArgs {
		return fmt.Errorf("%d arguments, at most %d", len(r.Args), MaxArgs)
	}
	if len(r.Env) > MaxEnv {
		return fmt.Errorf("%d environment entries, at most %d", len(r.Env), MaxEnv)
	}
	if len(r.Args) > 0 && r.Args[0] == "" {
		return fmt.Errorf("empty command name")
	}
	for i, a := range r.Args {
		if strings.IndexByte(a, 0) >= 0 {
			return fmt.Errorf("argument %d holds a NUL byte", i)
		}
	}
	for i, e := range r.Env {
		if err := validateEnv(e); err != nil {
			return fmt.Errorf("environment entry %d: %w", i, err)
		}
	}
	if r.Timeout < 0 || r.Timeout > MaxTimeout {
		return fmt.Errorf("timeout %v outside 0 to %v", r.Timeout, MaxTimeout)
	}
	if r.Timeout%time.Millisecond != 0 {
		return fmt.Errorf("timeout %v is not a whole number of milliseconds", r.Timeout)
	}
	if n := r.size(); n > MaxPayload {
		return fmt.Errorf("request of %d bytes (arguments, environment and standard input) exceeds the limit of %d", n, MaxPayload)
	}
	return nil
}

func validateEnv(e string) error {
	k, _, ok := strings.Cut(e, "=")
	switch {
	case !ok:
		return fmt.Errorf("%q is not KEY=VALUE", e)
	case k == "":
		return fmt.Errorf("%q has an empty key", e)
	case strings.IndexByte(e, 0) >= 0:
		return fmt.Errorf("holds a NUL byte")
	}
	return nil
}

func (r Request) size() int {
	n := requestFixed + len(r.Stdin)
	for _, a := range r.Args {
		n += 2 + len(a)
	}
	for _, e := range r.Env {
		n += 2 + len(e)
	}
	return n
}

// Encode returns the request frame's payload.
func (r Request) Encode() ([]byte, error) {
	if err := r.Validate(); err != nil {
		return nil, fmt.Errorf("agent request: %w", err)
	}
	b := make([]byte, requestFixed, r.size())
	copy(b[0:4], Magic)
	binary.LittleEndian.PutUint16(b[4:6], Version)
	binary.LittleEndian.PutUint16(b[6:8], uint16(len(r.Args)))
	binary.LittleEndian.PutUint16(b[8:10], uint16(len(r.Env)))
	// b[10:12]: flags, none defined.
	binary.LittleEndian.PutUint32(b[12:16], uint32(r.Timeout/time.Millisecond))
	binary.LittleEndian.PutUint32(b[16:20], uint32(len(r.Stdin)))
	for _, s := range append(append([]string(nil), r.Args...), r.Env...) {
		b = binary.LittleEndian.AppendUint16(b, uint16(len(s)))
		b = append(b, s...)
	}
	return append(b, r.Stdin...), nil
}

// VersionError is a request of a version this package does not speak.
type VersionError struct{ Got uint16 }

func (e *VersionError) Error() string {
	return fmt.Sprintf("%v: request version %d, this agent speaks %d", ErrProtocol, e.Got, Version)
}

func (e *VersionError) Unwrap() error { return ErrProtocol }

// DecodeRequest parses a request frame's payload, as untrusted bytes: every
// length is checked against what remains, and the payload must end exactly
// where the request does.
func DecodeRequest(p []byte) (Request, error) {
	if len(p) < requestFixed {
		return Request{}, protocolError("request of %d bytes, shorter than its fixed part (%d)", len(p), requestFixed)
	}
	if string(p[0:4]) != Magic {
		return Request{}, protocolError("request magic %q, want %q", p[0:4], Magic)
	}
	if v := binary.LittleEndian.Uint16(p[4:6]); v != Version {
		return Request{}, &VersionError{Got: v}
	}
	argc := int(binary.LittleEndian.Uint16(p[6:8]))
	envc := int(binary.LittleEndian.Uint16(p[8:10]))
	if f := binary.LittleEndian.Uint16(p[10:12]); f != 0 {
		return Request{}, protocolError("request flags %#04x: none are defined", f)
	}
	timeout := time.Duration(binary.LittleEndian.Uint32(p[12:16])) * time.Millisecond
	stdinLen := int(binary.LittleEndian.Uint32(p[16:20]))
	if argc > MaxArgs || envc > MaxEnv {
		return Request{}, protocolError("request with %d arguments and %d environment entries (at most %d and %d)", argc, envc, MaxArgs, MaxEnv)
	}
	if timeout > MaxTimeout {
		return Request{}, protocolError("request timeout %v exceeds %v", timeout, MaxTimeout)
	}
	rest := p[requestFixed:]
	strs := make([]string, 0, argc+envc)
	for i := 0; i < argc+envc; i++ {
		if len(rest) < 2 {
			return Request{}, protocolError("request ends inside the length of string %d", i)
		}
		n := int(binary.LittleEndian.Uint16(rest))
		rest = rest[2:]
		if n > len(rest) {
			return Request{}, protocolError("string %d of %d bytes runs past the request (%d left)", i, n, len(rest))
		}
		s := rest[:n]
		if bytes.IndexByte(s, 0) >= 0 {
			return Request{}, protocolError("string %d holds a NUL byte", i)
		}
		strs = append(strs, string(s))
		rest = rest[n:]
	}
	if stdinLen != len(rest) {
		return Request{}, protocolError("request says %d bytes of standard input, %d follow", stdinLen, len(rest))
	}
	r := Request{Timeout: timeout}
	if argc > 0 {
		r.Args = strs[:argc:argc]
		if r.Args[0] == "" {
			return Request{}, protocolError("empty command name")
		}
	}
	if envc > 0 {
		r.Env = strs[argc:]
		for i, e := range r.Env {
			if err := validateEnv(e); err != nil {
				return Request{}, protocolError("environment entry %d: %v", i, err)
			}
		}
	}
	if len(rest) > 0 {
		r.Stdin = append([]byte(nil), rest...)
	}
	return r, nil
}
