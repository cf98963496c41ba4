// Package volume is a writable block device over a CAS manifest: reads come
// from the base manifest's chunks until a block is written, writes go to a
// per-instance copy-on-write overlay file, and Commit turns base plus
// overlay into a new manifest, re-hashing only the chunks that changed.
//
// A volume is a directory:
//
//	lock     flocked while the volume is open: one user at a time
//	map      the base manifest's digest, the geometry and the bitmap of
//	         blocks the overlay holds (see mapfile.go), replaced atomically
//	overlay  a sparse file as large as the volume; block b lives at b·BlockSize
//
// Its method set (ReadAt, WriteAt, Flush, Discard, Size) is what a
// virtio-blk backend needs. An instant clone of a volume is a new ref to
// the manifest it was committed as (cas.Session.SetRef), then a new
// volume over it.
package volume

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/voltvmm/volt/cas"
)

// DefaultBlockSize is the overlay's copy-on-write granularity. 4 KiB (a
// guest page, ext4's block) against whole-chunk copy-on-write: see
// README.md for the measurement that chose it.
const DefaultBlockSize = 4 << 10

const (
	lockName    = "lock"
	mapName     = "map"
	overlayName = "overlay"
)

// Errors callers branch on.
var (
	ErrInUse      = errors.New("volume in use by another process")
	ErrOutOfRange = errors.New("access beyond the end of the volume")
	ErrClosed     = errors.New("volume closed")
)

// Options configure a new volume.
type Options struct {
	// BlockSize is the copy-on-write granularity: a power of two from 4 KiB
	// to the base's chunk size. 0 means DefaultBlockSize (or the chunk size,
	// if that is smaller).
	BlockSize int64
}

// Create makes a new volume in dir (which must not exist, or be empty) over
// manifest base. The base should be named by a ref: an open volume holds a
// lease on its base, but a closed one is protected only by a ref.
func Create(ctx context.Context, store *cas.Store, dir string, base cas.Digest, opts Options) error {
	m, err := store.ReadManifest(ctx, base)
	if err != nil {
		return fmt.Errorf("create volume %s: base: %w", dir, err)
	}
	bs := opts.BlockSize
	if bs == 0 {
		bs = min(DefaultBlockSize, m.ChunkSize)
	}
	if bs < cas.MinChunkSize || bs > m.ChunkSize || bs&(bs-1) != 0 {
		return fmt.Errorf("create volume %s: block size %d: want a power of two from 4 KiB to the base's chunk size (%d)", dir, bs, m.ChunkSize)
	}
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("create volume %s: %w", dir, err)
	}
	names, err := readDirNames(dir)
	if err != nil {
		return fmt.Errorf("create volume %s: %w", dir, err)
	}
	if len(names) != 0 {
		return fmt.Errorf("create volume %s: the directory is not empty", dir)
	}
	n := numBlocks(m.Size, bs)
	if n > MaxBlocks {
		return fmt.Errorf("create volume %s: %d blocks of %d bytes, more than the limit of %d", dir, n, bs, int64(MaxBlocks))
	}
	vm := &Map{BlockSize: bs, Size: m.Size, Base: base, Written: make([]uint64, (n+63)/64)}
	ov, err := os.OpenFile(filepath.Join(dir, overlayName), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create volume %s: %w", dir, err)
	}
	defer ov.Close()
	if err := ov.Truncate(m.Size); err != nil {
		return fmt.Errorf("create volume %s: size the overlay: %w", dir, err)
	}
	if err := ov.Sync(); err != nil {
		return fmt.Errorf("create volume %s: %w", dir, err)
	}
	lf, err := os.OpenFile(filepath.Join(dir, lockName), os.O_RDONLY|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("create volume %s: %w", dir, err)
	}
	lf.Close()
	// The map goes last: a directory without one is not a volume.
	if err := writeMap(dir, vm); err != nil {
		return fmt.Errorf("create volume %s: %w", dir, err)
	}
	return nil
}

// Volume is an open volume. Its methods are safe for concurrent use.
type Volume struct {
	store   *cas.Store
	dir     string
	lock    *os.File
	overlay *os.File

	flushMu sync.Mutex // serialises Flush and Commit, so maps are written in order

	mu     sync.RWMutex // guards everything below; held for writing by writers
	m      *Map
	dirty  bool // m changed since it was last persisted
	base   *cas.Manifest
	reader *cas.ObjectReader
	lease  *cas.Lease
	closed bool
}

// Open opens the volume in dir. It fails with ErrInUse if another process
// (or another Volume in this one) has it open, takes a lease on the base so
// that no GC removes it while the volume is open, and reclaims overlay space
// of writes that were never flushed.
func Open(ctx context.Context, store *cas.Store, dir string) (*Volume, error) {
	v, err := open(ctx, store, dir)
	if err != nil {
		return nil, fmt.Errorf("open volume %s: %w", dir, err)
	}
	return v, nil
}

func open(ctx context.Context, store *cas.Store, dir string) (*Volume, error) {
	lf, err := os.Open(filepath.Join(dir, lockName))
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(lf.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lf.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, ErrInUse
		}
		return nil, err
	}
	v := &Volume{store: store, dir: dir, lock: lf}
	ok := false
	defer func() {
		if !ok {
			v.closeFiles()
		}
	}()
	if v.m, err = readMap(dir); err != nil {
		return nil, err
	}
	if v.overlay, err = os.OpenFile(filepath.Join(dir, overlayName), os.O_RDWR|unix.O_NOFOLLOW, 0); err != nil {
		return nil, err
	}
	st, err := v.overlay.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() || st.Size() != v.m.Size {
		return nil, fmt.Errorf("overlay is %d bytes, the volume %d: damaged", st.Size(), v.m.Size)
	}
	if err := v.setBase(ctx, nil, v.m.Base); err != nil {
		return nil, err
	}
	if err := v.reclaimUnwritten(); err != nil {
		return nil, err
	}
	ok = true
	return v, nil
}

// setBase leases manifest d (within ss, if the caller has a session) and
// reads through it from now on, releasing the previous base's lease.
func (v *Volume) setBase(ctx context.Context, ss *cas.Session, d cas.Digest) error {
	var lease *cas.Lease
	var err error
	if ss != nil {
		lease, err = ss.Lease(cas.LeaseOptions{}, d)
	} else {
		lease, err = v.store.Lease(ctx, cas.LeaseOptions{}, d)
	}
	if err != nil {
		return fmt.Errorf("base %s: %w", d, err)
	}
	m, err := v.store.ReadManifest(ctx, d)
	if err == nil && (m.Size != v.m.Size || m.ChunkSize%v.m.BlockSize != 0) {
		err = fmt.Errorf("base %s is %d bytes in %d-byte chunks; the volume is %d bytes in %d-byte blocks", d.Short(), m.Size, m.ChunkSize, v.m.Size, v.m.BlockSize)
	}
	var r *cas.ObjectReader
	if err == nil {
		r, err = cas.NewObjectReader(context.WithoutCancel(ctx), v.store, m, d.String(), 0)
	}
	if err != nil {
		lease.Release()
		return err
	}
	if v.reader != nil {
		v.reader.Close()
	}
	if v.lease != nil {
		v.lease.Release()
	}
	v.base, v.reader, v.lease = m, r, lease
	return nil
}

// reclaimUnwritten punches out overlay data of blocks the map does not list:
// writes that were never flushed before a crash, or the old overlay of a
// commit interrupted after its new map was written.
func (v *Volume) reclaimUnwritten() error {
	fd := int(v.overlay.Fd())
	bs := v.m.BlockSize
	for off := int64(0); off < v.m.Size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil
		}
		if err != nil {
			return nil // the file system cannot tell; nothing to reclaim
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return nil
		}
		for b := data / bs; b*bs < hole; b++ {
			if !v.m.isWritten(b) {
				if err := punch(v.overlay, b*bs, min(bs, v.m.Size-b*bs)); err != nil {
					return err
				}
			}
		}
		off = hole
	}
	return nil
}

func punch(f *os.File, off, n int64) error {
	if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n); err != nil {
		return fmt.Errorf("punch a hole in %s: %w", f.Name(), err)
	}
	return nil
}

// Size returns the volume's size in bytes.
func (v *Volume) Size() int64 { return v.m.Size }

// BlockSize returns the copy-on-write granularity.
func (v *Volume) BlockSize() int64 { return v.m.BlockSize }

// Base returns the digest of the manifest the volume overlays.
func (v *Volume) Base() cas.Digest {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.m.Base
}

// WrittenBlocks counts the blocks in the overlay.
func (v *Volume) WrittenBlocks() int64 {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.m.WrittenBlocks()
}

func (v *Volume) checkRange(off int64, n int) error {
	if off < 0 || off > v.m.Size || int64(n) > v.m.Size-off {
		return fmt.Errorf("%w: %d bytes at %d, the volume is %d bytes", ErrOutOfRange, n, off, v.m.Size)
	}
	return nil
}

// ReadAt reads len(p) bytes at off: from the overlay for written blocks,
// from the base for the rest. Reading past the end returns io.EOF with the
// bytes before it; a damaged base chunk is an error naming it.
func (v *Volume) ReadAt(p []byte, off int64) (int, error) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	if v.closed {
		return 0, ErrClosed
	}
	if off < 0 {
		return 0, fmt.Errorf("%w: negative offset %d", ErrOutOfRange, off)
	}
	want := len(p)
	if off >= v.m.Size {
		return 0, io.EOF
	}
	if rest := v.m.Size - off; int64(want) > rest {
		want = int(rest)
	}
	bs := v.m.BlockSize
	n := 0
	for n < want {
		pos := off + int64(n)
		b := pos / bs
		written := v.m.isWritten(b)
		// Extend over following blocks in the same state: one read each.
		end := (b + 1) * bs
		for end < off+int64(want) && v.m.isWritten(end/bs) == written {
			end += bs
		}
		k := int(min(end, off+int64(want)) - pos)
		var err error
		if written {
			_, err = v.overlay.ReadAt(p[n:n+k], pos)
			if err != nil {
				err = fmt.Errorf("volume %s: read overlay at %d: %w", v.dir, pos, err)
			}
		} else {
			_, err = v.reader.ReadAt(p[n:n+k], pos)
		}
		if err != nil {
			return n, err
		}
		n += k
	}
	if want < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// WriteAt writes p at off into the overlay. A block written for the first
// time is first filled from the base where p does not cover it, so that
// the overlay always holds whole blocks. The write is durable after Flush.
func (v *Volume) WriteAt(p []byte, off int64) (int, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return 0, ErrClosed
	}
	if err := v.checkRange(off, len(p)); err != nil {
		return 0, err
	}
	if len(p) == 0 {
		return 0, nil
	}
	end := off + int64(len(p))
	if err := v.fillPartial(off, end); err != nil {
		return 0, err
	}
	if _, err := v.overlay.WriteAt(p, off); err != nil {
		return 0, fmt.Errorf("volume %s: write overlay at %d: %w", v.dir, off, err)
	}
	v.markWritten(off, end)
	return len(p), nil
}

// fillPartial copies from the base the blocks at the ends of [off, end) that
// the range covers only in part and the overlay does not hold yet.
// Precondition: v.mu held for writing.
func (v *Volume) fillPartial(off, end int64) error {
	bs := v.m.BlockSize
	first, last := off/bs, (end-1)/bs
	if off%bs != 0 || end < v.blockEnd(first) {
		if err := v.copyUp(first); err != nil {
			return err
		}
	}
	if last != first && end < v.blockEnd(last) {
		if err := v.copyUp(last); err != nil {
			return err
		}
	}
	return nil
}

func (v *Volume) blockEnd(b int64) int64 { return min((b+1)*v.m.BlockSize, v.m.Size) }

// copyUp copies block b from the base into the overlay unless it is there.
// Precondition: v.mu held for writing.
func (v *Volume) copyUp(b int64) error {
	if v.m.isWritten(b) {
		return nil
	}
	start := b * v.m.BlockSize
	buf := make([]byte, v.blockEnd(b)-start)
	if _, err := v.reader.ReadAt(buf, start); err != nil {
		return err
	}
	if _, err := v.overlay.WriteAt(buf, start); err != nil {
		return fmt.Errorf("volume %s: write overlay at %d: %w", v.dir, start, err)
	}
	return nil
}

// markWritten records the blocks of [off, end) as in the overlay.
// Precondition: v.mu held for writing.
func (v *Volume) markWritten(off, end int64) {
	for b := off / v.m.BlockSize; b*v.m.BlockSize < end; b++ {
		if !v.m.isWritten(b) {
			v.m.setWritten(b)
			v.dirty = true
		}
	}
}

// Discard makes [off, off+n) read as zeros and frees its overlay space:
// whole blocks become holes in the overlay, partial ones are zeroed.
func (v *Volume) Discard(off, n int64) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return ErrClosed
	}
	if n < 0 || n > v.m.Size {
		return fmt.Errorf("%w: discard of %d bytes", ErrOutOfRange, n)
	}
	if err := v.checkRange(off, int(n)); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	end := off + n
	if err := v.fillPartial(off, end); err != nil {
		return err
	}
	if err := punch(v.overlay, off, n); err != nil {
		return err
	}
	v.markWritten(off, end)
	return nil
}

// Flush makes every write before it durable: the overlay's data first, then
// the map that says which blocks it holds.
func (v *Volume) Flush() error {
	v.flushMu.Lock()
	defer v.flushMu.Unlock()
	return v.flush()
}

// flush. Precondition: v.flushMu held.
func (v *Volume) flush() error {
	v.mu.Lock()
	if v.closed {
		v.mu.Unlock()
		return ErrClosed
	}
	// Snapshot the map: writes that land after this are in the next flush,
	// and every block in the snapshot was written before the fdatasync.
	dirty := v.dirty
	var snap *Map
	if dirty {
		v.m.Generation++
		snap = v.m.clone()
		v.dirty = false
	}
	v.mu.Unlock()
	if err := unix.Fdatasync(int(v.overlay.Fd())); err != nil {
		v.setDirty()
		return fmt.Errorf("volume %s: fdatasync overlay: %w", v.dir, err)
	}
	if !dirty {
		return nil
	}
	if err := writeMap(v.dir, snap); err != nil {
		v.setDirty()
		return fmt.Errorf("volume %s: %w", v.dir, err)
	}
	return nil
}

func (v *Volume) setDirty() {
	v.mu.Lock()
	v.dirty = true
	v.mu.Unlock()
}

// CommitResult describes a commit.
type CommitResult struct {
	Digest        cas.Digest // the new manifest
	Manifest      *cas.Manifest
	ChangedChunks int // chunks re-hashed because the overlay touched them
	NewChunks     int // of those, chunks the store did not hold yet
}

// Commit stores base plus overlay as a new manifest of kind volume, points
// ref name at it and rebases the volume onto it with an empty overlay. Only
// chunks the overlay touched are read and hashed again. Writes wait while
// a commit runs.
//
// A crash at any point leaves a volume that reads the same: before the new
// map is written it is the old base and overlay; after, the new base.
func (v *Volume) Commit(ctx context.Context, name string) (*CommitResult, error) {
	if err := cas.ValidateRefName(name); err != nil {
		return nil, err
	}
	v.flushMu.Lock()
	defer v.flushMu.Unlock()
	if err := v.flush(); err != nil {
		return nil, err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return nil, ErrClosed
	}
	res, err := v.commit(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("commit volume %s: %w", v.dir, err)
	}
	return res, nil
}

// commit. Precondition: v.flushMu and v.mu held, overlay flushed.
func (v *Volume) commit(ctx context.Context, name string) (*CommitResult, error) {
	ss, err := v.store.Begin(ctx)
	if err != nil {
		return nil, err
	}
	defer ss.Close()
	base := v.base
	nm := &cas.Manifest{Kind: cas.KindVolume, ChunkSize: base.ChunkSize, Size: base.Size, Chunks: make([]cas.Digest, len(base.Chunks))}
	res := &CommitResult{Manifest: nm}
	perChunk := base.ChunkSize / v.m.BlockSize
	buf := make([]byte, base.ChunkSize)
	for i := range base.Chunks {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		first := int64(i) * perChunk
		lastExcl := min(first+perChunk, numBlocks(v.m.Size, v.m.BlockSize))
		touched, all := false, true
		for b := first; b < lastExcl; b++ {
			if v.m.isWritten(b) {
				touched = true
			} else {
				all = false
			}
		}
		if !touched {
			nm.Chunks[i] = base.Chunks[i]
			continue
		}
		res.ChangedChunks++
		start := int64(i) * base.ChunkSize
		p := buf[:base.ChunkLen(i)]
		if !all {
			if _, err := v.reader.ReadAt(p, start); err != nil {
				return nil, err
			}
		}
		for b := first; b < lastExcl; b++ {
			if !v.m.isWritten(b) {
				continue
			}
			in := b*v.m.BlockSize - start
			q := p[in:min(in+v.m.BlockSize, int64(len(p)))]
			if _, err := v.overlay.ReadAt(q, b*v.m.BlockSize); err != nil {
				return nil, fmt.Errorf("read overlay at %d: %w", b*v.m.BlockSize, err)
			}
		}
		d, written, err := ss.PutChunk(p)
		if err != nil {
			return nil, err
		}
		if written {
			res.NewChunks++
		}
		nm.Chunks[i] = d
	}
	d, err := ss.PutManifest(nm)
	if err != nil {
		return nil, err
	}
	if err := ss.SetRef(name, d); err != nil {
		return nil, err
	}
	res.Digest = d

	// Rebase: the new manifest holds everything; start an empty overlay.
	next := &Map{BlockSize: v.m.BlockSize, Size: v.m.Size, Base: d, Generation: v.m.Generation + 1, Written: make([]uint64, len(v.m.Written))}
	if err := writeMap(v.dir, next); err != nil {
		return nil, err
	}
	old := v.m
	v.m, v.dirty = next, false
	if err := v.setBase(ctx, ss, d); err != nil {
		// The map already names the new base, which the ref protects;
		// reopening the volume reads it. This handle cannot go on.
		v.m = old
		return nil, fmt.Errorf("rebase onto %s: %w; reopen the volume", d.Short(), err)
	}
	// Free the old overlay's space. The commit has succeeded whatever
	// happens here: unlisted overlay data is never read, and Open reclaims
	// it if this fails.
	if v.m.Size > 0 {
		_ = punch(v.overlay, 0, v.m.Size)
	}
	return res, nil
}

// Close flushes and closes the volume, releasing its lease and lock.
func (v *Volume) Close() error {
	v.flushMu.Lock()
	defer v.flushMu.Unlock()
	err := v.flush()
	if errors.Is(err, ErrClosed) {
		return nil
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	v.closed = true
	v.closeFiles()
	return err
}

func (v *Volume) closeFiles() {
	if v.reader != nil {
		v.reader.Close()
	}
	if v.lease != nil {
		v.lease.Release()
	}
	if v.overlay != nil {
		v.overlay.Close()
	}
	v.lock.Close()
}

// Info describes a volume without opening it (no lock, no lease).
type Info struct {
	Dir           string     `json:"dir"`
	Base          cas.Digest `json:"base"`
	Size          int64      `json:"size"`
	BlockSize     int64      `json:"block_size"`
	WrittenBlocks int64      `json:"written_blocks"`
	OverlayOnDisk int64      `json:"overlay_disk_bytes"` // allocated blocks of the overlay file
	Generation    uint64     `json:"generation"`
	InUse         bool       `json:"in_use"`
}

// ReadInfo describes the volume in dir as its map file last recorded it.
func ReadInfo(dir string) (*Info, error) {
	m, err := readMap(dir)
	if err != nil {
		return nil, fmt.Errorf("volume %s: %w", dir, err)
	}
	info := &Info{Dir: dir, Base: m.Base, Size: m.Size, BlockSize: m.BlockSize, WrittenBlocks: m.WrittenBlocks(), Generation: m.Generation}
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(dir, overlayName), &st); err == nil {
		info.OverlayOnDisk = st.Blocks * 512
	}
	if lf, err := os.Open(filepath.Join(dir, lockName)); err == nil {
		if err := unix.Flock(int(lf.Fd()), unix.LOCK_EX|unix.LOCK_NB); errors.Is(err, unix.EWOULDBLOCK) {
			info.InUse = true
		}
		lf.Close()
	}
	return info, nil
}

func readMap(dir string) (*Map, error) {
	path := filepath.Join(dir, mapName)
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() || st.Size() > mapHeaderSize+bitmapBytes(MaxBlocks)+cas.DigestSize {
		return nil, fmt.Errorf("%s: %w: not a regular file of a plausible size", path, ErrBadMap)
	}
	b := make([]byte, st.Size())
	if _, err := io.ReadFull(f, b); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	m, err := ParseMap(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return m, nil
}

// writeMap replaces dir's map atomically and durably.
func writeMap(dir string, m *Map) error {
	b, err := m.MarshalBinary()
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, mapName+".tmp")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, mapName))
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write map: %w", err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func readDirNames(dir string) ([]string, error) {
	d, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	return d.Readdirnames(-1)
}
