package boot

import (
	"errors"
	"fmt"
	"strings"
)

// DefaultCmdlineMax is the longest command line (without its NUL) for
// kernels that do not state a limit: PVH and plain ELF images. x86 Linux's
// COMMAND_LINE_SIZE is 2048 including the NUL, and it silently truncates
// longer lines, which is worse than refusing them.
const DefaultCmdlineMax = 2047

var (
	// ErrCmdlineTooLong is returned when the command line exceeds the
	// kernel's limit.
	ErrCmdlineTooLong = errors.New("kernel command line too long")
	// ErrCmdlineInvalid is returned for bytes or syntax the kernel's parser
	// would misread.
	ErrCmdlineInvalid = errors.New("invalid kernel command line")
)

// Cmdline builds a kernel command line and keeps it within a length limit.
// The zero value has no room; use NewCmdline.
type Cmdline struct {
	max int
	b   []byte
}

// NewCmdline returns an empty command line that may grow to max bytes (not
// counting the terminating NUL).
func NewCmdline(max int) *Cmdline {
	return &Cmdline{max: max}
}

// Append adds key=value. A value containing spaces is quoted, as Linux's
// parameter parser expects; an empty value adds the bare key (a flag such
// as "quiet"). Quotes cannot be escaped in Linux's syntax, so a value with a
// '"' is refused rather than mangled.
func (c *Cmdline) Append(key, value string) error {
	if key == "" {
		return fmt.Errorf("%w: empty parameter name", ErrCmdlineInvalid)
	}
	if err := checkPrintable(key); err != nil {
		return err
	}
	if strings.ContainsAny(key, " =\"") {
		return fmt.Errorf("%w: parameter name %q contains a space, '=' or '\"'", ErrCmdlineInvalid, key)
	}
	if err := checkPrintable(value); err != nil {
		return err
	}
	if strings.Contains(value, `"`) {
		return fmt.Errorf("%w: value of %s contains '\"', which the kernel cannot unescape", ErrCmdlineInvalid, key)
	}
	param := key
	switch {
	case value == "":
	case strings.Contains(value, " "):
		param = key + `="` + value + `"`
	default:
		param = key + "=" + value
	}
	return c.add(param)
}

// AppendRaw adds pre-formatted parameters, such as a user-supplied line.
// Empty input adds nothing.
func (c *Cmdline) AppendRaw(s string) error {
	if s == "" {
		return nil
	}
	if err := checkPrintable(s); err != nil {
		return err
	}
	if strings.Count(s, `"`)%2 != 0 {
		return fmt.Errorf("%w: unbalanced '\"' in %q", ErrCmdlineInvalid, s)
	}
	return c.add(s)
}

func (c *Cmdline) add(param string) error {
	n := len(c.b) + len(param)
	if len(c.b) > 0 {
		n++
	}
	if n > c.max {
		return fmt.Errorf("%w: %d bytes, the kernel accepts at most %d", ErrCmdlineTooLong, n, c.max)
	}
	if len(c.b) > 0 {
		c.b = append(c.b, ' ')
	}
	c.b = append(c.b, param...)
	return nil
}

// String returns the command line as built.
func (c *Cmdline) String() string { return string(c.b) }

// Len is the length in bytes, without the NUL.
func (c *Cmdline) Len() int { return len(c.b) }

// Max is the limit given to NewCmdline.
func (c *Cmdline) Max() int { return c.max }

// bytesZ returns the line with its terminating NUL, as it goes into memory.
func (c *Cmdline) bytesZ() []byte {
	out := make([]byte, len(c.b)+1)
	copy(out, c.b)
	return out
}

// checkPrintable refuses anything but printable ASCII: a NUL would end the
// line early in the kernel's eyes, and control characters or UTF-8 are
// almost always a quoting mistake in the caller.
func checkPrintable(s string) error {
	for i := 0; i < len(s); i++ {
		if b := s[i]; b < 0x20 || b > 0x7e {
			return fmt.Errorf("%w: byte %#02x at offset %d is not printable ASCII", ErrCmdlineInvalid, b, i)
		}
	}
	return nil
}
