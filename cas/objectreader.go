package cas

import (
	"container/list"
	"context"
	"fmt"
	"io"
	"sync"
)

// ObjectReader gives random access to an object through a Source: holes
// read as zeros, chunks are opened (and verified) on first use and kept open
// in a small LRU. It is safe for concurrent use.
type ObjectReader struct {
	ctx    context.Context
	src    Source
	m      *Manifest
	object string
	max    int

	mu     sync.Mutex
	open   map[int]*openChunk // by chunk index
	lru    *list.List         // of *openChunk, most recent first
	closed bool
}

type openChunk struct {
	index   int
	r       ChunkReader
	refs    int // readers using r now
	evicted bool
	elem    *list.Element
}

// DefaultOpenChunks is how many chunks an ObjectReader keeps open: 512 MiB
// of 2 MiB chunks. A chunk opened again is verified again (a BLAKE3 pass,
// ~1.5 ms for 2 MiB here), so the cache should cover the working set;
// each open chunk costs one file descriptor.
const DefaultOpenChunks = 256

// NewObjectReader returns a reader of the object m describes. object names
// it in errors. maxOpen bounds the chunks kept open (0: DefaultOpenChunks).
// ctx is used for every chunk opened through it.
func NewObjectReader(ctx context.Context, src Source, m *Manifest, object string, maxOpen int) (*ObjectReader, error) {
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("object %s: %w", object, err)
	}
	if maxOpen <= 0 {
		maxOpen = DefaultOpenChunks
	}
	return &ObjectReader{ctx: ctx, src: src, m: m, object: object, max: maxOpen, open: map[int]*openChunk{}, lru: list.New()}, nil
}

// Size returns the object's size in bytes.
func (r *ObjectReader) Size() int64 { return r.m.Size }

// Manifest returns the manifest being read.
func (r *ObjectReader) Manifest() *Manifest { return r.m }

// ReadAt reads len(p) bytes at off, as io.ReaderAt does: fewer only at the
// end of the object (with io.EOF) or on an error, which names the chunk.
func (r *ObjectReader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("object %s: negative offset %d", r.object, off)
	}
	n := 0
	for n < len(p) {
		pos := off + int64(n)
		if pos >= r.m.Size {
			return n, io.EOF
		}
		i := int(pos / r.m.ChunkSize)
		in := pos - int64(i)*r.m.ChunkSize
		k := int(min(int64(len(p)-n), r.m.ChunkLen(i)-in))
		if err := r.readChunk(i, p[n:n+k], in); err != nil {
			return n, err
		}
		n += k
	}
	return n, nil
}

// readChunk fills p from chunk i at offset in.
func (r *ObjectReader) readChunk(i int, p []byte, in int64) error {
	d := r.m.Chunks[i]
	if d.IsZero() {
		clear(p)
		return nil
	}
	c, err := r.acquire(i)
	if err != nil {
		return inObject(err, r.object, i, int64(i)*r.m.ChunkSize)
	}
	defer r.release(c)
	if _, err := c.r.ReadAt(p, in); err != nil {
		return inObject(chunkErr(d, err), r.object, i, int64(i)*r.m.ChunkSize)
	}
	return nil
}

func (r *ObjectReader) acquire(i int) (*openChunk, error) {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil, fmt.Errorf("object %s: reader closed", r.object)
	}
	if c, ok := r.open[i]; ok {
		c.refs++
		r.lru.MoveToFront(c.elem)
		r.mu.Unlock()
		return c, nil
	}
	r.mu.Unlock()

	cr, err := r.src.OpenChunk(r.ctx, r.m.Chunks[i], r.m.ChunkLen(i))
	if err != nil {
		return nil, err
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		cr.Close()
		return nil, fmt.Errorf("object %s: reader closed", r.object)
	}
	if c, ok := r.open[i]; ok { // another reader opened it meanwhile
		cr.Close()
		c.refs++
		r.lru.MoveToFront(c.elem)
		return c, nil
	}
	c := &openChunk{index: i, r: cr, refs: 1}
	c.elem = r.lru.PushFront(c)
	r.open[i] = c
	for e := r.lru.Back(); e != nil && len(r.open) > r.max; {
		prev := e.Prev()
		if old := e.Value.(*openChunk); old.refs == 0 {
			r.evictLocked(old)
		}
		e = prev
	}
	return c, nil
}

func (r *ObjectReader) evictLocked(c *openChunk) {
	r.lru.Remove(c.elem)
	delete(r.open, c.index)
	c.evicted = true
	if c.refs == 0 {
		c.r.Close()
	}
}

func (r *ObjectReader) release(c *openChunk) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c.refs--
	if c.evicted && c.refs == 0 {
		c.r.Close()
	}
}

// Close closes every open chunk. Reads in progress finish first.
func (r *ObjectReader) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	for _, c := range r.open {
		r.evictLocked(c)
	}
	return nil
}
