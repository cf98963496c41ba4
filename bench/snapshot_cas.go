package bench

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/voltvmm/volt/vmm/api/types"
)

// CASSnapshot is a snapshot whose memory is a manifest in a CAS store: a
// directory holding only the state file, which names the manifest by its
// digest (docs/snapshots.md, "Memory in the CAS"). volt-vmm restores it with
// `--restore Dir --cas-store Store`.
type CASSnapshot struct {
	Store string
	Dir   string
	// What the store says of the manifest (volt cas ls), when voltbench
	// was given the volt CLI; zero otherwise.
	Ref, Manifest      string
	ChunkSize          int64
	Chunks, DataChunks int
	DataBytes          int64
	// Rechunked marks a copy that voltbench cut to another chunk size
	// (RechunkCAS), because volt-vmm's API takes no chunk size yet; false
	// for the snapshot volt-vmm wrote itself.
	Rechunked bool
}

// RestoreArgs are the volt-vmm arguments that restore it, after --restore.
func (c *CASSnapshot) RestoreArgs() []string { return []string{"--cas-store", c.Store} }

// StatePath is its state file.
func (c *CASSnapshot) StatePath() string { return filepath.Join(c.Dir, types.SnapshotStateFile) }

// ChunkName is how tables call its chunk size: "2M", "256K"; "?" unknown.
func (c *CASSnapshot) ChunkName() string {
	if c.ChunkSize == 0 {
		return "?"
	}
	return FormatChunkSize(c.ChunkSize)
}

// describeCAS fills in what the store holds for c, whose manifest is named
// by the one ref in refs that before did not have: volt-vmm names a new
// snapshot's memory itself (snapshot-mem-<memory ID>).
func describeCAS(c *CASSnapshot, before, after []CASObject) error {
	old := map[string]bool{}
	for _, o := range before {
		old[o.Name] = true
	}
	var added []CASObject
	for _, o := range after {
		if !old[o.Name] {
			added = append(added, o)
		}
	}
	if len(added) != 1 {
		names := make([]string, len(added))
		for i, o := range added {
			names[i] = o.Name
		}
		return fmt.Errorf("CAS snapshot: want one new ref in %s, found %d (%s)", c.Store, len(added), strings.Join(names, ", "))
	}
	o := added[0]
	if o.Kind != "memory" || !isDigest(o.Digest) {
		return fmt.Errorf("CAS snapshot: new ref %s is a %q object, manifest %q: not a memory manifest", o.Name, o.Kind, o.Digest)
	}
	c.Ref, c.Manifest, c.ChunkSize, c.Chunks, c.DataChunks, c.DataBytes = o.Name, o.Digest, o.ChunkSize, o.Chunks, o.DataChunks, o.DataBytes
	return nil
}

// RechunkCAS makes a copy of snapshot c whose memory is the same bytes cut
// into chunkSize chunks, in the same store, in a new directory dir.
//
// This is a stopgap: volt-vmm's API has no chunk size (its SnapshotParams
// has one, PUT /snapshot/create does not pass it on), and voltbench may
// import nothing of the VMM. So the memory is exported with the volt CLI,
// imported again at chunkSize as a memory object, and a copy of the state
// file is made that names the new manifest instead of the old one: the
// digest is replaced in place (both are 64 hex digits) and the header's
// SHA-256 recomputed (swapStateManifest). Everything else in the state is
// untouched, and volt-vmm verifies the result as it verifies any snapshot:
// checksum, decoding, and the manifest's kind and size against the state.
// Once `mem_backend` takes a chunk size, voltbench should create each size
// through the API and this goes.
func RechunkCAS(ctx context.Context, volt VoltCAS, c *CASSnapshot, chunkSize int64, dir string) (*CASSnapshot, error) {
	if c.Manifest == "" || c.Ref == "" {
		return nil, errors.New("rechunk: the snapshot's manifest is unknown (run with the volt CLI)")
	}
	if volt.Store != c.Store {
		return nil, fmt.Errorf("rechunk: volt CLI on store %s, snapshot in %s", volt.Store, c.Store)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("rechunk: %w", err)
	}
	raw := filepath.Join(dir, "memory.raw")
	if err := volt.Export(ctx, c.Ref, raw); err != nil {
		return nil, fmt.Errorf("rechunk: %w", err)
	}
	defer os.Remove(raw)
	name := fmt.Sprintf("%s-%s", c.Ref, FormatChunkSize(chunkSize))
	imp, err := volt.Import(ctx, raw, name, chunkSize)
	if err != nil {
		return nil, fmt.Errorf("rechunk: %w", err)
	}
	state, err := os.ReadFile(c.StatePath())
	if err != nil {
		return nil, fmt.Errorf("rechunk: %w", err)
	}
	out, err := swapStateManifest(state, c.Manifest, imp.Digest)
	if err != nil {
		return nil, fmt.Errorf("rechunk %s: %w", c.StatePath(), err)
	}
	objs, err := volt.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("rechunk: %w", err)
	}
	n := &CASSnapshot{Store: c.Store, Dir: dir, Rechunked: true}
	for _, o := range objs {
		if o.Name == name {
			n.Ref, n.Manifest, n.ChunkSize, n.Chunks, n.DataChunks, n.DataBytes = o.Name, o.Digest, o.ChunkSize, o.Chunks, o.DataChunks, o.DataBytes
		}
	}
	if n.Manifest != imp.Digest {
		return nil, fmt.Errorf("rechunk: volt cas ls shows %s as %q, import made %s", name, n.Manifest, imp.Digest)
	}
	if err := os.WriteFile(n.StatePath(), out, 0o600); err != nil {
		return nil, fmt.Errorf("rechunk: %w", err)
	}
	return n, nil
}

// The state file's header as docs/snapshots.md describes it: "VOLTSNAP",
// u16 major and u16 minor version, four reserved bytes, u64 payload length,
// SHA-256 of the payload, all little-endian.
const (
	stateMagic      = "VOLTSNAP"
	stateMajor      = 2
	stateHeaderSize = 8 + 2 + 2 + 4 + 8 + sha256.Size
)

// ErrStateFile wraps every reason swapStateManifest refuses a state file.
var ErrStateFile = errors.New("not a state file voltbench can re-point")

// swapStateManifest returns a copy of state whose payload names manifest
// newDigest where it named oldDigest, with its checksum recomputed. It
// checks the header first (magic, major version, reserved bytes, length,
// checksum) and insists that the old digest occurs exactly once, as a
// quoted string: anything else means the format is not the one this was
// written for, and nothing is changed.
func swapStateManifest(state []byte, oldDigest, newDigest string) ([]byte, error) {
	if !isDigest(oldDigest) || !isDigest(newDigest) {
		return nil, fmt.Errorf("%w: digests %q and %q must be 64 lowercase hex digits", ErrStateFile, oldDigest, newDigest)
	}
	if len(state) < stateHeaderSize || string(state[:len(stateMagic)]) != stateMagic {
		return nil, fmt.Errorf("%w: no %s header", ErrStateFile, stateMagic)
	}
	major, minor := binary.LittleEndian.Uint16(state[8:]), binary.LittleEndian.Uint16(state[10:])
	if major != stateMajor {
		return nil, fmt.Errorf("%w: format %d.%d, this knows %d.x", ErrStateFile, major, minor, stateMajor)
	}
	if binary.LittleEndian.Uint32(state[12:]) != 0 {
		return nil, fmt.Errorf("%w: reserved header bytes are not zero", ErrStateFile)
	}
	payload := state[stateHeaderSize:]
	if n := binary.LittleEndian.Uint64(state[16:]); n != uint64(len(payload)) {
		return nil, fmt.Errorf("%w: header says %d payload bytes, file holds %d", ErrStateFile, n, len(payload))
	}
	if sum := sha256.Sum256(payload); !bytes.Equal(sum[:], state[24:stateHeaderSize]) {
		return nil, fmt.Errorf("%w: checksum mismatch", ErrStateFile)
	}
	old := []byte(`"` + oldDigest + `"`)
	if n := bytes.Count(payload, old); n != 1 {
		return nil, fmt.Errorf("%w: the payload names manifest %s %d times, want once", ErrStateFile, oldDigest, n)
	}
	out := bytes.Clone(state)
	p := out[stateHeaderSize:]
	i := bytes.Index(p, old)
	copy(p[i+1:], newDigest)
	sum := sha256.Sum256(p)
	copy(out[24:], sum[:])
	return out, nil
}
