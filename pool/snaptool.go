package pool

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"strings"

	"github.com/voltvmm/volt/cas"
)

// The pool never reads a snapshot's state file itself (its format belongs
// to the VMM, which the pool reaches only from outside): what it needs to
// know of one, and the import of a flat snapshot's memory into the CAS,
// come from volt-snapshot, the offline snapshot tool built with volt-vmm.

// snapshotTool runs volt-snapshot.
type snapshotTool struct {
	bin string
}

// stateInfo is what the pool needs to know of a state file.
type stateInfo struct {
	MemoryID string     // 32 hex digits
	Manifest cas.Digest // zero for memory in a file
	Diff     bool
}

// maxToolOutput bounds what is read of the tool's output.
const maxToolOutput = 64 << 10

// run runs the tool and returns its standard output; a failure carries its
// standard error.
func (t snapshotTool) run(ctx context.Context, args ...string) ([]byte, error) {
	if t.bin == "" {
		return nil, errors.New("no volt-snapshot binary configured (voltpool serve --volt-snapshot PATH)")
	}
	var stdout, stderr limitedBuffer
	stdout.max, stderr.max = maxToolOutput, maxToolOutput
	cmd := exec.CommandContext(ctx, t.bin, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = strings.TrimSpace(stdout.String())
		}
		return nil, fmt.Errorf("volt-snapshot %s: %w: %s", strings.Join(args, " "), err, msg)
	}
	return stdout.Bytes(), nil
}

// info describes the state file at path.
func (t snapshotTool) info(ctx context.Context, path string) (stateInfo, error) {
	out, err := t.run(ctx, "info", path)
	if err != nil {
		return stateInfo{}, err
	}
	return parseStateInfo(out)
}

// importMemory moves dir's memory file into store as a manifest named ref
// and rewrites dir's state file to name it (the memory file stays).
func (t snapshotTool) importMemory(ctx context.Context, dir, store, ref string) error {
	_, err := t.run(ctx, "import", dir, store, ref)
	return err
}

// The lines of `volt-snapshot info STATE` the pool reads:
//
//	format 2.0, full snapshot: 1 vCPUs, 64 MiB memory, memory ID <32 hex>, generation <...>
//	memory in a CAS store: manifest <64 hex>
var (
	infoHeadRE     = regexp.MustCompile(`^format [^,]+, (full|diff) snapshot: .*, memory ID ([0-9a-f]{32}), generation `)
	infoManifestRE = regexp.MustCompile(`^memory in a CAS store: manifest ([0-9a-f]{64})$`)
)

// parseStateInfo reads volt-snapshot info's output. Anything it does not
// recognise in the lines it needs is an error, never a guess.
func parseStateInfo(out []byte) (stateInfo, error) {
	var si stateInfo
	if len(out) > maxToolOutput {
		return si, errors.New("volt-snapshot info: output too long")
	}
	head, manifests := 0, 0
	for _, line := range strings.Split(string(out), "\n") {
		if m := infoHeadRE.FindStringSubmatch(line); m != nil {
			head++
			si.Diff, si.MemoryID = m[1] == "diff", m[2]
			continue
		}
		if m := infoManifestRE.FindStringSubmatch(line); m != nil {
			manifests++
			d, err := cas.ParseDigest(m[1])
			if err != nil {
				return stateInfo{}, fmt.Errorf("volt-snapshot info: manifest: %w", err)
			}
			si.Manifest = d
		}
	}
	switch {
	case head != 1:
		return stateInfo{}, fmt.Errorf("volt-snapshot info: %d summary lines, want 1 (a volt-snapshot of another version?): %q", head, truncate(string(out), 200))
	case manifests > 1:
		return stateInfo{}, errors.New("volt-snapshot info: more than one manifest line")
	}
	return si, nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// limitedBuffer keeps the first max bytes written to it and drops the rest
// (a tool that prints without end cannot grow the daemon's memory).
type limitedBuffer struct {
	bytes.Buffer
	max int
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if room := b.max - b.Len(); room > 0 {
		b.Buffer.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}
