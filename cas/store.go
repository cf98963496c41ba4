// Package cas is Stellarium, Volt's content-addressed store: one directory
// per host holding fixed-size chunks named by their BLAKE3-256 digest,
// manifests (ordered chunk lists) that are themselves content-addressed, refs
// (human names for manifests) and leases (what running VMs and containers
// use). It is shared by processes without a daemon: flocks order writers
// against the garbage collector. See README.md for the layout, formats and
// locking rules.
//
// The package imports nothing else of Volt.
package cas

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"

	"golang.org/x/sys/unix"
)

// Layout of a store directory.
const (
	versionFile  = "VERSION"
	lockFile     = "lock"
	chunksDir    = "chunks"
	manifestsDir = "manifests"
	refsDir      = "refs"
	leasesDir    = "leases"
	ingestDir    = "ingest"
)

// layoutEntries are the names a store directory may hold; Open initialises a
// directory only if it holds nothing else (an interrupted initialisation
// leaves some of them).
var layoutEntries = []string{versionFile, lockFile, chunksDir, manifestsDir, refsDir, leasesDir, ingestDir}

// Errors callers branch on. Each is wrapped with context naming the object.
var (
	ErrNotFound = errors.New("not found")
	ErrCorrupt  = errors.New("corrupt")
	ErrNotStore = errors.New("not a volt CAS store")
)

// Source is the read path of a store: what export, volumes and restore read
// through. The local directory (*Store) is one; a remote tier (an S3-style
// object store, fetching into a local cache) can be another without changing
// callers. Every method verifies what it returns against its digest.
type Source interface {
	// ReadManifest returns the manifest stored under d, after checking that
	// its encoding hashes to d.
	ReadManifest(ctx context.Context, d Digest) (*Manifest, error)
	// ReadChunk fills p with chunk d, which must be exactly len(p) bytes
	// long, and checks its digest.
	ReadChunk(ctx context.Context, d Digest, p []byte) error
	// OpenChunk returns random access to chunk d of length bytes, verified
	// when opened. Content-addressed chunks never change, so a verified
	// handle stays valid.
	OpenChunk(ctx context.Context, d Digest, length int64) (ChunkReader, error)
}

// ChunkReader is random access to one verified chunk.
type ChunkReader interface {
	io.ReaderAt
	io.Closer
}

var _ Source = (*Store)(nil)

// Store is a local store directory. Its methods are safe for concurrent use
// by goroutines and by other processes sharing the directory.
type Store struct {
	dir string
}

// Open opens the store in dir, creating and initialising the directory if it
// does not exist or is empty. It refuses a store written by a newer volt
// (ErrNewerStore) and a non-empty directory that is not a store (ErrNotStore).
//
// A directory Open creates is mode 0700: chunk files are 0444, but they
// may hold guest memory, which other users must not read.
func Open(dir string) (*Store, error) { return open(dir, true) }

// OpenExisting opens the store in dir like Open, but refuses (ErrNotStore)
// a directory that is missing or not initialised, so that a mistyped path
// does not become a new, empty store.
func OpenExisting(dir string) (*Store, error) { return open(dir, false) }

func open(dir string, create bool) (*Store, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", dir, err)
	}
	s := &Store{dir: abs}
	if err := s.open(create); err != nil {
		return nil, fmt.Errorf("open store %s: %w", dir, err)
	}
	return s, nil
}

func (s *Store) open(create bool) error {
	if create {
		if err := os.MkdirAll(s.dir, 0o700); err != nil {
			return err
		}
	}
	if b, err := os.ReadFile(filepath.Join(s.dir, versionFile)); err == nil {
		return s.checkVersionFile(b)
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if !create {
		return fmt.Errorf("%w: no %s file (create a store with volt cas import, or check the path)", ErrNotStore, versionFile)
	}
	// No VERSION: initialise, holding an flock on the directory itself so
	// that two processes opening a new store at once do it one at a time.
	d, err := os.Open(s.dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := flockContext(context.Background(), d, unix.LOCK_EX); err != nil {
		return err
	}
	if b, err := os.ReadFile(filepath.Join(s.dir, versionFile)); err == nil {
		return s.checkVersionFile(b) // another process initialised it meanwhile
	}
	names, err := d.Readdirnames(-1)
	if err != nil {
		return err
	}
	for _, n := range names {
		if !slices.Contains(layoutEntries, n) {
			return fmt.Errorf("%w: it holds %q and has no %s file; use an empty directory", ErrNotStore, n, versionFile)
		}
	}
	// Every shard directory exists from the start, so that storing a chunk
	// never has to make a directory (and fsync its parent). The parents are
	// fsynced once each, after all their entries are made.
	for _, sub := range []string{chunksDir, manifestsDir, refsDir, leasesDir, ingestDir} {
		if err := mkdirIfMissing(filepath.Join(s.dir, sub)); err != nil {
			return err
		}
	}
	for _, sub := range []string{chunksDir, manifestsDir} {
		for i := range 256 {
			if err := mkdirIfMissing(filepath.Join(s.dir, sub, fmt.Sprintf("%02x", i))); err != nil {
				return err
			}
		}
		if err := syncDir(filepath.Join(s.dir, sub)); err != nil {
			return err
		}
	}
	lf, err := os.OpenFile(filepath.Join(s.dir, lockFile), os.O_RDONLY|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	lf.Close()
	if err := syncDir(s.dir); err != nil {
		return err
	}
	// VERSION goes last: its presence says the layout is complete.
	return s.writeFileAtomic(filepath.Join(s.dir, versionFile), EncodeVersion(StoreVersion), 0o444, true)
}

func (s *Store) checkVersionFile(b []byte) error {
	v, err := ParseVersion(b)
	if err != nil {
		return fmt.Errorf("%s: %w", versionFile, err)
	}
	return checkVersion(v)
}

// Dir returns the store's directory.
func (s *Store) Dir() string { return s.dir }

// ChunkPath returns where chunk d is stored in this store. The file may not
// exist; to use a chunk, open it with ChunkFile, which verifies it.
func (s *Store) ChunkPath(d Digest) string {
	h := d.String()
	return filepath.Join(s.dir, chunksDir, h[:2], h)
}

func (s *Store) manifestPath(d Digest) string {
	h := d.String()
	return filepath.Join(s.dir, manifestsDir, h[:2], h)
}

func (s *Store) refPath(name string) string { return filepath.Join(s.dir, refsDir, name) }

func (s *Store) openLock() (*os.File, error) {
	f, err := os.Open(filepath.Join(s.dir, lockFile))
	if err != nil {
		return nil, fmt.Errorf("store lock: %w", err)
	}
	return f, nil
}

// withSharedLock runs fn holding the store's shared lock, which keeps GC
// out for its duration.
func (s *Store) withSharedLock(ctx context.Context, fn func() error) error {
	lf, err := s.openLock()
	if err != nil {
		return err
	}
	defer lf.Close()
	if err := flockContext(ctx, lf, unix.LOCK_SH); err != nil {
		return err
	}
	return fn()
}

func mkdirIfMissing(dir string) error {
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	return nil
}

// mkdirDurable makes dir if it is missing, and makes its entry in the parent
// durable.
func mkdirDurable(dir string) error {
	err := os.Mkdir(dir, 0o755)
	if errors.Is(err, os.ErrExist) {
		return nil
	}
	if err != nil {
		return err
	}
	return syncDir(filepath.Dir(dir))
}

// syncDir makes a directory's entries (new links, renames, unlinks) durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}
