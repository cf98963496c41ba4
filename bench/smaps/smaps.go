// Package smaps parses the kernel's per-process memory accounting,
// /proc/PID/smaps_rollup and /proc/PID/smaps, into shared and private
// figures: how much of a VMM's memory its clones share. The text comes from
// the kernel but is parsed as untrusted (a path in a mapping line is the
// user's, the format grows with kernels): every line is checked, sizes are
// bounded, and nothing panics.
package smaps

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Rollup is the part of /proc/PID/smaps_rollup (or of the summed
// mappings of one file in /proc/PID/smaps) that tells shared from private
// memory; every field in kB, as the kernel prints them.
type Rollup struct {
	Rss, Pss                   uint64
	SharedClean, SharedDirty   uint64
	PrivateClean, PrivateDirty uint64
	Anonymous, Swap            uint64
}

// ErrMalformed wraps every reason a smaps text is refused.
var ErrMalformed = errors.New("malformed smaps")

// Limits on what the parsers accept: a real smaps_rollup is ~1 KiB, a
// VMM's smaps a few hundred KiB.
const (
	maxSmapsBytes = 16 << 20
	maxSmapsKB    = 1 << 50 // a petabyte: anything above is not memory
)

// Add adds every field of o to s (totals over processes).
func (s *Rollup) Add(o Rollup) {
	s.Rss += o.Rss
	s.Pss += o.Pss
	s.SharedClean += o.SharedClean
	s.SharedDirty += o.SharedDirty
	s.PrivateClean += o.PrivateClean
	s.PrivateDirty += o.PrivateDirty
	s.Anonymous += o.Anonymous
	s.Swap += o.Swap
}

// field maps the field names this package keeps to their slots.
func (s *Rollup) field(name string) *uint64 {
	switch name {
	case "Rss":
		return &s.Rss
	case "Pss":
		return &s.Pss
	case "Shared_Clean":
		return &s.SharedClean
	case "Shared_Dirty":
		return &s.SharedDirty
	case "Private_Clean":
		return &s.PrivateClean
	case "Private_Dirty":
		return &s.PrivateDirty
	case "Anonymous":
		return &s.Anonymous
	case "Swap":
		return &s.Swap
	}
	return nil
}

// ReadRollup reads and parses /proc/PID/smaps_rollup.
func ReadRollup(pid int) (Rollup, error) {
	path := fmt.Sprintf("/proc/%d/smaps_rollup", pid)
	data, err := os.ReadFile(path)
	if err != nil {
		return Rollup{}, fmt.Errorf("smaps_rollup: %w", err)
	}
	r, err := ParseRollup(data)
	if err != nil {
		return Rollup{}, fmt.Errorf("%s: %w", path, err)
	}
	return r, nil
}

// ParseRollup parses the text of /proc/PID/smaps_rollup: a header
// line ending in "[rollup]", then "Name: value kB" lines. Rss and Pss must
// be there; fields this package does not keep are checked for form only,
// and lines without a number (none today) are skipped, so that newer
// kernels' additions do not break it.
func ParseRollup(data []byte) (Rollup, error) {
	var r Rollup
	if len(data) > maxSmapsBytes {
		return r, fmt.Errorf("%w: %d bytes", ErrMalformed, len(data))
	}
	header, rest, _ := bytes.Cut(data, []byte("\n"))
	if !strings.HasSuffix(strings.TrimSpace(string(header)), "[rollup]") {
		return r, fmt.Errorf("%w: first line %q is not a rollup header", ErrMalformed, truncate(string(header), 80))
	}
	seen := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(rest))
	sc.Buffer(make([]byte, 4096), maxSmapsBytes)
	for n := 2; sc.Scan(); n++ {
		name, kb, ok, err := parseSmapsField(sc.Text())
		if err != nil {
			return r, fmt.Errorf("%w: line %d: %w", ErrMalformed, n, err)
		}
		if !ok {
			continue
		}
		if seen[name] {
			return r, fmt.Errorf("%w: line %d: %s repeated", ErrMalformed, n, name)
		}
		seen[name] = true
		if p := r.field(name); p != nil {
			*p = kb
		}
	}
	if err := sc.Err(); err != nil {
		return r, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	for _, need := range []string{"Rss", "Pss"} {
		if !seen[need] {
			return r, fmt.Errorf("%w: no %s line", ErrMalformed, need)
		}
	}
	return r, nil
}

// ReadOfFile sums, in /proc/PID/smaps, the mappings of the file at
// path (e.g. the guest's memory file).
func ReadOfFile(pid int, path string) (Rollup, error) {
	smaps := fmt.Sprintf("/proc/%d/smaps", pid)
	data, err := os.ReadFile(smaps)
	if err != nil {
		return Rollup{}, fmt.Errorf("smaps: %w", err)
	}
	r, err := ParseOfFile(data, path)
	if err != nil {
		return Rollup{}, fmt.Errorf("%s: %w", smaps, err)
	}
	return r, nil
}

// ParseOfFile sums the fields of every mapping of path in the text of
// /proc/PID/smaps. A mapping header is "start-end perms offset dev inode
// [path]"; the fields follow it. No mapping of path gives zeros.
func ParseOfFile(data []byte, path string) (Rollup, error) {
	var r Rollup
	if len(data) > maxSmapsBytes {
		return r, fmt.Errorf("%w: %d bytes", ErrMalformed, len(data))
	}
	in := false
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 4096), maxSmapsBytes)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if f := strings.Fields(line); len(f) >= 5 && isAddressRange(f[0]) {
			in = len(f) >= 6 && strings.Join(f[5:], " ") == path
			continue
		}
		name, kb, ok, err := parseSmapsField(line)
		if err != nil {
			return r, fmt.Errorf("%w: line %d: %w", ErrMalformed, n, err)
		}
		if !ok || !in {
			continue
		}
		if p := r.field(name); p != nil {
			if *p+kb > maxSmapsKB {
				return r, fmt.Errorf("%w: line %d: %s sums past %d kB", ErrMalformed, n, name, uint64(maxSmapsKB))
			}
			*p += kb
		}
	}
	if err := sc.Err(); err != nil {
		return r, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return r, nil
}

// isAddressRange reports whether s is "hex-hex", a mapping's address range.
func isAddressRange(s string) bool {
	lo, hi, ok := strings.Cut(s, "-")
	if !ok || lo == "" || hi == "" {
		return false
	}
	_, err1 := strconv.ParseUint(lo, 16, 64)
	_, err2 := strconv.ParseUint(hi, 16, 64)
	return err1 == nil && err2 == nil
}

// parseSmapsField reads "Name:   123 kB". ok is false for lines that
// carry no size (VmFlags, THPeligible, ProtectionKey); a line that has no
// "Name:" at all, or a size that is not a number, is an error.
func parseSmapsField(line string) (name string, kb uint64, ok bool, err error) {
	name, value, found := strings.Cut(line, ":")
	if !found || name == "" || strings.ContainsAny(name, " \t") {
		return "", 0, false, fmt.Errorf("%q is not a \"Name: value\" line", truncate(line, 80))
	}
	f := strings.Fields(value)
	if len(f) != 2 || f[1] != "kB" {
		return name, 0, false, nil
	}
	kb, err = strconv.ParseUint(f[0], 10, 64)
	if err != nil || kb > maxSmapsKB {
		return "", 0, false, fmt.Errorf("%s: %q is not a size in kB", name, truncate(f[0], 40))
	}
	return name, kb, true, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
