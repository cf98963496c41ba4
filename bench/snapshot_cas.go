package bench

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/voltvmm/volt/vmm/api/types"
)

// CASSnapshot is a snapshot whose memory is a manifest in a CAS store: a
// directory holding only the state file, which names the manifest by its
// digest (docs/snapshots.md, "Memory in the CAS"). volt-vmm writes it
// (PUT /snapshot/create with mem_backend Cas, cut at ChunkSize) and
// restores it with `--restore Dir --cas-store Store`.
type CASSnapshot struct {
	Store string
	Dir   string
	// ChunkSize is the chunk size volt-vmm was asked to cut the memory
	// into (mem_backend.chunk_size), or, when it was left to the VMM's
	// default, what the store says; 0 when neither is known.
	ChunkSize int64
	// What the store says of the manifest (volt cas ls), when voltbench
	// was given the volt CLI; zero otherwise.
	Ref, Manifest      string
	Chunks, DataChunks int
	DataBytes          int64
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

// CASStateDir is the directory, under a snapshot's dir, of the state file
// of its CAS snapshot cut at chunkSize: dir/cas-256K; dir/cas for the
// VMM's default (0).
func CASStateDir(dir string, chunkSize int64) string {
	if chunkSize == 0 {
		return filepath.Join(dir, "cas")
	}
	return filepath.Join(dir, "cas-"+FormatChunkSize(chunkSize))
}

// describeCAS fills in what the store holds for c, whose manifest is named
// by the one ref in after that before did not have: volt-vmm names a new
// snapshot's memory itself (snapshot-mem-<memory ID>). A manifest cut at
// another size than c.ChunkSize, which volt-vmm was asked for, is an error:
// the VMM did not honour mem_backend.chunk_size.
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
	if c.ChunkSize != 0 && o.ChunkSize != c.ChunkSize {
		return fmt.Errorf("CAS snapshot: asked volt-vmm for %d-byte chunks (mem_backend.chunk_size), its manifest %s has %d-byte chunks", c.ChunkSize, o.Name, o.ChunkSize)
	}
	c.Ref, c.Manifest, c.ChunkSize, c.Chunks, c.DataChunks, c.DataBytes = o.Name, o.Digest, o.ChunkSize, o.Chunks, o.DataChunks, o.DataBytes
	return nil
}
