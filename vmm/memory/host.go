package memory

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// HostBacking is how much memory this host could ever give a guest: its RAM
// plus swap, from /proc/meminfo. Guest memory is mapped without reserving
// it, so a larger VM builds fine and is killed by the OOM killer once the
// guest touches enough of it; asking for one is almost always a typo.
func HostBacking() (uint64, error) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, fmt.Errorf("read host memory size: %w", err)
	}
	return parseMeminfo(b)
}

// parseMeminfo adds MemTotal and SwapTotal (both in kB) from meminfo text.
func parseMeminfo(b []byte) (uint64, error) {
	var total uint64
	found := 0
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok || (name != "MemTotal" && name != "SwapTotal") {
			continue
		}
		fields := strings.Fields(rest)
		if len(fields) != 2 || fields[1] != "kB" {
			return 0, fmt.Errorf("/proc/meminfo: malformed %s line %q", name, sc.Text())
		}
		kb, err := strconv.ParseUint(fields[0], 10, 64)
		if err != nil || kb > 1<<50 {
			return 0, fmt.Errorf("/proc/meminfo: malformed %s value %q", name, fields[0])
		}
		total += kb << 10
		found++
	}
	if found != 2 {
		return 0, fmt.Errorf("/proc/meminfo: no MemTotal and SwapTotal lines")
	}
	return total, nil
}
