package snapshot

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/voltvmm/volt/cas"
	"github.com/voltvmm/volt/internal/hostfile"
	"github.com/voltvmm/volt/vmm/memory"
)

// Memory in the CAS: a snapshot's memory can be stored as a manifest of
// fixed-size chunks (kind memory) instead of a memory file. The state then
// names the manifest by its digest, which is the memory's identity: a
// restore maps each chunk's file MAP_PRIVATE|MAP_FIXED into guest memory,
// so clones of different snapshots share the page cache of every chunk they
// have in common, and a store that does not hold that manifest cannot be
// mistaken for the right memory.

// CASParams says where CreateInCAS writes.
type CASParams struct {
	StatePath string
	Store     *cas.Store
	// Ref names the memory's manifest in the store, so that GC keeps it;
	// "" means "snapshot-mem-<memory ID>".
	Ref string
	// ChunkSize is the chunk size of the manifest; 0 means
	// DefaultMemoryChunkSize.
	ChunkSize int64
	State     *VMState
	Memory    Pages
	// AfterStep, if set, is called after each step (CASSteps).
	AfterStep func(CreateStep)
}

// Steps of CreateInCAS.
const (
	StepChunksStored CreateStep = "chunks-stored" // every chunk and the manifest in the store
	StepRefSet       CreateStep = "ref-set"       // the manifest named
)

// CASSteps lists the steps of CreateInCAS in order.
var CASSteps = []CreateStep{StepChunksStored, StepRefSet, StepStateRenamed}

// DefaultMemoryRef is the ref a snapshot's memory manifest gets.
func DefaultMemoryRef(id MemoryID) string { return "snapshot-mem-" + id.String() }

// CreateInCAS stores guest memory in the CAS and writes the state file
// naming it. Only pages something touched are read; chunks that hold only
// zeros are holes. The manifest is named by a ref before the state file
// appears, so a writer killed at any step leaves the old state (or none),
// never a state whose memory is missing; a kill between the ref and the
// state leaves a ref that `volt cas rm` removes.
func CreateInCAS(ctx context.Context, p CASParams) (MemoryID, cas.Digest, error) {
	step := func(s CreateStep) {
		if p.AfterStep != nil {
			p.AfterStep(s)
		}
	}
	var digest cas.Digest
	id, err := NewMemoryID()
	if err != nil {
		return id, digest, err
	}
	if err := hostfile.CheckCreateTarget("snapshot_path", p.StatePath); err != nil {
		return id, digest, err
	}
	chunkSize := p.ChunkSize
	if chunkSize == 0 {
		chunkSize = DefaultMemoryChunkSize
	}
	if err := cas.ValidateChunkSize(chunkSize); err != nil {
		return id, digest, err
	}
	if chunkSize%memory.PageSize != 0 {
		return id, digest, fmt.Errorf("memory chunks of %d bytes: a chunk must be whole pages", chunkSize)
	}
	ss, err := p.Store.Begin(ctx)
	if err != nil {
		return id, digest, fmt.Errorf("CAS store: %w", err)
	}
	defer ss.Close()
	m, err := storeChunks(ctx, ss, p.Memory, chunkSize)
	if err != nil {
		return id, digest, err
	}
	if digest, err = ss.PutManifest(m); err != nil {
		return id, digest, fmt.Errorf("store the memory manifest: %w", err)
	}
	step(StepChunksStored)
	ref := p.Ref
	if ref == "" {
		ref = DefaultMemoryRef(id)
	}
	if err := ss.SetRef(ref, digest); err != nil {
		return id, digest, fmt.Errorf("name the memory manifest %s: %w", ref, err)
	}
	step(StepRefSet)
	st := *p.State
	st.Memory.ID, st.Memory.Manifest = id, digest.String()
	if err := WriteStateFile(p.StatePath, &st); err != nil {
		return id, digest, err
	}
	step(StepStateRenamed)
	return id, digest, nil
}

// storeChunks puts every chunk of mem that holds a non-zero byte into the
// store and returns the manifest.
func storeChunks(ctx context.Context, ss *cas.Session, mem Pages, chunkSize int64) (*cas.Manifest, error) {
	size := int64(mem.Size())
	m := &cas.Manifest{Kind: cas.KindMemory, ChunkSize: chunkSize, Size: size, Chunks: make([]cas.Digest, cas.NumChunks(size, chunkSize))}
	buf := make([]byte, chunkSize)
	cur, filled := int64(-1), false
	flush := func() error {
		if cur < 0 || !filled {
			return nil
		}
		n := m.ChunkLen(int(cur))
		if !bytes.Equal(buf[:n], zeroChunk(n)) {
			d, _, err := ss.PutChunk(buf[:n])
			if err != nil {
				return fmt.Errorf("store memory chunk %d: %w", cur, err)
			}
			m.Chunks[cur] = d
		}
		clear(buf)
		filled = false
		return nil
	}
	err := mem.DataRuns(func(off uint64, data []byte) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		for len(data) > 0 {
			c := int64(off) / chunkSize
			if c != cur {
				if err := flush(); err != nil {
					return err
				}
				cur = c
			}
			in := int64(off) - c*chunkSize
			n := min(int64(len(data)), chunkSize-in)
			copy(buf[in:in+n], data[:n])
			filled = true
			off += uint64(n)
			data = data[n:]
		}
		return nil
	})
	if err == nil {
		err = flush()
	}
	if err != nil {
		return nil, err
	}
	return m, nil
}

var zeroBuf []byte

func zeroChunk(n int64) []byte {
	if int64(len(zeroBuf)) < n {
		zeroBuf = make([]byte, n)
	}
	return zeroBuf[:n]
}

// MemoryManifest returns the manifest a state's memory is stored as, or
// the zero digest for memory in a file.
func (st *VMState) MemoryManifest() (cas.Digest, error) {
	if st.Memory.Manifest == "" {
		return cas.Digest{}, nil
	}
	d, err := cas.ParseDigest(st.Memory.Manifest)
	if err != nil {
		return d, fmt.Errorf("%w: memory manifest: %v", ErrInvalid, err)
	}
	return d, nil
}

// ErrNoStore is returned for a snapshot whose memory is in the CAS when no
// store is given.
var ErrNoStore = errors.New("the snapshot's memory is in a CAS store: give the store (mem_backend {\"backend_type\": \"Cas\", \"backend_path\": STORE})")

// OpenCASMemory checks the state's memory manifest in store and returns the
// chunk files to map and a lease that keeps them from garbage collection
// while the VM uses them (release it when the VM ends). Every chunk is
// verified as it is opened (cas.Store.ChunkFile), the chunks of a manifest
// in parallel over workers goroutines.
func OpenCASMemory(ctx context.Context, store *cas.Store, st *VMState, workers int) ([]memory.Chunk, *cas.Lease, error) {
	d, err := st.MemoryManifest()
	if err != nil {
		return nil, nil, err
	}
	if d.IsZero() {
		return nil, nil, errors.New("the snapshot's memory is in a file, not in the CAS")
	}
	m, err := store.ReadManifest(ctx, d)
	if err != nil {
		return nil, nil, fmt.Errorf("memory manifest %s: %w", d, err)
	}
	switch {
	case m.Kind != cas.KindMemory:
		return nil, nil, fmt.Errorf("manifest %s is not a memory manifest (kind %v)", d, m.Kind)
	case uint64(m.Size) != st.Memory.Size:
		return nil, nil, fmt.Errorf("memory manifest %s holds %d bytes, the state describes %d", d, m.Size, st.Memory.Size)
	case m.ChunkSize%memory.PageSize != 0:
		return nil, nil, fmt.Errorf("memory manifest %s has %d-byte chunks, not whole pages", d, m.ChunkSize)
	}
	lease, err := store.Lease(ctx, cas.LeaseOptions{}, d)
	if err != nil {
		return nil, nil, fmt.Errorf("lease memory manifest %s: %w", d, err)
	}
	var idx []int
	for i, c := range m.Chunks {
		if !c.IsZero() {
			idx = append(idx, i)
		}
	}
	chunks := make([]memory.Chunk, len(idx))
	errs := make([]error, len(idx))
	next := make(chan int)
	done := make(chan struct{})
	workers = max(1, min(workers, len(idx)))
	for range workers {
		go func() {
			defer func() { done <- struct{}{} }()
			for j := range next {
				i := idx[j]
				n := m.ChunkLen(i)
				f, err := store.ChunkFile(ctx, m.Chunks[i], n)
				if err != nil {
					errs[j] = fmt.Errorf("memory manifest %s chunk %d: %w", d, i, err)
					continue
				}
				// The last chunk may end inside a page only if the memory
				// did, and it does not: sizes are whole pages.
				chunks[j] = memory.Chunk{Offset: uint64(int64(i) * m.ChunkSize), Length: uint64(n), File: f}
			}
		}()
	}
	for j := range idx {
		next <- j
	}
	close(next)
	for range workers {
		<-done
	}
	if err := errors.Join(errs...); err != nil {
		for _, c := range chunks {
			if c.File != nil {
				c.File.Close()
			}
		}
		lease.Release()
		return nil, nil, err
	}
	return chunks, lease, nil
}

// DefaultMemoryChunkSize cuts memory snapshots into 256 KiB chunks, not
// the store's 2 MiB: ten snapshots of one template store 1.26× one
// snapshot at 256 KiB against 2.44× at 2 MiB (each snapshot differs in a
// few of the guest's own pages, a whole chunk apiece), and restores from
// either were alike (`voltbench dedup`, `voltbench restore --chunk-size
// 2M,256K,64K`, bench/README.md). 2 MiB chunks bought no huge pages: a
// chunk file mapped MAP_PRIVATE without MADV_HUGEPAGE, as volt-vmm maps
// them, is never PMD-mapped under THP "madvise" (FilePmdMapped 0 kB).
const DefaultMemoryChunkSize = 256 << 10

// ImportMemory moves a snapshot's memory file into store: the RAM bytes
// become a memory manifest (named ref, or DefaultMemoryRef) of chunkSize
// chunks (0: DefaultMemoryChunkSize), and the state file is rewritten to
// name it. The memory file is left as it was; the state no longer needs it.
func ImportMemory(ctx context.Context, store *cas.Store, statePath, memPath, ref string, chunkSize int64) (cas.Digest, error) {
	var d cas.Digest
	if chunkSize == 0 {
		chunkSize = DefaultMemoryChunkSize
	}
	st, err := ReadStateFile(statePath)
	if err != nil {
		return d, err
	}
	if st.Memory.Diff {
		return d, fmt.Errorf("%s is a diff snapshot: merge it onto its base before importing it", statePath)
	}
	if st.Memory.Manifest != "" {
		return d, fmt.Errorf("%s already has its memory in a CAS store (manifest %s)", statePath, st.Memory.Manifest)
	}
	f, err := OpenMemory(memPath, st.Memory.ID, st.Memory.Size)
	if err != nil {
		return d, err
	}
	defer f.Close()
	ss, err := store.Begin(ctx)
	if err != nil {
		return d, fmt.Errorf("CAS store: %w", err)
	}
	defer ss.Close()
	res, err := ss.Import(ctx, io.NewSectionReader(f, 0, int64(st.Memory.Size)), cas.ImportOptions{ChunkSize: chunkSize, Kind: cas.KindMemory})
	if err != nil {
		return d, fmt.Errorf("import %s: %w", memPath, err)
	}
	d = res.Digest
	if ref == "" {
		ref = DefaultMemoryRef(st.Memory.ID)
	}
	if err := ss.SetRef(ref, d); err != nil {
		return d, err
	}
	st.Memory.Manifest = d.String()
	return d, WriteStateFile(statePath, st)
}
