package cas

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"
)

// Session is a writer's hold on the store: it holds the store's shared lock
// from Begin to Close, which keeps the garbage collector (exclusive lock)
// out. Everything written in a session must be named by a ref (SetRef) or
// a lease (Lease) before Close, or the next GC collects it.
//
// Why this makes GC safe against concurrent imports: a chunk or manifest a
// writer stored but has not yet named is reachable from nothing, and GC
// would delete it. GC therefore runs only while no session is open, so it
// sees each writer either before its first file or after its ref or lease
// is durable; in between, it waits. A writer that dies releases its lock
// with its last file descriptor, so a killed importer never blocks GC.
//
// A Session is safe for concurrent use by goroutines.
type Session struct {
	s    *Store
	lock *os.File

	mu    sync.Mutex
	dirty map[string]struct{} // chunk shard directories with links not yet fsynced
}

// Begin opens a session, waiting while a GC holds the store, and removes
// temp files left by writers that died.
func (s *Store) Begin(ctx context.Context) (*Session, error) {
	lf, err := s.openLock()
	if err != nil {
		return nil, err
	}
	if err := flockContext(ctx, lf, unix.LOCK_SH); err != nil {
		lf.Close()
		return nil, err
	}
	if _, err := s.cleanIngest(); err != nil {
		lf.Close()
		return nil, err
	}
	return &Session{s: s, lock: lf, dirty: map[string]struct{}{}}, nil
}

// Store returns the store the session writes to.
func (ss *Session) Store() *Store { return ss.s }

// Close ends the session, releasing the shared lock.
func (ss *Session) Close() error {
	if ss.lock == nil {
		return nil
	}
	err := ss.lock.Close()
	ss.lock = nil
	return err
}

func (ss *Session) check() error {
	if ss.lock == nil {
		return errors.New("cas: session used after Close")
	}
	return nil
}

// PutChunk stores data as a chunk and returns its digest, and whether this
// call wrote it (false: a hole, or a chunk stored already). All-zero data
// is a hole: nothing is stored and the zero digest is returned.
func (ss *Session) PutChunk(data []byte) (d Digest, written bool, err error) {
	if err := ss.check(); err != nil {
		return Digest{}, false, err
	}
	if len(data) == 0 || len(data) > MaxChunkSize {
		return Digest{}, false, fmt.Errorf("put chunk: length %d out of range", len(data))
	}
	if isZeroes(data) {
		return Digest{}, false, nil
	}
	d = Sum(data)
	p, err := ss.startChunk(d, data, nil)
	if err != nil || p == nil {
		return d, false, err
	}
	return d, true, ss.finishChunks([]*pendingChunk{p})
}

// pendingChunk is a chunk written to a temp file, waiting for its fsync and
// link. Splitting the two lets the import pipeline start the writeback of
// several chunks before waiting on the first.
type pendingChunk struct {
	d    Digest
	tmp  *tempFile
	size int64
}

// copySource is where a chunk's bytes can be copied from inside the kernel
// (copy_file_range) instead of being written from memory: on the
// development machine, copying from user memory into the page cache costs
// several times more than a kernel-internal copy (see README.md). The copy
// is read back into check and compared with the bytes that were hashed, so a
// source changed in between can never put wrong bytes under a digest name.
type copySource struct {
	f     *os.File
	off   int64
	check []byte // scratch, at least the chunk's length
}

// ErrSourceChanged is returned when a file changes while it is imported.
var ErrSourceChanged = errors.New("the file changed while it was being imported")

// startChunk writes data to a temp file (copying it from src if given),
// makes it read-only and starts its writeback, or returns nil if chunk d is
// already stored. A stored chunk of the wrong size (damaged) is replaced.
func (ss *Session) startChunk(d Digest, data []byte, src *copySource) (*pendingChunk, error) {
	if ss.s.hasChunk(d, int64(len(data))) {
		return nil, nil
	}
	t, err := ss.s.createTemp("chunk")
	if err != nil {
		return nil, fmt.Errorf("chunk %s: %w", d, err)
	}
	if err := writeChunkData(t, data, src); err != nil {
		t.discard()
		return nil, fmt.Errorf("chunk %s: %w", d, err)
	}
	if err := t.Chmod(0o444); err != nil {
		t.discard()
		return nil, fmt.Errorf("chunk %s: %w", d, err)
	}
	testHook(hookChunkWritten)
	// Start writeback now, so that the fsync in finishChunks finds the data
	// on its way to disk.
	_ = unix.SyncFileRange(int(t.Fd()), 0, 0, unix.SYNC_FILE_RANGE_WRITE)
	return &pendingChunk{d: d, tmp: t, size: int64(len(data))}, nil
}

func writeChunkData(t *tempFile, data []byte, src *copySource) error {
	if src != nil && copyRange(src.f, src.off, t.File, 0, int64(len(data))) {
		check := src.check[:len(data)]
		if _, err := t.ReadAt(check, 0); err != nil {
			return fmt.Errorf("read back %s: %w", t.path, err)
		}
		if !bytes.Equal(check, data) {
			return ErrSourceChanged
		}
		return nil
	}
	if _, err := t.WriteAt(data, 0); err != nil {
		return fmt.Errorf("write %s: %w", t.path, err)
	}
	return nil
}

// copyRange copies n bytes at srcOff in src to dstOff in dst inside the
// kernel, without moving either file's offset. It reports false when the
// file systems cannot; the caller then writes the bytes from memory over
// whatever part was copied.
func copyRange(src *os.File, srcOff int64, dst *os.File, dstOff int64, n int64) bool {
	var done int64
	for done < n {
		so, do := srcOff+done, dstOff+done
		k, err := unix.CopyFileRange(int(src.Fd()), &so, int(dst.Fd()), &do, int(n-done), 0)
		if err != nil || k == 0 {
			return false
		}
		done += int64(k)
	}
	return true
}

// finishChunks fsyncs the temp files, then links each under its chunk's
// name. All fsyncs come before any link: a link adds to the file system's
// running journal transaction, and an fsync after it would have to commit
// that transaction again; this way one journal commit covers the batch.
// On error every temp file not yet linked is discarded.
func (ss *Session) finishChunks(ps []*pendingChunk) error {
	for i, p := range ps {
		if err := p.tmp.Sync(); err != nil {
			for _, q := range ps[i:] {
				q.tmp.discard()
			}
			return fmt.Errorf("chunk %s: fsync %s: %w", p.d, p.tmp.path, err)
		}
	}
	for i, p := range ps {
		if err := ss.publishChunk(p); err != nil {
			for _, q := range ps[i+1:] {
				q.tmp.discard()
			}
			return err
		}
	}
	return nil
}

// publishChunk links the fsynced temp file under the chunk's name.
func (ss *Session) publishChunk(p *pendingChunk) error {
	final := ss.s.ChunkPath(p.d)
	existed, err := p.tmp.linkTo(final)
	if err == nil && existed && !ss.s.hasChunk(p.d, p.size) {
		// A damaged file (wrong size) holds the name: replace it with this
		// new inode. Whoever mapped the old inode keeps their mapping.
		err = p.tmp.renameTo(final)
	}
	p.tmp.discard() // the temp name only; final keeps the inode
	if err != nil {
		return fmt.Errorf("chunk %s: %w", p.d, err)
	}
	ss.mu.Lock()
	ss.dirty[filepath.Dir(final)] = struct{}{}
	ss.mu.Unlock()
	testHook(hookChunkStored)
	return nil
}

// syncDirty makes the links of all chunks stored so far durable, before
// anything that names them is written.
func (ss *Session) syncDirty() error {
	ss.mu.Lock()
	dirs := ss.dirty
	ss.dirty = map[string]struct{}{}
	ss.mu.Unlock()
	for dir := range dirs {
		if err := syncDir(dir); err != nil {
			return err
		}
	}
	return nil
}

// PutManifest stores m and returns its digest. Every chunk m names must be
// stored already (with its length): a manifest never names an absent chunk.
func (ss *Session) PutManifest(m *Manifest) (Digest, error) {
	if err := ss.check(); err != nil {
		return Digest{}, err
	}
	b, err := m.MarshalBinary()
	if err != nil {
		return Digest{}, fmt.Errorf("put manifest: %w", err)
	}
	for i, c := range m.Chunks {
		if !c.IsZero() && !ss.s.hasChunk(c, m.ChunkLen(i)) {
			return Digest{}, fmt.Errorf("put manifest: chunk %d (%s) of %d bytes is not stored", i, c, m.ChunkLen(i))
		}
	}
	if err := ss.syncDirty(); err != nil {
		return Digest{}, err
	}
	d := Sum(b)
	path := ss.s.manifestPath(d)
	if _, err := os.Stat(path); err == nil {
		return d, nil
	}
	if err := ss.s.writeFileAtomic(path, b, 0o444, false); err != nil {
		return Digest{}, fmt.Errorf("put manifest %s: %w", d, err)
	}
	testHook(hookManifestStored)
	return d, nil
}

// SetRef points ref name at manifest d, replacing what it pointed at. The
// manifest must be stored. Pointing a second name at a manifest is an
// instant clone.
func (ss *Session) SetRef(name string, d Digest) error {
	if err := ss.check(); err != nil {
		return err
	}
	if err := ValidateRefName(name); err != nil {
		return err
	}
	if _, err := os.Stat(ss.s.manifestPath(d)); err != nil {
		return fmt.Errorf("set ref %q: manifest %s: %w", name, d, ErrNotFound)
	}
	if err := ss.syncDirty(); err != nil {
		return err
	}
	if err := ss.s.writeFileAtomic(ss.s.refPath(name), EncodeRef(d), 0o644, true); err != nil {
		return fmt.Errorf("set ref %q: %w", name, err)
	}
	testHook(hookRefStored)
	return nil
}

// RemoveRef deletes ref name. What it named stays until a GC finds it
// unreachable. Removing needs no session: it can only make GC free more.
func (s *Store) RemoveRef(name string) error {
	if err := ValidateRefName(name); err != nil {
		return err
	}
	err := os.Remove(s.refPath(name))
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("ref %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("remove ref %q: %w", name, err)
	}
	return syncDir(s.refPathDir())
}
