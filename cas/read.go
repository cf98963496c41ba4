package cas

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"sync"

	"github.com/zeebo/blake3"
	"golang.org/x/sys/unix"
)

// ChunkError reports a chunk that is missing or damaged. It names the chunk
// and, where the reader knows it, the object and the position in it.
type ChunkError struct {
	Object string // the ref name or manifest digest being read; may be empty
	Index  int    // chunk index in the object; -1 if unknown
	Offset int64  // byte offset of the chunk in the object
	Chunk  Digest
	Err    error // wraps ErrNotFound or ErrCorrupt
}

func (e *ChunkError) Error() string {
	where := ""
	if e.Object != "" {
		where = fmt.Sprintf("object %s: ", e.Object)
	}
	if e.Index >= 0 {
		where += fmt.Sprintf("chunk %d (offset %d) ", e.Index, e.Offset)
	} else {
		where += "chunk "
	}
	return fmt.Sprintf("%s%s: %v", where, e.Chunk, e.Err)
}

func (e *ChunkError) Unwrap() error { return e.Err }

// chunkErr builds the error for a bad chunk found outside any object.
func chunkErr(d Digest, err error) error { return &ChunkError{Index: -1, Chunk: d, Err: err} }

// inObject adds the object and position to a ChunkError from a lower layer.
func inObject(err error, object string, index int, offset int64) error {
	var ce *ChunkError
	if errors.As(err, &ce) && ce.Object == "" {
		c := *ce
		c.Object, c.Index, c.Offset = object, index, offset
		return &c
	}
	return fmt.Errorf("object %s: chunk %d (offset %d): %w", object, index, offset, err)
}

// ReadManifest reads manifest d, checking that its encoding hashes to d and
// parses. A missing manifest wraps ErrNotFound; a damaged one ErrCorrupt.
func (s *Store) ReadManifest(ctx context.Context, d Digest) (*Manifest, error) {
	b, err := readFileLimited(s.manifestPath(d), MaxManifestSize)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("manifest %s: %w", d, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("manifest %s: %w", d, err)
	}
	if got := Sum(b); got != d {
		return nil, fmt.Errorf("manifest %s: %w: its content hashes to %s", d, ErrCorrupt, got.Short())
	}
	m, err := ParseManifest(b)
	if err != nil {
		return nil, fmt.Errorf("manifest %s: %w: %v", d, ErrCorrupt, err)
	}
	return m, nil
}

// readFileLimited reads a whole regular file of at most limit bytes.
func readFileLimited(path string, limit int64) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: %s is not a regular file", ErrCorrupt, path)
	}
	if st.Size() > limit {
		return nil, fmt.Errorf("%w: %s is %d bytes, more than the limit of %d", ErrCorrupt, path, st.Size(), limit)
	}
	b := make([]byte, st.Size())
	if _, err := io.ReadFull(f, b); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	// A file that grew after the stat is not a store file.
	if n, _ := f.Read(make([]byte, 1)); n != 0 {
		return nil, fmt.Errorf("%w: %s changed while being read", ErrCorrupt, path)
	}
	return b, nil
}

// chunkBuffers recycles chunk-sized read buffers, one pool per size.
var chunkBuffers sync.Map // int64 -> *sync.Pool of *[]byte

func getBuffer(n int64) *[]byte {
	p, _ := chunkBuffers.LoadOrStore(n, &sync.Pool{New: func() any { b := make([]byte, n); return &b }})
	return p.(*sync.Pool).Get().(*[]byte)
}

func putBuffer(b *[]byte) {
	if p, ok := chunkBuffers.Load(int64(len(*b))); ok {
		p.(*sync.Pool).Put(b)
	}
}

// openChunkFile opens chunk d and checks that it is a regular file of
// exactly length bytes.
func (s *Store) openChunkFile(d Digest, length int64) (*os.File, error) {
	if d.IsZero() {
		return nil, chunkErr(d, fmt.Errorf("%w: the zero digest is a hole, not a chunk", ErrNotFound))
	}
	if length <= 0 || length > MaxChunkSize {
		return nil, chunkErr(d, fmt.Errorf("chunk length %d out of range", length))
	}
	f, err := os.OpenFile(s.ChunkPath(d), os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil, chunkErr(d, fmt.Errorf("%w: no file %s", ErrNotFound, s.ChunkPath(d)))
	}
	if err != nil {
		return nil, chunkErr(d, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, chunkErr(d, err)
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, chunkErr(d, fmt.Errorf("%w: %s is not a regular file", ErrCorrupt, f.Name()))
	}
	if st.Size() != length {
		f.Close()
		return nil, chunkErr(d, fmt.Errorf("%w: %s is %d bytes, want %d (truncated or overwritten)", ErrCorrupt, f.Name(), st.Size(), length))
	}
	return f, nil
}

// readVerified reads all of f into p (len(p) == f's size) and checks the digest.
func readVerified(f *os.File, d Digest, p []byte) error {
	if _, err := f.ReadAt(p, 0); err != nil {
		return chunkErr(d, fmt.Errorf("read %s: %w", f.Name(), err))
	}
	if got := Sum(p); got != d {
		return chunkErr(d, fmt.Errorf("%w: %s hashes to %s (damaged on disk)", ErrCorrupt, f.Name(), got.Short()))
	}
	return nil
}

// ReadChunk fills p with chunk d, which must be exactly len(p) bytes, and
// verifies it.
func (s *Store) ReadChunk(ctx context.Context, d Digest, p []byte) error {
	f, err := s.openChunkFile(d, int64(len(p)))
	if err != nil {
		return err
	}
	defer f.Close()
	return readVerified(f, d, p)
}

// ChunkFile opens chunk d, which must be length bytes, and verifies its
// whole content before returning it. This is the handle the VMM maps into
// guest memory (mmap of the returned file, MAP_PRIVATE|MAP_FIXED): chunk
// files are never written after they are stored (mode 0444, replaced only by
// a new inode), so what was verified is what is mapped, and a private
// mapping can never see a change. Map the returned file, not the path, so
// that the mapping is of the verified inode. Verification reads the chunk
// once (BLAKE3 at ~2 GB/s here), which also brings it into the page cache.
func (s *Store) ChunkFile(ctx context.Context, d Digest, length int64) (*os.File, error) {
	f, err := s.openChunkFile(d, length)
	if err != nil {
		return nil, err
	}
	if err := hashVerified(f, d, length); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// verifyPiece is how much of a chunk hashVerified reads at a time: the VMM
// verifies every chunk it maps, and a buffer of the whole chunk (2 MiB per
// worker, kept by the pool) was measured at ~5 MiB more private memory per
// VMM restored from the CAS.
const verifyPiece = 64 << 10

var verifyBuffers = sync.Pool{New: func() any { b := make([]byte, verifyPiece); return &b }}

// hashVerified hashes f's length bytes in small pieces and checks the
// digest.
func hashVerified(f *os.File, d Digest, length int64) error {
	buf := verifyBuffers.Get().(*[]byte)
	defer verifyBuffers.Put(buf)
	h := blake3.New()
	if _, err := io.CopyBuffer(h, io.NewSectionReader(f, 0, length), *buf); err != nil {
		return chunkErr(d, fmt.Errorf("read %s: %w", f.Name(), err))
	}
	var got Digest
	h.Sum(got[:0])
	if got != d {
		return chunkErr(d, fmt.Errorf("%w: %s hashes to %s (damaged on disk)", ErrCorrupt, f.Name(), got.Short()))
	}
	return nil
}

// OpenChunk is ChunkFile behind the Source interface.
func (s *Store) OpenChunk(ctx context.Context, d Digest, length int64) (ChunkReader, error) {
	f, err := s.ChunkFile(ctx, d, length)
	if err != nil {
		return nil, err
	}
	return f, nil
}

// hasChunk reports whether chunk d is stored with length bytes, without
// reading it.
func (s *Store) hasChunk(d Digest, length int64) bool {
	var st unix.Stat_t
	return unix.Stat(s.ChunkPath(d), &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFREG && st.Size == length
}

// Ref returns the manifest digest that ref name points at.
func (s *Store) Ref(name string) (Digest, error) {
	if err := ValidateRefName(name); err != nil {
		return Digest{}, err
	}
	b, err := readFileLimited(s.refPath(name), refFileSize)
	if errors.Is(err, os.ErrNotExist) {
		return Digest{}, fmt.Errorf("ref %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return Digest{}, fmt.Errorf("ref %q: %w", name, err)
	}
	d, err := ParseRef(b)
	if err != nil {
		return Digest{}, fmt.Errorf("ref %q: %w: %v", name, ErrCorrupt, err)
	}
	return d, nil
}

// Resolve returns the digest and manifest that ref name points at.
func (s *Store) Resolve(ctx context.Context, name string) (Digest, *Manifest, error) {
	d, err := s.Ref(name)
	if err != nil {
		return Digest{}, nil, err
	}
	m, err := s.ReadManifest(ctx, d)
	if err != nil {
		return Digest{}, nil, fmt.Errorf("ref %q: %w", name, err)
	}
	return d, m, nil
}

// RefEntry is one ref as listed by Refs: its target, or why it has none.
type RefEntry struct {
	Name   string
	Digest Digest
	Err    error // a malformed ref file
}

// Refs lists all refs, sorted by name. A damaged ref file is listed with
// its error rather than failing the whole listing.
func (s *Store) Refs() ([]RefEntry, error) {
	names, err := readDirNames(s.refPathDir())
	if err != nil {
		return nil, fmt.Errorf("list refs: %w", err)
	}
	sort.Strings(names)
	out := make([]RefEntry, 0, len(names))
	for _, n := range names {
		e := RefEntry{Name: n}
		if err := ValidateRefName(n); err != nil {
			e.Err = fmt.Errorf("%w: a stray file in refs/: %w", ErrCorrupt, err)
		} else {
			e.Digest, e.Err = s.Ref(n)
			if errors.Is(e.Err, ErrNotFound) {
				continue // removed while listing
			}
		}
		out = append(out, e)
	}
	return out, nil
}

func (s *Store) refPathDir() string { return s.refPath("") }
