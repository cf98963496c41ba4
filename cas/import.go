package cas

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"

	"golang.org/x/sys/unix"
)

// ImportOptions configure an import.
type ImportOptions struct {
	ChunkSize int64 // 0 means DefaultChunkSize
	Kind      Kind  // 0 means KindImage
	// Progress, if set, is called from the importing goroutine with the
	// number of the object's bytes processed so far.
	Progress func(done int64)
}

// ImportResult describes an imported object.
type ImportResult struct {
	Digest      Digest // the manifest's digest
	Manifest    *Manifest
	NewChunks   int   // chunks written by this import
	NewBytes    int64 // bytes written by this import
	KnownChunks int   // chunks that were stored already (deduplicated)
	Holes       int   // all-zero chunks, not stored
}

func (o *ImportOptions) defaults() error {
	if o.ChunkSize == 0 {
		o.ChunkSize = DefaultChunkSize
	}
	if o.Kind == 0 {
		o.Kind = KindImage
	}
	if err := ValidateChunkSize(o.ChunkSize); err != nil {
		return err
	}
	if _, ok := kindNames[o.Kind]; !ok {
		return fmt.Errorf("unknown object kind %d", uint8(o.Kind))
	}
	return nil
}

// ErrNotRegular is returned for a path that is not a regular file (a FIFO,
// a device, a directory, a socket).
var ErrNotRegular = errors.New("not a regular file")

// OpenRegular opens path for reading only if it is a regular file. It opens
// with O_NONBLOCK so that a FIFO given by mistake fails at once instead of
// blocking until a writer appears.
func OpenRegular(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s: %w (it is a %s)", path, ErrNotRegular, describeMode(st.Mode()))
	}
	// Reads of a regular file never block; clear the flag anyway so that the
	// file behaves normally for whoever uses it next.
	if err := unix.SetNonblock(int(f.Fd()), false); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

func describeMode(m os.FileMode) string {
	switch {
	case m.IsDir():
		return "directory"
	case m&os.ModeNamedPipe != 0:
		return "FIFO"
	case m&os.ModeCharDevice != 0:
		return "character device"
	case m&os.ModeDevice != 0:
		return "block device"
	case m&os.ModeSocket != 0:
		return "socket"
	case m&os.ModeSymlink != 0:
		return "symlink"
	}
	return "special file"
}

// ImportFile imports the regular file at path. Ranges the file system
// reports as holes (SEEK_DATA) are not read. The file must not change while
// it is imported; a change in size or modification time is an error.
func (ss *Session) ImportFile(ctx context.Context, path string, opts ImportOptions) (*ImportResult, error) {
	f, err := OpenRegular(path)
	if err != nil {
		return nil, err // names the path already
	}
	defer f.Close()
	before, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("import %s: %w", path, err)
	}
	src := &fileChunks{f: f, size: before.Size()}
	res, err := ss.importChunks(ctx, src, opts)
	if err != nil {
		return nil, fmt.Errorf("import %s: %w", path, err)
	}
	after, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("import %s: %w", path, err)
	}
	if after.Size() != before.Size() || !after.ModTime().Equal(before.ModTime()) {
		return nil, fmt.Errorf("import %s: %w; import it again when nothing writes to it", path, ErrSourceChanged)
	}
	return res, nil
}

// Import imports everything r yields until EOF.
func (ss *Session) Import(ctx context.Context, r io.Reader, opts ImportOptions) (*ImportResult, error) {
	res, err := ss.importChunks(ctx, &streamChunks{r: r}, opts)
	if err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	return res, nil
}

// chunkProducer yields an object's chunks in order. next fills buf (len =
// chunk size) with chunk i and returns its length, or reports a hole of
// length n without filling buf; n == 0 means the object has ended.
type chunkProducer interface {
	next(i int, buf []byte) (n int, hole bool, err error)
}

// fileChunks reads a regular file of known size, skipping its holes.
type fileChunks struct {
	f        *os.File
	size     int64
	nextData int64 // SEEK_DATA result: no data before this offset
}

func (c *fileChunks) next(i int, buf []byte) (int, bool, error) {
	off := int64(i) * int64(len(buf))
	if off >= c.size {
		return 0, false, nil
	}
	n := int(min(int64(len(buf)), c.size-off))
	end := off + int64(n)
	if c.nextData < end {
		c.nextData = c.seekData(off)
	}
	if c.nextData >= end {
		return n, true, nil
	}
	if _, err := c.f.ReadAt(buf[:n], off); err != nil {
		if errors.Is(err, io.EOF) {
			return 0, false, fmt.Errorf("the file shrank while it was being imported (short read at offset %d)", off)
		}
		return 0, false, err
	}
	return n, false, nil
}

// seekData returns the first data offset at or after off; where the file
// system cannot say, off itself (read everything).
func (c *fileChunks) seekData(off int64) int64 {
	d, err := unix.Seek(int(c.f.Fd()), off, unix.SEEK_DATA)
	switch {
	case err == nil:
		return d
	case errors.Is(err, unix.ENXIO):
		return c.size // no data after off
	default:
		return off
	}
}

// streamChunks reads chunks sequentially from any reader.
type streamChunks struct {
	r   io.Reader
	eof bool
}

func (c *streamChunks) next(_ int, buf []byte) (int, bool, error) {
	if c.eof {
		return 0, false, nil
	}
	n, err := io.ReadFull(c.r, buf)
	switch {
	case err == nil:
		return n, false, nil
	case errors.Is(err, io.EOF):
		return 0, false, nil
	case errors.Is(err, io.ErrUnexpectedEOF):
		c.eof = true
		return n, false, nil
	default:
		return 0, false, err
	}
}

// The syncer publishes chunks in batches of this many bytes or chunks: one
// journal commit per batch instead of one per chunk.
const (
	syncBatchBytes  = 32 << 20
	syncBatchChunks = 256
)

// importChunks runs the import pipeline:
//
//	producer ──jobs──► hashers (one per CPU) ──stored──► syncer ──results──► caller
//
// The producer reads chunks into pooled buffers; each hasher detects holes,
// hashes, and writes new chunks to temp files with their writeback started;
// the syncer fsyncs and links them in batches, so that disk writes overlap
// hashing and one journal commit covers many chunks. Every goroutine is owned by this function, which waits
// for all of them before returning.
func (ss *Session) importChunks(ctx context.Context, src chunkProducer, opts ImportOptions) (*ImportResult, error) {
	if err := ss.check(); err != nil {
		return nil, err
	}
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	type job struct {
		i    int
		n    int
		hole bool
		buf  *[]byte
	}
	type stored struct {
		i       int
		n       int
		d       Digest
		pending *pendingChunk // nil: a hole or a chunk stored already
	}
	type result struct {
		i     int
		n     int
		d     Digest
		isNew bool
		err   error
	}

	hashers := max(1, runtime.GOMAXPROCS(0))
	nbuf := hashers + 2
	if limit := int(256 << 20 / opts.ChunkSize); nbuf > limit {
		nbuf = max(2, limit)
	}
	free := make(chan *[]byte, nbuf)
	for range nbuf {
		b := make([]byte, opts.ChunkSize)
		free <- &b
	}
	jobs := make(chan job, nbuf)
	storedCh := make(chan stored, 8) // the syncer's lag: chunks in writeback
	results := make(chan result, 16)

	var wg sync.WaitGroup
	fail := func(err error) {
		select {
		case results <- result{err: err}:
		case <-ctx.Done():
		}
	}

	wg.Add(1)
	go func() { // producer
		defer wg.Done()
		defer close(jobs)
		for i := 0; ; i++ {
			var buf *[]byte
			select {
			case buf = <-free:
			case <-ctx.Done():
				return
			}
			n, hole, err := src.next(i, *buf)
			if err != nil {
				fail(fmt.Errorf("read chunk %d: %w", i, err))
				return
			}
			if n == 0 {
				return
			}
			if i >= MaxChunks {
				fail(fmt.Errorf("object larger than %d chunks of %d bytes", MaxChunks, opts.ChunkSize))
				return
			}
			if hole {
				free <- buf
				buf = nil
			}
			select {
			case jobs <- job{i: i, n: n, hole: hole, buf: buf}:
			case <-ctx.Done():
				return
			}
		}
	}()

	file, _ := src.(*fileChunks)
	var hwg sync.WaitGroup
	for range hashers {
		hwg.Add(1)
		go func() {
			defer hwg.Done()
			var from *copySource
			if file != nil {
				from = &copySource{f: file.f, check: make([]byte, opts.ChunkSize)}
			}
			for j := range jobs {
				if ctx.Err() != nil {
					if j.buf != nil {
						free <- j.buf
					}
					continue // drain, so that the producer can finish
				}
				st := stored{i: j.i, n: j.n}
				if !j.hole {
					data := (*j.buf)[:j.n]
					if !isZeroes(data) {
						st.d = Sum(data)
						if from != nil {
							from.off = int64(j.i) * opts.ChunkSize
						}
						p, err := ss.startChunk(st.d, data, from)
						if err != nil {
							free <- j.buf
							fail(err)
							continue
						}
						st.pending = p
					}
					free <- j.buf
				}
				select {
				case storedCh <- st:
				case <-ctx.Done():
					if st.pending != nil {
						st.pending.tmp.discard()
					}
				}
			}
		}()
	}
	wg.Add(1)
	go func() { // closes storedCh once every hasher is done
		defer wg.Done()
		hwg.Wait()
		close(storedCh)
	}()

	wg.Add(1)
	go func() { // syncer: fsyncs and links in batches (see finishChunks)
		defer wg.Done()
		defer close(results)
		var batch []stored
		var pending []*pendingChunk
		var batchBytes int64
		publish := func() {
			err := ss.finishChunks(pending)
			if err != nil {
				fail(err)
			}
			for _, st := range batch {
				if err != nil {
					break
				}
				select {
				case results <- result{i: st.i, n: st.n, d: st.d, isNew: st.pending != nil}:
				case <-ctx.Done():
				}
			}
			batch, pending, batchBytes = batch[:0], pending[:0], 0
		}
		for st := range storedCh {
			if ctx.Err() != nil {
				if st.pending != nil {
					st.pending.tmp.discard()
				}
				continue // drain, so that the hashers can finish
			}
			batch = append(batch, st)
			if st.pending != nil {
				pending = append(pending, st.pending)
				batchBytes += st.pending.size
			}
			if batchBytes >= syncBatchBytes || len(batch) >= syncBatchChunks {
				publish()
			}
		}
		if ctx.Err() != nil {
			for _, p := range pending {
				p.tmp.discard()
			}
			return
		}
		publish()
	}()

	res := &ImportResult{}
	m := &Manifest{Kind: opts.Kind, ChunkSize: opts.ChunkSize}
	var done int64
	var firstErr error
	for r := range results {
		if firstErr != nil {
			continue
		}
		if r.err != nil {
			firstErr = r.err
			cancel()
			continue
		}
		for len(m.Chunks) <= r.i {
			m.Chunks = append(m.Chunks, Digest{})
		}
		m.Chunks[r.i] = r.d
		m.Size = max(m.Size, int64(r.i)*opts.ChunkSize+int64(r.n))
		switch {
		case r.d.IsZero():
			res.Holes++
		case r.isNew:
			res.NewChunks++
			res.NewBytes += int64(r.n)
		default:
			res.KnownChunks++
		}
		done += int64(r.n)
		if opts.Progress != nil {
			opts.Progress(done)
		}
	}
	wg.Wait()
	if firstErr == nil {
		firstErr = ctx.Err()
	}
	if firstErr != nil {
		return nil, firstErr
	}
	d, err := ss.PutManifest(m)
	if err != nil {
		return nil, err
	}
	res.Digest, res.Manifest = d, m
	return res, nil
}
