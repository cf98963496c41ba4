package cas

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"sort"
	"sync"

	"golang.org/x/sys/unix"
)

// VerifyOptions choose what Verify checks.
type VerifyOptions struct {
	// Names limits the check to these refs and the chunks they reach. Empty
	// means the whole store: every ref, every manifest file and every chunk
	// file, including ones nothing names.
	Names []string
	// Progress, if set, is called with the bytes hashed so far and the total.
	Progress func(done, total int64)
}

// Problem is one thing Verify found wrong.
type Problem struct {
	Object  string `json:"object,omitempty"` // ref name, or manifest digest for unnamed ones
	Chunk   string `json:"chunk,omitempty"`  // chunk digest
	Index   int    `json:"index,omitempty"`  // chunk index in Object
	Path    string `json:"path,omitempty"`   // the file at fault
	Message string `json:"message"`
}

func (p Problem) String() string {
	s := ""
	if p.Object != "" {
		s = "object " + p.Object + ": "
	}
	if p.Chunk != "" {
		s += fmt.Sprintf("chunk %d %s: ", p.Index, p.Chunk)
	}
	return s + p.Message
}

// VerifyReport is what Verify checked and found.
type VerifyReport struct {
	Objects  int       `json:"objects"`
	Chunks   int       `json:"chunks"`
	Bytes    int64     `json:"bytes"`
	Problems []Problem `json:"problems"`
}

// OK reports whether nothing was wrong.
func (r *VerifyReport) OK() bool { return len(r.Problems) == 0 }

// chunkUse is one place a chunk is used.
type chunkUse struct {
	object string
	index  int
}

type chunkCheck struct {
	d      Digest
	length int64 // -1 when only the file is known (an orphan)
	uses   []chunkUse
}

// Verify checks refs, manifests and chunks against their digests and
// reports every problem (it does not stop at the first). It holds the
// store's shared lock, so no GC runs meanwhile. The error is for failures
// to run the check at all; what is wrong with the store is in the report.
func (s *Store) Verify(ctx context.Context, opts VerifyOptions) (*VerifyReport, error) {
	rep := &VerifyReport{Problems: []Problem{}}
	err := s.withSharedLock(ctx, func() error { return s.verify(ctx, opts, rep) })
	if err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	sort.SliceStable(rep.Problems, func(i, j int) bool {
		a, b := rep.Problems[i], rep.Problems[j]
		if a.Object != b.Object {
			return a.Object < b.Object
		}
		return a.Index < b.Index
	})
	return rep, nil
}

func (s *Store) verify(ctx context.Context, opts VerifyOptions, rep *VerifyReport) error {
	checks := map[Digest]*chunkCheck{}
	add := func(object string, m *Manifest) {
		rep.Objects++
		for i, c := range m.Chunks {
			if c.IsZero() {
				continue
			}
			ck := checks[c]
			if ck == nil {
				ck = &chunkCheck{d: c, length: m.ChunkLen(i)}
				checks[c] = ck
			}
			if ck.length != m.ChunkLen(i) {
				rep.Problems = append(rep.Problems, Problem{Object: object, Chunk: c.String(), Index: i,
					Message: fmt.Sprintf("used with length %d here and %d elsewhere: a manifest is wrong", m.ChunkLen(i), ck.length)})
			}
			ck.uses = append(ck.uses, chunkUse{object: object, index: i})
		}
	}
	named := map[Digest]bool{} // manifests reached through a ref

	names := opts.Names
	full := len(names) == 0
	if full {
		refs, err := s.Refs()
		if err != nil {
			return err
		}
		for _, r := range refs {
			if r.Err != nil {
				rep.Problems = append(rep.Problems, Problem{Object: r.Name, Path: s.refPath(r.Name), Message: r.Err.Error()})
				continue
			}
			names = append(names, r.Name)
		}
	}
	for _, n := range names {
		d, m, err := s.Resolve(ctx, n)
		if err != nil {
			rep.Problems = append(rep.Problems, Problem{Object: n, Message: err.Error()})
			continue
		}
		named[d] = true
		add(n, m)
	}

	if full {
		err := s.walkFiles(manifestsDir, rep, func(d Digest, path string, st *unix.Stat_t) {
			m, err := s.ReadManifest(ctx, d)
			if err != nil {
				rep.Problems = append(rep.Problems, Problem{Object: d.String(), Path: path, Message: err.Error()})
				return
			}
			checkReadOnly(rep, d.String(), "", path, st)
			if !named[d] {
				add(d.String(), m)
			}
		})
		if err != nil {
			return err
		}
		err = s.walkFiles(chunksDir, rep, func(d Digest, path string, st *unix.Stat_t) {
			ck := checks[d]
			if ck == nil {
				ck = &chunkCheck{d: d, length: -1}
				checks[d] = ck
			}
			checkReadOnly(rep, "", d.String(), path, st)
			if ck.length < 0 {
				if st.Size <= 0 || st.Size > MaxChunkSize {
					rep.Problems = append(rep.Problems, Problem{Chunk: d.String(), Path: path, Message: fmt.Sprintf("%d bytes: no chunk has that length", st.Size)})
					delete(checks, d)
					return
				}
				ck.length = st.Size
			}
		})
		if err != nil {
			return err
		}
	}

	list := make([]*chunkCheck, 0, len(checks))
	var total int64
	for _, ck := range checks {
		list = append(list, ck)
		total += ck.length
	}
	rep.Chunks = len(list)
	return s.hashAll(ctx, list, total, opts.Progress, rep)
}

// checkReadOnly reports a store file that can be written: chunk and
// manifest files are 0444 so that nothing changes them under a mapping.
func checkReadOnly(rep *VerifyReport, object, chunk, path string, st *unix.Stat_t) {
	if st.Mode&0o222 != 0 {
		rep.Problems = append(rep.Problems, Problem{Object: object, Chunk: chunk, Path: path,
			Message: fmt.Sprintf("mode %o is writable; store files must be read-only (0444)", st.Mode&0o777)})
	}
}

// walkFiles visits every object file under the store's sub directory,
// reporting stray names.
func (s *Store) walkFiles(sub string, rep *VerifyReport, visit func(d Digest, path string, st *unix.Stat_t)) error {
	root := filepath.Join(s.dir, sub)
	shards, err := readDirNames(root)
	if err != nil {
		return err
	}
	sort.Strings(shards)
	for _, sh := range shards {
		dir := filepath.Join(root, sh)
		names, err := readDirNames(dir)
		if err != nil {
			if errors.Is(err, unix.ENOTDIR) {
				rep.Problems = append(rep.Problems, Problem{Path: dir, Message: "stray file"})
				continue
			}
			return err
		}
		sort.Strings(names)
		for _, n := range names {
			path := filepath.Join(dir, n)
			d, err := ParseDigest(n)
			if err != nil || n[:2] != sh {
				rep.Problems = append(rep.Problems, Problem{Path: path, Message: "stray file: not named by a digest in its shard"})
				continue
			}
			var st unix.Stat_t
			if err := unix.Lstat(path, &st); err != nil {
				return fmt.Errorf("stat %s: %w", path, err)
			}
			if st.Mode&unix.S_IFMT != unix.S_IFREG {
				rep.Problems = append(rep.Problems, Problem{Path: path, Message: "not a regular file"})
				continue
			}
			visit(d, path, &st)
		}
	}
	return nil
}

// hashAll reads and hashes every chunk in list, one worker per CPU.
func (s *Store) hashAll(ctx context.Context, list []*chunkCheck, total int64, progress func(int64, int64), rep *VerifyReport) error {
	work := make(chan *chunkCheck)
	var mu sync.Mutex
	var done int64
	var wg sync.WaitGroup
	for range max(1, runtime.GOMAXPROCS(0)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ck := range work {
				buf := getBuffer(ck.length)
				err := s.ReadChunk(ctx, ck.d, *buf)
				putBuffer(buf)
				mu.Lock()
				done += ck.length
				rep.Bytes += ck.length
				if err != nil {
					msg := chunkMessage(err)
					if len(ck.uses) == 0 {
						rep.Problems = append(rep.Problems, Problem{Chunk: ck.d.String(), Path: s.ChunkPath(ck.d), Message: msg})
					}
					for _, u := range ck.uses {
						rep.Problems = append(rep.Problems, Problem{Object: u.object, Chunk: ck.d.String(), Index: u.index, Path: s.ChunkPath(ck.d), Message: msg})
					}
				}
				if progress != nil {
					progress(done, total)
				}
				mu.Unlock()
			}
		}()
	}
	var err error
	for _, ck := range list {
		if err = ctx.Err(); err != nil {
			break
		}
		work <- ck
	}
	close(work)
	wg.Wait()
	return err
}

// chunkMessage is a ChunkError's cause without the chunk digest, which the
// Problem carries separately.
func chunkMessage(err error) string {
	var ce *ChunkError
	if errors.As(err, &ce) {
		return ce.Err.Error()
	}
	return err.Error()
}
