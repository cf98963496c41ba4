package voltinit

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ParseMemTotal returns MemTotal from the text of /proc/meminfo, in MiB.
func ParseMemTotal(meminfo []byte) (uint64, error) {
	sc := bufio.NewScanner(bytes.NewReader(meminfo))
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "MemTotal:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("meminfo: MemTotal line %q is not \"N kB\"", sc.Text())
		}
		kb, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("meminfo: MemTotal: %w", err)
		}
		return kb / 1024, nil
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("meminfo: %w", err)
	}
	return 0, errors.New("meminfo: no MemTotal line")
}

// ParseCPUList counts the CPUs in a kernel CPU list such as the text of
// /sys/devices/system/cpu/online ("0-3,5,7-8\n").
func ParseCPUList(list []byte) (int, error) {
	s := strings.TrimSpace(string(list))
	if s == "" {
		return 0, errors.New("cpu list: empty")
	}
	n := 0
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.ParseUint(lo, 10, 16)
		if err != nil {
			return 0, fmt.Errorf("cpu list %q: %w", s, err)
		}
		b := a
		if isRange {
			if b, err = strconv.ParseUint(hi, 10, 16); err != nil {
				return 0, fmt.Errorf("cpu list %q: %w", s, err)
			}
			if b < a {
				return 0, fmt.Errorf("cpu list %q: range %s runs backwards", s, part)
			}
		}
		n += int(b-a) + 1
	}
	return n, nil
}
