package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
)

// DefaultVoltBin is where scripts/setup puts the volt CLI, relative to the
// repository. voltbench reaches CAS stores only through it (bench imports
// nothing of cas, as it imports nothing of the VMM).
const DefaultVoltBin = "bin/volt"

// ResolveVoltBin returns bin, or the repository's bin/volt when bin is
// empty, checked to be a regular file.
func ResolveVoltBin(bin string) (string, error) {
	if bin == "" {
		var r root
		p, err := r.path(DefaultVoltBin)
		if err != nil {
			return "", err
		}
		bin = p
	}
	if err := regular(bin); err != nil {
		return "", fmt.Errorf("volt CLI: %w (build it: CGO_ENABLED=0 go build -o bin/volt ./cmd/volt, or pass --volt-bin)", err)
	}
	return bin, nil
}

// VoltCAS runs the volt CLI's cas commands on one store, reading their
// --json output.
type VoltCAS struct {
	Bin   string // the volt binary
	Store string // the store directory
}

// CASObject is one entry of `volt cas ls --json` (and of du's objects).
type CASObject struct {
	Name        string `json:"name"`
	Digest      string `json:"digest"`
	Kind        string `json:"kind"`
	Size        int64  `json:"size"`
	ChunkSize   int64  `json:"chunk_size"`
	Chunks      int    `json:"chunks"`
	DataChunks  int    `json:"data_chunks"`
	DataBytes   int64  `json:"data_bytes"`
	UniqueBytes int64  `json:"unique_bytes"`
	Error       string `json:"error"`
}

// CASUsage is `volt cas du --json`: the store's space accounting.
type CASUsage struct {
	Objects           []CASObject `json:"objects"`
	LogicalBytes      int64       `json:"logical_bytes"`
	DataBytes         int64       `json:"data_bytes"`
	ReferencedBytes   int64       `json:"referenced_bytes"`
	StoredBytes       int64       `json:"stored_bytes"`
	ManifestBytes     int64       `json:"manifest_bytes"`
	DiskBytes         int64       `json:"disk_bytes"`
	UnreferencedBytes int64       `json:"unreferenced_bytes"`
	StoredChunks      int         `json:"stored_chunks"`
	Manifests         int         `json:"manifests"`
}

// CASImport is `volt cas import --json`.
type CASImport struct {
	Name        string  `json:"name"`
	Digest      string  `json:"digest"`
	Kind        string  `json:"kind"`
	Size        int64   `json:"size"`
	ChunkSize   int64   `json:"chunk_size"`
	Chunks      int     `json:"chunks"`
	NewChunks   int     `json:"new_chunks"`
	NewBytes    int64   `json:"new_bytes"`
	KnownChunks int     `json:"known_chunks"`
	Holes       int     `json:"holes"`
	Seconds     float64 `json:"seconds"`
}

// run runs `volt cas CMD ARGS --store S --json` and decodes its stdout
// into out. A failure carries the CLI's stderr.
func (v VoltCAS) run(ctx context.Context, out any, args ...string) error {
	if v.Bin == "" || v.Store == "" {
		return errors.New("volt cas: no volt binary or no store")
	}
	full := append([]string{"cas"}, args...)
	full = append(full, "--store", v.Store, "--json")
	cmd := exec.CommandContext(ctx, v.Bin, full...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("volt %s: %w: %s", strings.Join(full, " "), err, strings.TrimSpace(stderr.String()))
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(stdout.Bytes(), out); err != nil {
		return fmt.Errorf("volt %s: output: %w: %q", strings.Join(full, " "), err, truncateBytes(stdout.Bytes(), 200))
	}
	return nil
}

// Import stores file as a memory object named name, cut into chunkSize
// chunks.
func (v VoltCAS) Import(ctx context.Context, file, name string, chunkSize int64) (CASImport, error) {
	var res CASImport
	err := v.run(ctx, &res, "import", file, "--name", name, "--kind", "memory", "--chunk-size", strconv.FormatInt(chunkSize, 10))
	if err == nil && (!isDigest(res.Digest) || res.ChunkSize != chunkSize) {
		err = fmt.Errorf("volt cas import %s: digest %q, chunk size %d: not what was asked", file, res.Digest, res.ChunkSize)
	}
	return res, err
}

// Export writes the object name to file (holes stay holes).
func (v VoltCAS) Export(ctx context.Context, name, file string) error {
	return v.run(ctx, nil, "export", name, file)
}

// List is `volt cas ls`. A damaged entry is an error.
func (v VoltCAS) List(ctx context.Context) ([]CASObject, error) {
	var objs []CASObject
	if err := v.run(ctx, &objs, "ls"); err != nil {
		return nil, err
	}
	for _, o := range objs {
		if o.Error != "" {
			return nil, fmt.Errorf("volt cas ls: %s is damaged: %s", o.Name, o.Error)
		}
	}
	return objs, nil
}

// Usage is `volt cas du`.
func (v VoltCAS) Usage(ctx context.Context) (CASUsage, error) {
	var u CASUsage
	err := v.run(ctx, &u, "du")
	return u, err
}

// isDigest reports whether s is a manifest digest as the CLI prints it: 64
// lowercase hex digits.
func isDigest(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, c := range s {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

func truncateBytes(b []byte, n int) string {
	if len(b) <= n {
		return string(b)
	}
	return string(b[:n]) + "…"
}

// Chunk sizes a CAS object may have (the store's rule, cas.ValidateChunkSize):
// powers of two from 4 KiB to 64 MiB.
const (
	MinCASChunkSize = 4 << 10
	MaxCASChunkSize = 64 << 20
)

// ParseChunkSize reads a chunk size such as 2M, 256K or 65536.
func ParseChunkSize(s string) (int64, error) {
	t := strings.ToUpper(strings.TrimSpace(s))
	t = strings.TrimSuffix(strings.TrimSuffix(t, "IB"), "B")
	mult := int64(1)
	switch {
	case strings.HasSuffix(t, "K"):
		mult, t = 1<<10, t[:len(t)-1]
	case strings.HasSuffix(t, "M"):
		mult, t = 1<<20, t[:len(t)-1]
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n <= 0 || n > MaxCASChunkSize/mult {
		return 0, fmt.Errorf("chunk size %q: want a size such as 2M, 256K or 64K", s)
	}
	n *= mult
	if n < MinCASChunkSize || n&(n-1) != 0 {
		return 0, fmt.Errorf("chunk size %q: want a power of two from 4K to 64M", s)
	}
	return n, nil
}

// FormatChunkSize prints a chunk size as the flags take it: 2M, 256K.
func FormatChunkSize(n int64) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%dM", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%dK", n>>10)
	}
	return strconv.FormatInt(n, 10)
}

// formatMiB prints bytes as MiB with two decimals.
func formatMiB(n int64) string { return fmt.Sprintf("%.2f", float64(n)/(1<<20)) }
