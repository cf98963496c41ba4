package snapshot

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/voltvmm/volt/internal/hostfile"
	"github.com/voltvmm/volt/vmm/memory"
)

// MemoryID identifies one snapshot's memory file.
type MemoryID [16]byte

// NewMemoryID returns a random ID.
func NewMemoryID() (MemoryID, error) {
	var id MemoryID
	if _, err := rand.Read(id[:]); err != nil {
		return id, fmt.Errorf("memory ID: %w", err)
	}
	return id, nil
}

// IsZero reports the zero ID, which no memory file has.
func (id MemoryID) IsZero() bool { return id == MemoryID{} }

func (id MemoryID) String() string { return hex.EncodeToString(id[:]) }

// MarshalText writes the ID as 32 hex digits.
func (id MemoryID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText reads 32 hex digits.
func (id *MemoryID) UnmarshalText(b []byte) error {
	if len(b) != 2*len(id) {
		return fmt.Errorf("memory ID %q is not %d hex digits", truncate(b), 2*len(id))
	}
	if _, err := hex.Decode(id[:], b); err != nil {
		return fmt.Errorf("memory ID %q: %w", truncate(b), err)
	}
	return nil
}

func truncate(b []byte) string {
	if len(b) > 40 {
		return string(b[:40]) + "..."
	}
	return string(b)
}

// The memory file's trailer: one page after the RAM bytes.
//
//	0    magic "VOLTMEM\x00"
//	8    version u16 (1)
//	10   kind u8 (1 full, 2 diff)
//	11   state u8 (0 complete, 1 merge in progress)
//	12   reserved u32 (zero)
//	16   RAM size u64
//	24   ID [16]
//	40   while merging: the ID the file had before the merge [16]
//	56   zero up to the checksum
//	4064 SHA-256 of bytes 0..4063
const (
	trailerMagic   = "VOLTMEM\x00"
	trailerVersion = 1
	// TrailerSize is what a memory file holds beyond guest RAM.
	TrailerSize = memory.PageSize
	trailerSum  = TrailerSize - sha256.Size
)

// MemoryKind says what a memory file holds.
type MemoryKind uint8

const (
	// FullMemory holds all of guest RAM (zero pages as holes).
	FullMemory MemoryKind = 1
	// DiffMemory holds the pages dirtied since its base; the rest are holes
	// that mean "as in the base", not zero.
	DiffMemory MemoryKind = 2
)

func (k MemoryKind) String() string {
	switch k {
	case FullMemory:
		return "full"
	case DiffMemory:
		return "diff"
	}
	return fmt.Sprintf("kind %d", uint8(k))
}

// Trailer is a memory file's self-description.
type Trailer struct {
	Kind MemoryKind
	// Merging is set while a diff is being merged into this file: its
	// pages are neither the old snapshot's nor the new one's.
	Merging bool
	Size    uint64
	ID      MemoryID
	// MergeFrom is the ID before the merge, while Merging.
	MergeFrom MemoryID
}

// Errors of memory files.
var (
	ErrNotMemoryFile = errors.New("not a Volt snapshot memory file (no trailer)")
	ErrWrongMemory   = errors.New("the memory file belongs to another snapshot")
)

func (t Trailer) encode() []byte {
	b := make([]byte, TrailerSize)
	copy(b, trailerMagic)
	binary.LittleEndian.PutUint16(b[8:], trailerVersion)
	b[10] = byte(t.Kind)
	if t.Merging {
		b[11] = 1
	}
	binary.LittleEndian.PutUint64(b[16:], t.Size)
	copy(b[24:], t.ID[:])
	copy(b[40:], t.MergeFrom[:])
	sum := sha256.Sum256(b[:trailerSum])
	copy(b[trailerSum:], sum[:])
	return b
}

// DecodeTrailer checks and decodes a trailer page.
func DecodeTrailer(b []byte) (Trailer, error) {
	var t Trailer
	if len(b) != TrailerSize || string(b[:8]) != trailerMagic {
		return t, ErrNotMemoryFile
	}
	sum := sha256.Sum256(b[:trailerSum])
	if !bytes.Equal(sum[:], b[trailerSum:]) {
		return t, fmt.Errorf("%w: memory file trailer checksum mismatch", ErrChecksum)
	}
	if v := binary.LittleEndian.Uint16(b[8:]); v != trailerVersion {
		return t, fmt.Errorf("%w: memory file trailer version %d, this volt-vmm reads %d", ErrVersion, v, trailerVersion)
	}
	t.Kind = MemoryKind(b[10])
	if t.Kind != FullMemory && t.Kind != DiffMemory {
		return t, fmt.Errorf("%w: memory file of unknown kind %d", ErrInvalid, b[10])
	}
	switch b[11] {
	case 0:
	case 1:
		t.Merging = true
	default:
		return t, fmt.Errorf("%w: memory file trailer state %d", ErrInvalid, b[11])
	}
	if binary.LittleEndian.Uint32(b[12:]) != 0 || !allZero(b[56:trailerSum]) {
		return t, fmt.Errorf("%w: memory file trailer has non-zero reserved bytes", ErrInvalid)
	}
	t.Size = binary.LittleEndian.Uint64(b[16:])
	copy(t.ID[:], b[24:40])
	copy(t.MergeFrom[:], b[40:56])
	if t.ID.IsZero() || t.Size == 0 || t.Size%memory.PageSize != 0 || t.Merging == t.MergeFrom.IsZero() {
		return t, fmt.Errorf("%w: memory file trailer is inconsistent", ErrInvalid)
	}
	return t, nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// ReadTrailer reads the trailer of an open memory file, checking that the
// file is exactly RAM plus trailer.
func ReadTrailer(f *os.File) (Trailer, error) {
	st, err := f.Stat()
	if err != nil {
		return Trailer{}, fmt.Errorf("stat memory file %s: %w", f.Name(), err)
	}
	if st.Size() < TrailerSize+memory.PageSize {
		return Trailer{}, fmt.Errorf("memory file %s: %w", f.Name(), ErrNotMemoryFile)
	}
	b := make([]byte, TrailerSize)
	if _, err := f.ReadAt(b, st.Size()-TrailerSize); err != nil {
		return Trailer{}, fmt.Errorf("read memory file %s: %w", f.Name(), err)
	}
	t, err := DecodeTrailer(b)
	if err != nil {
		return t, fmt.Errorf("memory file %s: %w", f.Name(), err)
	}
	if uint64(st.Size()) != t.Size+TrailerSize {
		return t, fmt.Errorf("memory file %s: %w: %d bytes, its trailer describes %d bytes of RAM", f.Name(), ErrTruncated, st.Size(), t.Size)
	}
	return t, nil
}

func writeTrailer(f *os.File, t Trailer) error {
	if _, err := f.WriteAt(t.encode(), int64(t.Size)); err != nil {
		return fmt.Errorf("write memory file trailer: %w", err)
	}
	return nil
}

// OpenMemory opens the memory file of a full snapshot whose state names id
// and RAM size, and checks its trailer: the file that is checked is the file
// that will be mapped. It refuses a diff, a file of another snapshot and a
// file a killed merge left behind.
func OpenMemory(path string, id MemoryID, size uint64) (*os.File, error) {
	f, t, err := OpenRestorableMemory(path)
	if err != nil {
		return nil, err
	}
	if err := t.Matches(path, id, size); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// OpenRestorableMemory opens a memory file and checks that it can be
// restored at all (a complete full snapshot), before its state file is
// decoded: a restore maps it while the state decodes, and then checks the
// pair with Matches before anything of the guest runs.
func OpenRestorableMemory(path string) (*os.File, Trailer, error) {
	f, err := hostfile.Open("memory file", path)
	if err != nil {
		return nil, Trailer{}, err
	}
	t, err := ReadTrailer(f)
	switch {
	case err != nil:
	case t.Merging:
		err = fmt.Errorf("memory file %s: a merge into it did not finish; run volt-snapshot merge again with the same diff", path)
	case t.Kind != FullMemory:
		err = fmt.Errorf("memory file %s holds a diff snapshot, which must be merged onto its base before a restore", path)
	}
	if err != nil {
		f.Close()
		return nil, t, err
	}
	return f, t, nil
}

// Matches checks a trailer against what a state file says of its memory.
func (t Trailer) Matches(path string, id MemoryID, size uint64) error {
	switch {
	case t.Merging:
		return fmt.Errorf("memory file %s: a merge into it did not finish; run volt-snapshot merge again with the same diff", path)
	case t.Kind != FullMemory:
		return fmt.Errorf("memory file %s holds a diff snapshot, which must be merged onto its base before a restore", path)
	case t.ID != id:
		return fmt.Errorf("memory file %s: %w (its ID is %s, the state names %s): the state and memory files are not a pair", path, ErrWrongMemory, t.ID, id)
	case t.Size != size:
		return fmt.Errorf("memory file %s holds %d bytes of RAM, the state describes %d", path, t.Size, size)
	}
	return nil
}

// Pages is guest memory as a snapshot reads it; *memory.Memory is one.
type Pages interface {
	Size() uint64
	Mapping() []byte
	DataRuns(fn func(off uint64, data []byte) error) error
}

var _ Pages = (*memory.Memory)(nil)

var zeroPage [memory.PageSize]byte

// writeFullMemory writes every non-zero page of mem at its offset; the rest
// stay holes, so a freshly booted guest's file (and every clone's page
// cache) is small.
func writeFullMemory(f *os.File, mem Pages) error {
	if err := f.Truncate(int64(mem.Size())); err != nil {
		return err
	}
	return mem.DataRuns(func(off uint64, data []byte) error {
		return writeNonZero(f, off, data, func(uint64) bool { return true })
	})
}

// writeDiffMemory writes the pages set in dirty (one bit per page). A merge
// copies every dirty page and a hole reads as zero, so a dirty page the guest
// zeroed may stay a hole like any zero page; clean pages are never read.
func writeDiffMemory(f *os.File, mem Pages, dirty []uint64) error {
	pages := mem.Size() / memory.PageSize
	if uint64(len(dirty)) != (pages+63)/64 {
		return fmt.Errorf("dirty bitmap of %d words for %d pages", len(dirty), pages)
	}
	if err := f.Truncate(int64(mem.Size())); err != nil {
		return err
	}
	mapping := mem.Mapping()
	isDirty := func(p uint64) bool { return dirty[p/64]&(1<<(p%64)) != 0 }
	for p := uint64(0); p < pages; p++ {
		if !isDirty(p) {
			continue
		}
		off := p * memory.PageSize
		if err := writeNonZero(f, off, mapping[off:off+memory.PageSize], isDirty); err != nil {
			return err
		}
	}
	return nil
}

// writeNonZero writes the pages of data (at file offset off) that want
// accepts and that are not all zero.
func writeNonZero(f *os.File, off uint64, data []byte, want func(page uint64) bool) error {
	for i := uint64(0); i < uint64(len(data)); i += memory.PageSize {
		page := data[i:min(i+memory.PageSize, uint64(len(data)))]
		p := (off + i) / memory.PageSize
		if !want(p) || bytes.Equal(page, zeroPage[:len(page)]) {
			continue
		}
		if _, err := f.WriteAt(page, int64(off+i)); err != nil {
			return err
		}
	}
	return nil
}

// CreateStep names a point in Create, for tests that kill the writer there.
type CreateStep string

const (
	StepMemoryWritten CreateStep = "memory-written" // memory and trailer in a pending file, synced
	StepStateWritten  CreateStep = "state-written"  // state in a pending file, synced
	StepMemoryRenamed CreateStep = "memory-renamed" // memory under its name; the old state no longer matches it
	StepStateRenamed  CreateStep = "state-renamed"  // both under their names
	StepSynced        CreateStep = "synced"         // directories synced
)

// CreateSteps lists the steps in order.
var CreateSteps = []CreateStep{StepMemoryWritten, StepStateWritten, StepMemoryRenamed, StepStateRenamed, StepSynced}

// CreateParams says what Create writes where.
type CreateParams struct {
	StatePath, MemPath string
	// State is written with Memory.ID set to a new ID (returned). For a
	// diff, the caller sets Memory.Diff, DirtyBitmap and BaseID.
	State  *VMState
	Memory Pages
	// AfterStep, if set, is called after each step.
	AfterStep func(CreateStep)
}

// Create writes a snapshot so that a writer killed at any point never leaves
// a pair that loads as anything but the old snapshot or the new one: both
// files are written and synced under temporary names first, then the memory
// is renamed into place (from here the old state refuses it), then the
// state. It returns the new memory ID.
func Create(p CreateParams) (MemoryID, error) {
	if p.StatePath == "" || p.MemPath == "" {
		return MemoryID{}, errors.New("snapshot needs both a state path and a memory path")
	}
	step := func(s CreateStep) {
		if p.AfterStep != nil {
			p.AfterStep(s)
		}
	}
	id, err := NewMemoryID()
	if err != nil {
		return id, err
	}
	st := *p.State
	st.Memory.ID = id
	stateBytes, err := Encode(&st)
	if err != nil {
		return id, err
	}
	mem, err := createPending("mem_file_path", p.MemPath)
	if err != nil {
		return id, err
	}
	defer mem.discard()
	state, err := createPending("snapshot_path", p.StatePath)
	if err != nil {
		return id, err
	}
	defer state.discard()

	t := Trailer{Kind: FullMemory, Size: p.Memory.Size(), ID: id}
	if st.Memory.Diff {
		t.Kind = DiffMemory
		err = writeDiffMemory(mem.f, p.Memory, st.Memory.DirtyBitmap)
	} else {
		err = writeFullMemory(mem.f, p.Memory)
	}
	if err == nil {
		err = writeTrailer(mem.f, t)
	}
	if err != nil {
		return id, fmt.Errorf("write memory file %s: %w", p.MemPath, err)
	}
	if err := mem.sync(); err != nil {
		return id, err
	}
	step(StepMemoryWritten)
	if _, err := state.f.Write(stateBytes); err != nil {
		return id, fmt.Errorf("write snapshot state %s: %w", p.StatePath, err)
	}
	if err := state.sync(); err != nil {
		return id, err
	}
	step(StepStateWritten)
	if err := mem.install(); err != nil {
		return id, err
	}
	step(StepMemoryRenamed)
	if err := state.install(); err != nil {
		return id, err
	}
	step(StepStateRenamed)
	if err := syncDir(filepath.Dir(p.MemPath)); err != nil {
		return id, err
	}
	if filepath.Dir(p.StatePath) != filepath.Dir(p.MemPath) {
		if err := syncDir(filepath.Dir(p.StatePath)); err != nil {
			return id, err
		}
	}
	step(StepSynced)
	return id, nil
}

// MergeParams names the snapshots of a merge.
type MergeParams struct {
	BaseState, BaseMem, DiffState, DiffMem string
	// AfterStep, if set, is called at each point of MergeSteps.
	AfterStep func(step string)
}

// Merge merges a diff snapshot (state and memory) onto the full
// snapshot it was taken against: the base memory file is updated in place
// and the base state replaced by the diff's, marked full, so that the base
// directory then restores to where the diff was taken. The diff must name
// this base (its BaseID is the base's memory ID).
//
// A merge killed half-way leaves the base refusing to load (its trailer says
// a merge is in progress) until the same merge is run again, which finishes
// it: the trailer is marked first, then pages are copied, then the trailer
// takes the diff's ID, then the state is replaced.
func Merge(p MergeParams) error {
	baseState, baseMem, diffState, diffMem := p.BaseState, p.BaseMem, p.DiffState, p.DiffMem
	mergeStep := func(s string) {
		if p.AfterStep != nil {
			p.AfterStep(s)
		}
	}
	base, err := ReadStateFile(baseState)
	if err != nil {
		return err
	}
	if base.Memory.Diff {
		return fmt.Errorf("base %s is itself a diff snapshot", baseState)
	}
	d, err := ReadStateFile(diffState)
	if err != nil {
		return err
	}
	if !d.Memory.Diff {
		return fmt.Errorf("%s is not a diff snapshot", diffState)
	}
	if d.Memory.BaseID != base.Memory.ID {
		return fmt.Errorf("diff %s was taken against snapshot memory %s, but base %s is %s: not its base", diffState, d.Memory.BaseID, baseState, base.Memory.ID)
	}
	if d.Memory.Size != base.Memory.Size {
		return fmt.Errorf("diff snapshot has %d bytes of memory, base %d", d.Memory.Size, base.Memory.Size)
	}
	df, err := hostfile.Open("diff memory file", diffMem)
	if err != nil {
		return err
	}
	defer df.Close()
	dt, err := ReadTrailer(df)
	if err != nil {
		return err
	}
	if dt.Kind != DiffMemory || dt.ID != d.Memory.ID || dt.Size != d.Memory.Size {
		return fmt.Errorf("diff memory file %s: %w (trailer: %s %s, state: diff %s)", diffMem, ErrWrongMemory, dt.Kind, dt.ID, d.Memory.ID)
	}
	bf, err := hostfile.OpenReadWrite("base memory file", baseMem)
	if err != nil {
		return err
	}
	defer bf.Close()
	bt, err := ReadTrailer(bf)
	if err != nil {
		return err
	}
	merged := Trailer{Kind: FullMemory, Size: base.Memory.Size, ID: d.Memory.ID}
	switch {
	case !bt.Merging && bt.ID == base.Memory.ID && bt.Kind == FullMemory:
		// A fresh merge.
	case bt.Merging && bt.ID == d.Memory.ID && bt.MergeFrom == base.Memory.ID:
		// This merge was interrupted while copying pages: copy them again.
	case !bt.Merging && bt == merged:
		// Interrupted after the pages and trailer, before the state.
		return finishMerge(baseState, d)
	default:
		return fmt.Errorf("base memory file %s: %w (trailer %s %s, base state %s)", baseMem, ErrWrongMemory, bt.Kind, bt.ID, base.Memory.ID)
	}
	if err := writeTrailer(bf, Trailer{Kind: FullMemory, Merging: true, Size: base.Memory.Size, ID: d.Memory.ID, MergeFrom: base.Memory.ID}); err != nil {
		return err
	}
	if err := bf.Sync(); err != nil {
		return fmt.Errorf("sync base memory file: %w", err)
	}
	mergeStep(MergeMarked)
	if err := copyDirtyPages(bf, df, d.Memory.DirtyBitmap, base.Memory.Size); err != nil {
		return err
	}
	if err := bf.Sync(); err != nil {
		return fmt.Errorf("sync base memory file: %w", err)
	}
	mergeStep(MergeCopied)
	if err := writeTrailer(bf, merged); err != nil {
		return err
	}
	if err := bf.Sync(); err != nil {
		return fmt.Errorf("sync base memory file: %w", err)
	}
	mergeStep(MergeRelabelled)
	return finishMerge(baseState, d)
}

// Points in a merge, for tests that kill the merger there.
const (
	MergeMarked     = "marked"     // the base's trailer says a merge is in progress
	MergeCopied     = "copied"     // the diff's pages are in the base
	MergeRelabelled = "relabelled" // the base's trailer has the diff's ID; the state is next
)

// MergeSteps lists the points in order.
var MergeSteps = []string{MergeMarked, MergeCopied, MergeRelabelled}

func finishMerge(baseState string, d *VMState) error {
	d.Memory.Diff, d.Memory.DirtyBitmap, d.Memory.BaseID = false, nil, MemoryID{}
	return WriteStateFile(baseState, d)
}

// copyDirtyPages copies every page set in dirty from diff to base; a hole in
// the diff reads as zero, which is what the guest last wrote there.
func copyDirtyPages(base, diff *os.File, dirty []uint64, size uint64) error {
	pages := size / memory.PageSize
	if uint64(len(dirty)) != (pages+63)/64 {
		return fmt.Errorf("dirty bitmap of %d words for %d pages", len(dirty), pages)
	}
	buf := make([]byte, memory.PageSize)
	for p := range pages {
		if dirty[p/64]&(1<<(p%64)) == 0 {
			continue
		}
		off := int64(p * memory.PageSize)
		if _, err := diff.ReadAt(buf, off); err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("read diff page %d: %w", p, err)
		}
		if _, err := base.WriteAt(buf, off); err != nil {
			return fmt.Errorf("write base page %d: %w", p, err)
		}
	}
	return nil
}
