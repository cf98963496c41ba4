package cas

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// GCOptions configure a collection.
type GCOptions struct {
	DryRun bool // count what would be removed, remove nothing
}

// GCResult reports a collection.
type GCResult struct {
	Refs             int      `json:"refs"`
	LiveLeases       int      `json:"live_leases"`
	ExpiredLeases    int      `json:"expired_leases"` // held but past their expiry: protect nothing
	DeadLeases       int      `json:"dead_leases"`    // holder gone: removed
	ManifestsKept    int      `json:"manifests_kept"`
	ManifestsRemoved int      `json:"manifests_removed"`
	ChunksKept       int      `json:"chunks_kept"`
	ChunksRemoved    int      `json:"chunks_removed"`
	BytesRemoved     int64    `json:"bytes_removed"`
	TempFilesRemoved int      `json:"temp_files_removed"`
	Warnings         []string `json:"warnings,omitempty"`
	DryRun           bool     `json:"dry_run"`
}

// GC removes every manifest and chunk that no ref and no live, unexpired
// lease reaches, dead leases, and temp files of writers that died.
//
// Safety: GC holds the store's lock exclusively for its whole run, while
// every writer holds it shared from before its first file until its ref is
// durable or its lease is in place (see Session; a lease need not be
// durable, since no holder outlives a crash), and Export and Verify hold it shared while
// they read. So GC never runs during a write or one of those reads: it sees
// each writer's files either not yet written or already named, and never
// deletes a chunk a locked reader is about to read. Readers that do not take
// the lock (volumes, mapped memory) hold leases instead. A file GC removes
// was unreachable when the lock was taken and nothing could make it
// reachable again before the lock is released, since naming needs the
// shared lock. Manifests go before chunks, so that a GC killed half-way
// leaves no manifest whose chunks are gone.
//
// GC refuses to run (ErrCorrupt) when a ref, a reachable manifest or a live
// lease is damaged, since it cannot know what they protect; fix or remove
// them first (volt cas verify names them).
//
// A caller holding a Session must not call GC: it would wait for itself.
func (s *Store) GC(ctx context.Context, opts GCOptions) (*GCResult, error) {
	lf, err := s.openLock()
	if err != nil {
		return nil, err
	}
	defer lf.Close()
	if err := flockContext(ctx, lf, unix.LOCK_EX); err != nil {
		return nil, fmt.Errorf("gc: %w", err)
	}
	res := &GCResult{DryRun: opts.DryRun}
	live, err := s.markRoots(ctx, res, opts)
	if err != nil {
		return nil, fmt.Errorf("gc: %w", err)
	}
	if err := s.sweep(ctx, res, live, opts); err != nil {
		return nil, fmt.Errorf("gc: %w", err)
	}
	if !opts.DryRun {
		n, err := s.cleanIngest()
		res.TempFilesRemoved = n
		if err != nil {
			return nil, fmt.Errorf("gc: %w", err)
		}
	}
	return res, nil
}

// reachable is the marked set.
type reachable struct {
	manifests map[Digest]bool
	chunks    map[Digest]bool
}

func (s *Store) markRoots(ctx context.Context, res *GCResult, opts GCOptions) (*reachable, error) {
	live := &reachable{manifests: map[Digest]bool{}, chunks: map[Digest]bool{}}
	refs, err := s.Refs()
	if err != nil {
		return nil, err
	}
	for _, r := range refs {
		if errors.Is(r.Err, ErrBadRefName) {
			// Not a ref at all: a file nobody could have named with volt.
			res.Warnings = append(res.Warnings, fmt.Sprintf("stray file refs/%s is not a ref; left alone", r.Name))
			continue
		}
		if r.Err != nil {
			return nil, fmt.Errorf("ref %q is damaged, so what it protects is unknown; fix it or remove it (volt cas rm): %w", r.Name, r.Err)
		}
		res.Refs++
		if err := s.mark(ctx, live, r.Digest); err != nil {
			if errors.Is(err, ErrNotFound) {
				res.Warnings = append(res.Warnings, fmt.Sprintf("ref %q names manifest %s, which is not stored", r.Name, r.Digest))
				continue
			}
			return nil, fmt.Errorf("ref %q: %w", r.Name, err)
		}
	}

	leaseDir := filepath.Join(s.dir, leasesDir)
	names, err := readDirNames(leaseDir)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	removedLease := false
	for _, n := range names {
		info, f, err := s.inspectLease(n, now)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if !info.Alive {
			res.DeadLeases++
			if !opts.DryRun {
				err = os.Remove(filepath.Join(leaseDir, n))
				removedLease = true
			}
			f.Close()
			if err != nil {
				return nil, err
			}
			continue
		}
		if info.Err != nil {
			return nil, fmt.Errorf("live lease %s is damaged, so what it protects is unknown: %w", n, info.Err)
		}
		if info.Expired {
			res.ExpiredLeases++
			continue
		}
		res.LiveLeases++
		for _, d := range info.Record.Manifests {
			if err := s.mark(ctx, live, d); err != nil {
				if errors.Is(err, ErrNotFound) {
					res.Warnings = append(res.Warnings, fmt.Sprintf("lease %s names manifest %s, which is not stored", n, d))
					continue
				}
				return nil, fmt.Errorf("lease %s: %w", n, err)
			}
		}
	}
	if removedLease {
		if err := syncDir(leaseDir); err != nil {
			return nil, err
		}
	}
	return live, nil
}

// mark adds manifest d and its chunks to the live set.
func (s *Store) mark(ctx context.Context, live *reachable, d Digest) error {
	if live.manifests[d] {
		return nil
	}
	m, err := s.ReadManifest(ctx, d)
	if err != nil {
		return err
	}
	live.manifests[d] = true
	for _, c := range m.Chunks {
		if !c.IsZero() {
			live.chunks[c] = true
		}
	}
	return nil
}

// sweep removes unmarked manifests, then unmarked chunks.
func (s *Store) sweep(ctx context.Context, res *GCResult, live *reachable, opts GCOptions) error {
	err := s.walkObjects(filepath.Join(s.dir, manifestsDir), func(d Digest, path string, st *unix.Stat_t) (bool, error) {
		if live.manifests[d] {
			res.ManifestsKept++
			return false, nil
		}
		res.ManifestsRemoved++
		return !opts.DryRun, nil
	}, res)
	if err != nil {
		return err
	}
	return s.walkObjects(filepath.Join(s.dir, chunksDir), func(d Digest, path string, st *unix.Stat_t) (bool, error) {
		if err := ctx.Err(); err != nil {
			return false, err
		}
		if live.chunks[d] {
			res.ChunksKept++
			return false, nil
		}
		res.ChunksRemoved++
		res.BytesRemoved += st.Size
		return !opts.DryRun, nil
	}, res)
}

// walkObjects visits every file named by a digest under root/<shard>/,
// removing those visit asks to and fsyncing the shard directories it
// changed. Files that are not named like objects are reported and left.
func (s *Store) walkObjects(root string, visit func(d Digest, path string, st *unix.Stat_t) (remove bool, err error), res *GCResult) error {
	shards, err := readDirNames(root)
	if err != nil {
		return err
	}
	for _, sh := range shards {
		dir := filepath.Join(root, sh)
		names, err := readDirNames(dir)
		if err != nil {
			if errors.Is(err, unix.ENOTDIR) {
				res.Warnings = append(res.Warnings, fmt.Sprintf("stray file %s left alone", dir))
				continue
			}
			return err
		}
		changed := false
		for _, n := range names {
			path := filepath.Join(dir, n)
			d, err := ParseDigest(n)
			if err != nil || n[:2] != sh {
				res.Warnings = append(res.Warnings, fmt.Sprintf("stray file %s left alone", path))
				continue
			}
			var st unix.Stat_t
			if err := unix.Lstat(path, &st); err != nil {
				return fmt.Errorf("stat %s: %w", path, err)
			}
			remove, err := visit(d, path, &st)
			if err != nil {
				return err
			}
			if remove {
				if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
					return err
				}
				changed = true
			}
		}
		if changed {
			if err := syncDir(dir); err != nil {
				return err
			}
		}
	}
	return nil
}
