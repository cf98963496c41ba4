// Package probe builds and describes the probe guest: a tiny PVH guest that
// boots in milliseconds and answers commands on COM1. It is the fixture for
// VMM, snapshot and benchmark tests; see README.md for the protocol.
package probe

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
)

// Layout facts a VMM or test may rely on.
const (
	LoadAddr    = 0x100000 // physical load address of the only PT_LOAD segment
	EntryAddr   = 0x100000 // PVH entry (32-bit protected mode), also in the Xen note
	ScratchBase = 0x400000 // touch/sum pages start here
	PageSize    = 4096
)

// Lines the probe prints, without the trailing "\n".
const (
	ReadyLine    = "volt-probe: ready"
	PoweroffLine = "volt-probe: poweroff"
)

// EnvProbe names an environment variable holding a prebuilt probe.elf;
// when set, Path uses it instead of building.
const EnvProbe = "VOLT_PROBE"

// SourceDir returns the directory holding the probe's sources and build.sh.
func SourceDir() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("probe: cannot locate source directory")
	}
	return filepath.Dir(file), nil
}

// Build runs build.sh to write probe.elf into dir and returns its path.
func Build(ctx context.Context, dir string) (string, error) {
	src, err := SourceDir()
	if err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, filepath.Join(src, "build.sh"), dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("probe: build.sh %s: %w\n%s", dir, err, out)
	}
	return filepath.Join(dir, "probe.elf"), nil
}

// Path returns $VOLT_PROBE if it is set, and otherwise builds the probe
// into dir.
func Path(ctx context.Context, dir string) (string, error) {
	if p := os.Getenv(EnvProbe); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("probe: $%s: %w", EnvProbe, err)
		}
		return p, nil
	}
	return Build(ctx, dir)
}

var bannerRE = regexp.MustCompile(`^volt-probe: booted cpus=([0-9]+) mem=([0-9]+)$`)

// ParseBanner parses the probe's first line, "volt-probe: booted cpus=N
// mem=M", where M is the RAM in the PVH memory map in MiB (rounded down).
func ParseBanner(line string) (cpus, memMiB int, ok bool) {
	m := bannerRE.FindStringSubmatch(line)
	if m == nil {
		return 0, 0, false
	}
	c, err1 := strconv.Atoi(m[1])
	mem, err2 := strconv.Atoi(m[2])
	if err1 != nil || err2 != nil {
		return 0, 0, false
	}
	return c, mem, true
}
