package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/voltvmm/volt/bench/smaps"
)

// readMappingsOf sums, in /proc/PID/smaps, the mappings whose path match
// accepts: the guest memory of a clone is one memory file, or many chunk
// files of a CAS store.
func readMappingsOf(pid int, match func(path string) bool) (smaps.Rollup, error) {
	path := fmt.Sprintf("/proc/%d/smaps", pid)
	data, err := os.ReadFile(path)
	if err != nil {
		return smaps.Rollup{}, fmt.Errorf("smaps: %w", err)
	}
	r, err := parseMappingsOf(data, match)
	if err != nil {
		return smaps.Rollup{}, fmt.Errorf("%s: %w", path, err)
	}
	return r, nil
}

// selected is the one mapping path parseMappingsOf hands to smaps: no real
// mapping can have it, since it is not absolute.
const selected = "voltbench:selected"

// parseMappingsOf keeps, of a /proc/PID/smaps text, the field lines of the
// mappings whose path match accepts, under one header of its own, and lets
// smaps.ParseOfFile check and sum them: this only tells header lines from
// field lines, and every field line kept is parsed there as untrusted text.
func parseMappingsOf(data []byte, match func(path string) bool) (smaps.Rollup, error) {
	var kept bytes.Buffer
	kept.WriteString("0-0 r--p 00000000 00:00 0 " + selected + "\n")
	in := false
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 4096), 16<<20)
	for sc.Scan() {
		line := sc.Text()
		if f := strings.Fields(line); len(f) >= 5 && isAddressRange(f[0]) {
			in = len(f) >= 6 && match(strings.Join(f[5:], " "))
			continue
		}
		if in {
			kept.WriteString(line)
			kept.WriteByte('\n')
		}
	}
	if err := sc.Err(); err != nil {
		return smaps.Rollup{}, fmt.Errorf("%w: %w", smaps.ErrMalformed, err)
	}
	return smaps.ParseOfFile(kept.Bytes(), selected)
}

// isAddressRange reports whether s is "hex-hex", a mapping's address range
// (as bench/smaps decides it).
func isAddressRange(s string) bool {
	lo, hi, ok := strings.Cut(s, "-")
	if !ok || lo == "" || hi == "" {
		return false
	}
	_, err1 := strconv.ParseUint(lo, 16, 64)
	_, err2 := strconv.ParseUint(hi, 16, 64)
	return err1 == nil && err2 == nil
}
