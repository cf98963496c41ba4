package pool

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/voltvmm/volt/cas"
	"github.com/voltvmm/volt/vmm/api/types"
)

// CASStore keeps each template's state file under Root/NAME/snapshot and
// its memory in a CAS store, as a memory manifest named by the ref
// voltpool:<pool id>:<NAME>. Clones restore with mem_backend Cas: every
// data chunk of the memory is mapped MAP_PRIVATE from its chunk file, so
// the clones of one template (and of templates that share chunks) share
// the page cache, and every chunk is verified against its digest as a
// clone maps it.
//
// The ref is the template's hold on its chunks: Remove drops it, and the
// next `volt cas gc` reclaims the chunks no ref or live lease reaches.
// Every running clone holds a lease on the manifest (volt-vmm takes it;
// for a jailed clone, which sees only a private view of the store, the
// pool takes it), so removing a template never takes memory from under a
// clone.
type CASStore struct {
	Root  string     // the templates' directories (STATE/templates)
	Store *cas.Store // the CAS store
	// PoolID tells this pool's refs from other pools' sharing the store.
	PoolID string
	tool   snapshotTool
}

var _ SnapshotStore = (*CASStore)(nil)

// NewCASStore opens (or creates) the CAS store in dir for the templates
// under root; volt-snapshot (tool) reads state files and imports flat
// snapshots.
func NewCASStore(root, dir, poolID, tool string) (*CASStore, error) {
	st, err := cas.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("pool: CAS store: %w", err)
	}
	return &CASStore{Root: root, Store: st, PoolID: poolID, tool: snapshotTool{bin: tool}}, nil
}

func (s *CASStore) dir(name string) string { return filepath.Join(s.Root, name, "snapshot") }

// refPrefix is the prefix of every ref this pool sets.
func (s *CASStore) refPrefix() string { return "voltpool:" + s.PoolID + ":" }

// Ref is the ref naming template name's memory manifest.
func (s *CASStore) Ref(name string) string { return s.refPrefix() + name }

// Put takes dir's snapshot as name's. Its memory is either a memory file
// (vm.mem: imported into the store, then deleted) or already in the store,
// written there by the template's VMM under the default ref
// snapshot-mem-<memory ID>, which Put takes over: the template's ref is
// set first, then the default ref removed, so the chunks are never
// unreachable.
func (s *CASStore) Put(ctx context.Context, name, dir string) (Snapshot, error) {
	dst := s.dir(name)
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return Snapshot{}, fmt.Errorf("store %s: %w", name, err)
	}
	if _, err := os.Lstat(dst); err == nil {
		return Snapshot{}, fmt.Errorf("store %s: a snapshot is already stored at %s", name, dst)
	}
	state := filepath.Join(dir, types.SnapshotStateFile)
	mem := filepath.Join(dir, types.SnapshotMemFile)
	ref := s.Ref(name)
	if err := cas.ValidateRefName(ref); err != nil {
		return Snapshot{}, fmt.Errorf("store %s: %w", name, err)
	}
	fail := func(err error) (Snapshot, error) {
		s.Store.RemoveRef(ref)
		return Snapshot{}, fmt.Errorf("store %s in the CAS: %w", name, err)
	}
	if fi, err := os.Lstat(mem); err == nil {
		if !fi.Mode().IsRegular() {
			return Snapshot{}, fmt.Errorf("store %s: %s is not a regular file", name, mem)
		}
		if err := s.tool.importMemory(ctx, dir, s.Store.Dir(), ref); err != nil {
			return fail(err)
		}
		if err := os.Remove(mem); err != nil {
			return fail(err)
		}
	}
	si, err := s.tool.info(ctx, state)
	if err != nil {
		return fail(err)
	}
	if si.Manifest.IsZero() {
		return fail(fmt.Errorf("%s names no memory manifest and no %s is beside it", state, types.SnapshotMemFile))
	}
	if si.Diff {
		return fail(fmt.Errorf("%s is a diff snapshot", state))
	}
	if _, err := s.Store.ReadManifest(ctx, si.Manifest); err != nil {
		return fail(fmt.Errorf("the memory manifest %s of %s: %w", si.Manifest, state, err))
	}
	if err := s.setRef(ctx, ref, si.Manifest); err != nil {
		return fail(err)
	}
	// The VMM's own ref for this memory, if it wrote it into the store.
	if err := s.dropDefaultRef(si); err != nil {
		return fail(err)
	}
	if err := sealFile(state); err != nil {
		return fail(err)
	}
	if err := os.Rename(dir, dst); err != nil {
		return fail(err)
	}
	if err := syncDir(filepath.Dir(dst)); err != nil {
		return Snapshot{}, err
	}
	return s.Get(ctx, name)
}

func (s *CASStore) setRef(ctx context.Context, ref string, d cas.Digest) error {
	ss, err := s.Store.Begin(ctx)
	if err != nil {
		return err
	}
	defer ss.Close()
	return ss.SetRef(ref, d)
}

// defaultRef is the ref volt-vmm gives the memory of a snapshot it writes
// into a CAS store (vmm/snapshot.DefaultMemoryRef).
func defaultRef(memoryID string) string { return "snapshot-mem-" + memoryID }

// dropDefaultRef removes snapshot-mem-<ID> if it names si's manifest.
func (s *CASStore) dropDefaultRef(si stateInfo) error {
	ref := defaultRef(si.MemoryID)
	d, err := s.Store.Ref(ref)
	if errors.Is(err, cas.ErrNotFound) || (err == nil && d != si.Manifest) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := s.Store.RemoveRef(ref); err != nil && !errors.Is(err, cas.ErrNotFound) {
		return err
	}
	return nil
}

// Abandon undoes what a template VMM left in the store for a snapshot in
// dir that will never be Put (a create that failed or was killed): the
// default ref of its memory, if the state file names one.
func (s *CASStore) Abandon(ctx context.Context, dir string) error {
	state := filepath.Join(dir, types.SnapshotStateFile)
	if _, err := os.Lstat(state); err != nil {
		return nil
	}
	si, err := s.tool.info(ctx, state)
	if err != nil || si.Manifest.IsZero() {
		return err
	}
	return s.dropDefaultRef(si)
}

// Get returns name's snapshot: its state file, and the manifest its ref
// names (read and verified).
func (s *CASStore) Get(ctx context.Context, name string) (Snapshot, error) {
	state := filepath.Join(s.dir(name), types.SnapshotStateFile)
	st, err := os.Lstat(state)
	if err != nil {
		return Snapshot{}, fmt.Errorf("snapshot of %s: %w", name, err)
	}
	if !st.Mode().IsRegular() {
		return Snapshot{}, fmt.Errorf("snapshot of %s: %s is not a regular file", name, state)
	}
	d, err := s.Store.Ref(s.Ref(name))
	if err != nil {
		return Snapshot{}, fmt.Errorf("snapshot of %s: ref %s: %w", name, s.Ref(name), err)
	}
	m, err := s.Store.ReadManifest(ctx, d)
	if err != nil {
		return Snapshot{}, fmt.Errorf("snapshot of %s: %w", name, err)
	}
	return Snapshot{StatePath: state, MemBytes: m.Size, CASStore: s.Store.Dir(), Manifest: d}, nil
}

// Remove drops name's ref and state file. Clones that run keep their
// chunks through their leases; `volt cas gc` reclaims the rest.
func (s *CASStore) Remove(_ context.Context, name string) error {
	errRef := s.Store.RemoveRef(s.Ref(name))
	if errors.Is(errRef, cas.ErrNotFound) || errors.Is(errRef, os.ErrNotExist) {
		errRef = nil
	}
	errDir := os.RemoveAll(s.dir(name))
	if errDir != nil && errors.Is(errDir, os.ErrNotExist) {
		errDir = nil
	}
	if err := errors.Join(errRef, errDir); err != nil {
		return fmt.Errorf("remove snapshot of %s: %w", name, err)
	}
	return nil
}

// Prune removes this pool's refs whose template is not in keep: refs a
// daemon killed between naming the memory and writing the template's
// record left behind.
func (s *CASStore) Prune(keep map[string]bool) ([]string, error) {
	refs, err := s.Store.Refs()
	if err != nil {
		return nil, err
	}
	var removed []string
	for _, r := range refs {
		name, ok := strings.CutPrefix(r.Name, s.refPrefix())
		if !ok || keep[name] {
			continue
		}
		if err := s.Store.RemoveRef(r.Name); err != nil && !errors.Is(err, cas.ErrNotFound) {
			return removed, err
		}
		removed = append(removed, r.Name)
	}
	return removed, nil
}

// poolID returns the pool's identity in shared stores, kept in
// STATE/pool-id (made on first use).
func poolID(stateDir string) (string, error) {
	path := filepath.Join(stateDir, "pool-id")
	var rec struct {
		ID string `json:"id"`
	}
	err := readJSON(path, &rec)
	if err == nil {
		if len(rec.ID) != 16 || strings.Trim(rec.ID, "0123456789abcdef") != "" {
			return "", fmt.Errorf("pool: %s: bad id %q", path, rec.ID)
		}
		return rec.ID, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("pool: %w", err)
	}
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	rec.ID = hex.EncodeToString(b[:])
	if err := writeJSON(path, rec, true); err != nil {
		return "", fmt.Errorf("pool: %w", err)
	}
	return rec.ID, nil
}
