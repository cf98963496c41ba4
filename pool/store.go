package pool

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/voltvmm/volt/cas"
	"github.com/voltvmm/volt/vmm/api/types"
)

// Snapshot is where a template's snapshot can be loaded from: the paths a
// VMM's PUT /snapshot/load takes.
type Snapshot struct {
	StatePath string
	MemPath   string // the memory file; "" when the memory is in a CAS store
	MemBytes  int64  // the guest memory's size
	// CASStore is the store holding the memory as the manifest Manifest
	// (restored with mem_backend Cas); "" for a memory file.
	CASStore string
	Manifest cas.Digest
}

// SnapshotStore keeps templates' snapshots: FlatStore as two files,
// CASStore as a state file and a memory manifest in a CAS store.
type SnapshotStore interface {
	// Put takes the snapshot in dir (vm.state and vm.mem) as template
	// name's; dir is consumed (moved or copied and removed).
	Put(ctx context.Context, name, dir string) (Snapshot, error)
	// Get returns the stored snapshot of name.
	Get(ctx context.Context, name string) (Snapshot, error)
	// Remove drops name's snapshot. VMMs that mapped it keep their
	// mappings (the files are unlinked, not changed).
	Remove(ctx context.Context, name string) error
}

// FlatStore keeps each template's snapshot as two files under
// Root/NAME/snapshot.
type FlatStore struct {
	Root string
}

var _ SnapshotStore = (*FlatStore)(nil)

func (s *FlatStore) dir(name string) string { return filepath.Join(s.Root, name, "snapshot") }

func (s *FlatStore) Put(ctx context.Context, name, dir string) (Snapshot, error) {
	dst := s.dir(name)
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return Snapshot{}, fmt.Errorf("store %s: %w", name, err)
	}
	if _, err := os.Lstat(dst); err == nil {
		return Snapshot{}, fmt.Errorf("store %s: a snapshot is already stored at %s", name, dst)
	}
	for _, f := range []string{types.SnapshotStateFile, types.SnapshotMemFile} {
		if err := sealFile(filepath.Join(dir, f)); err != nil {
			return Snapshot{}, fmt.Errorf("store %s: %w", name, err)
		}
	}
	if err := os.Rename(dir, dst); err != nil {
		return Snapshot{}, fmt.Errorf("store %s: %w", name, err)
	}
	if err := syncDir(filepath.Dir(dst)); err != nil {
		return Snapshot{}, err
	}
	return s.Get(ctx, name)
}

// sealFile makes a stored snapshot file root's, read-only (0444: it is
// never written again; jailed VMMs of other uids read it through a
// read-only bind mount, while the template directory, 0750, keeps every
// other user out) and durable.
func sealFile(path string) error {
	if err := os.Lchown(path, 0, 0); err != nil && !errors.Is(err, os.ErrPermission) {
		return err
	}
	if err := os.Chmod(path, 0o444); err != nil {
		return err
	}
	return syncFile(path)
}

func syncFile(path string) error {
	f, err := os.Open(path) // fsync needs no write access
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

func (s *FlatStore) Get(_ context.Context, name string) (Snapshot, error) {
	d := s.dir(name)
	snap := Snapshot{StatePath: filepath.Join(d, types.SnapshotStateFile), MemPath: filepath.Join(d, types.SnapshotMemFile)}
	for _, p := range []string{snap.StatePath, snap.MemPath} {
		st, err := os.Lstat(p)
		if err != nil {
			return Snapshot{}, fmt.Errorf("snapshot of %s: %w", name, err)
		}
		if !st.Mode().IsRegular() {
			return Snapshot{}, fmt.Errorf("snapshot of %s: %s is not a regular file", name, p)
		}
		if p == snap.MemPath {
			snap.MemBytes = st.Size()
		}
	}
	return snap, nil
}

func (s *FlatStore) Remove(_ context.Context, name string) error {
	err := os.RemoveAll(s.dir(name))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove snapshot of %s: %w", name, err)
	}
	return nil
}
