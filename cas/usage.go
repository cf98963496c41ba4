package cas

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// ObjectInfo describes one ref and the object it names.
type ObjectInfo struct {
	Name       string `json:"name"`
	Digest     Digest `json:"digest"`
	Kind       Kind   `json:"kind,omitempty"`
	Size       int64  `json:"size"`
	ChunkSize  int64  `json:"chunk_size,omitempty"`
	Chunks     int    `json:"chunks"`
	DataChunks int    `json:"data_chunks"` // chunks that are not holes
	DataBytes  int64  `json:"data_bytes"`  // Size minus holes
	// UniqueBytes are the bytes of chunks no other ref uses: what removing
	// this ref alone would let GC free (filled in by Usage).
	UniqueBytes int64  `json:"unique_bytes"`
	Error       string `json:"error,omitempty"` // a damaged ref or manifest
}

// List describes every ref, sorted by name. Damaged refs and manifests are
// listed with their error.
func (s *Store) List(ctx context.Context) ([]ObjectInfo, error) {
	infos, _, err := s.list(ctx)
	return infos, err
}

func (s *Store) list(ctx context.Context) ([]ObjectInfo, []*Manifest, error) {
	refs, err := s.Refs()
	if err != nil {
		return nil, nil, err
	}
	infos := make([]ObjectInfo, 0, len(refs))
	manifests := make([]*Manifest, 0, len(refs))
	for _, r := range refs {
		info := ObjectInfo{Name: r.Name, Digest: r.Digest}
		var m *Manifest
		if r.Err != nil {
			info.Error = r.Err.Error()
		} else if m, err = s.ReadManifest(ctx, r.Digest); err != nil {
			info.Error = err.Error()
		} else {
			info.Kind, info.Size, info.ChunkSize, info.Chunks = m.Kind, m.Size, m.ChunkSize, len(m.Chunks)
			info.DataChunks, info.DataBytes = m.Stats()
		}
		infos = append(infos, info)
		manifests = append(manifests, m)
	}
	return infos, manifests, nil
}

// Usage is the store's space accounting.
type Usage struct {
	Objects []ObjectInfo `json:"objects"`
	// LogicalBytes is the sum of the sizes of all refs' objects: what
	// exporting every ref to a flat file would take.
	LogicalBytes int64 `json:"logical_bytes"`
	// DataBytes is LogicalBytes without holes: what the refs would take in a
	// store that skips zeros but does not deduplicate.
	DataBytes int64 `json:"data_bytes"`
	// ReferencedBytes are the unique chunks the refs reach.
	ReferencedBytes int64 `json:"referenced_bytes"`
	// StoredBytes are all chunk files (their lengths), reachable or not;
	// ManifestBytes all manifest files.
	StoredBytes   int64 `json:"stored_bytes"`
	ManifestBytes int64 `json:"manifest_bytes"`
	// DiskBytes is what the store's chunk and manifest files occupy on disk
	// (allocated blocks).
	DiskBytes int64 `json:"disk_bytes"`
	// UnreferencedBytes are chunk files no ref reaches: freed by GC unless a
	// live lease holds them.
	UnreferencedBytes int64 `json:"unreferenced_bytes"`
	StoredChunks      int   `json:"stored_chunks"`
	Manifests         int   `json:"manifests"`
	// DedupRatio is DataBytes / ReferencedBytes: how much deduplication
	// saves beyond skipping holes. Ratio is LogicalBytes / StoredBytes, all
	// savings together. Both are 0 for an empty store.
	DedupRatio float64 `json:"dedup_ratio"`
	Ratio      float64 `json:"ratio"`
}

// Usage accounts the store's space, holding its shared lock.
func (s *Store) Usage(ctx context.Context) (*Usage, error) {
	u := &Usage{}
	err := s.withSharedLock(ctx, func() error { return s.usage(ctx, u) })
	if err != nil {
		return nil, fmt.Errorf("du: %w", err)
	}
	return u, nil
}

func (s *Store) usage(ctx context.Context, u *Usage) error {
	infos, manifests, err := s.list(ctx)
	if err != nil {
		return err
	}
	users := map[Digest]int{} // chunk -> refs using it
	length := map[Digest]int64{}
	for _, m := range manifests {
		if m == nil {
			continue
		}
		seen := map[Digest]bool{}
		for i, c := range m.Chunks {
			if !c.IsZero() && !seen[c] {
				seen[c] = true
				users[c]++
				length[c] = m.ChunkLen(i)
			}
		}
	}
	for i, m := range manifests {
		if m == nil {
			continue
		}
		u.LogicalBytes += m.Size
		u.DataBytes += infos[i].DataBytes
		seen := map[Digest]bool{}
		for _, c := range m.Chunks {
			if !c.IsZero() && !seen[c] {
				seen[c] = true
				if users[c] == 1 {
					infos[i].UniqueBytes += length[c]
				}
			}
		}
	}
	for _, n := range length {
		u.ReferencedBytes += n
	}
	u.Objects = infos

	err = s.walkStat(chunksDir, func(d Digest, st *unix.Stat_t) {
		u.StoredChunks++
		u.StoredBytes += st.Size
		u.DiskBytes += st.Blocks * 512
		if users[d] == 0 {
			u.UnreferencedBytes += st.Size
		}
	})
	if err != nil {
		return err
	}
	err = s.walkStat(manifestsDir, func(d Digest, st *unix.Stat_t) {
		u.Manifests++
		u.ManifestBytes += st.Size
		u.DiskBytes += st.Blocks * 512
	})
	if err != nil {
		return err
	}
	if u.ReferencedBytes > 0 {
		u.DedupRatio = float64(u.DataBytes) / float64(u.ReferencedBytes)
	}
	if u.StoredBytes > 0 {
		u.Ratio = float64(u.LogicalBytes) / float64(u.StoredBytes)
	}
	return nil
}

// walkStat visits the stat of every digest-named file under sub.
func (s *Store) walkStat(sub string, visit func(Digest, *unix.Stat_t)) error {
	root := filepath.Join(s.dir, sub)
	shards, err := readDirNames(root)
	if err != nil {
		return err
	}
	for _, sh := range shards {
		names, err := readDirNames(filepath.Join(root, sh))
		if errors.Is(err, unix.ENOTDIR) {
			continue
		}
		if err != nil {
			return err
		}
		for _, n := range names {
			d, err := ParseDigest(n)
			if err != nil {
				continue
			}
			var st unix.Stat_t
			if err := unix.Lstat(filepath.Join(root, sh, n), &st); err != nil {
				continue // removed meanwhile
			}
			visit(d, &st)
		}
	}
	return nil
}
