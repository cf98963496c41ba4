package cas

import (
	"errors"
	"fmt"
	"strings"
)

// MaxRefNameLen bounds ref names, well under any file-name limit.
const MaxRefNameLen = 128

// ErrBadRefName is wrapped by every ref-name validation error.
var ErrBadRefName = errors.New("invalid ref name")

// ValidateRefName checks a human name for a manifest. A name is 1 to 128
// bytes of ASCII letters, digits and ". _ - + : @", starting with a letter or
// digit, with no "..". Names become file names under refs/, so this is what
// keeps a name from reaching outside that directory: no "/", no ".", no
// "..", no NUL, nothing a shell or a terminal would misread.
func ValidateRefName(name string) error {
	if name == "" {
		return fmt.Errorf("%w: empty", ErrBadRefName)
	}
	if len(name) > MaxRefNameLen {
		return fmt.Errorf("%w: %d bytes, the limit is %d", ErrBadRefName, len(name), MaxRefNameLen)
	}
	if !isAlnum(name[0]) {
		return fmt.Errorf("%w %q: must start with a letter or digit", ErrBadRefName, truncateForError(name))
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !isAlnum(c) && !strings.ContainsRune("._-+:@", rune(c)) {
			return fmt.Errorf("%w %q: byte %d (%q) is not allowed; use letters, digits and . _ - + : @", ErrBadRefName, truncateForError(name), i, c)
		}
	}
	if strings.Contains(name, "..") {
		return fmt.Errorf("%w %q: contains \"..\"", ErrBadRefName, truncateForError(name))
	}
	return nil
}

func isAlnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

// A ref file holds the manifest digest as 64 lowercase hex digits and a
// newline, nothing else.
const refFileSize = 2*DigestSize + 1

// ErrBadRef is wrapped by every ref-file parse error.
var ErrBadRef = errors.New("malformed ref file")

// EncodeRef returns the content of a ref file naming d.
func EncodeRef(d Digest) []byte { return []byte(d.String() + "\n") }

// ParseRef decodes a ref file.
func ParseRef(b []byte) (Digest, error) {
	if len(b) != refFileSize || b[len(b)-1] != '\n' {
		return Digest{}, fmt.Errorf("%w: want 64 hex digits and a newline (%d bytes), have %d bytes", ErrBadRef, refFileSize, len(b))
	}
	d, err := ParseDigest(string(b[:len(b)-1]))
	if err != nil {
		return Digest{}, fmt.Errorf("%w: %v", ErrBadRef, err)
	}
	if d.IsZero() {
		return Digest{}, fmt.Errorf("%w: the zero digest names no manifest", ErrBadRef)
	}
	return d, nil
}
