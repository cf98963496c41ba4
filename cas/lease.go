package cas

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"golang.org/x/sys/unix"
)

// A lease keeps manifests (and so their chunks) alive while a VM or a
// container uses them, whether or not a ref names them. It is a file under
// leases/ whose flock its holder keeps for as long as it lives: when the
// holder exits or is killed, the kernel drops the lock and the lease is
// dead, and the next GC removes it. A lease may also carry an expiry, after
// which it protects nothing even while held.
//
// The holder must keep the Lease (its open file) for as long as it uses
// the manifests. Descriptors are close-on-exec, so a lease is not inherited
// by programs the holder executes.
type Lease struct {
	id   string
	path string
	f    *os.File
	rec  LeaseRecord
}

// LeaseOptions configure a lease.
type LeaseOptions struct {
	Expires time.Time // zero: protects until released or its holder dies
}

// Lease takes a lease on manifests, which must all be stored. It is what
// every VM restored from the store does before mapping its memory, so it
// takes only the store's shared lock (GC holds it exclusively) and not a
// whole Session, which would first sweep the ingest directory.
func (s *Store) Lease(ctx context.Context, opts LeaseOptions, manifests ...Digest) (*Lease, error) {
	lf, err := s.openLock()
	if err != nil {
		return nil, err
	}
	defer lf.Close()
	if err := flockContext(ctx, lf, unix.LOCK_SH); err != nil {
		return nil, err
	}
	return s.lease(opts, manifests)
}

// Lease takes a lease on manifests within a session, so that what the
// session stored stays protected after it ends without a ref.
func (ss *Session) Lease(opts LeaseOptions, manifests ...Digest) (*Lease, error) {
	if err := ss.check(); err != nil {
		return nil, err
	}
	// What the session stored must be durable before anything protects
	// it; the lease itself need not be (see lease).
	if err := ss.syncDirty(); err != nil {
		return nil, err
	}
	return ss.s.lease(opts, manifests)
}

// lease writes the lease file. Precondition: the store's lock is held
// shared. The file is not fsynced, nor is leases/: a lease protects only
// while its holder lives and holds its flock, and after a crash every
// holder is gone, so GC removes whatever a lease file then holds (complete,
// partial or empty) without reading it. Durability would buy nothing and
// cost two fsyncs on every restore.
func (s *Store) lease(opts LeaseOptions, manifests []Digest) (*Lease, error) {
	rec := LeaseRecord{PID: os.Getpid(), Expires: opts.Expires, Manifests: manifests}
	b, err := EncodeLease(rec)
	if err != nil {
		return nil, fmt.Errorf("lease: %w", err)
	}
	for _, d := range manifests {
		if _, err := os.Stat(s.manifestPath(d)); err != nil {
			return nil, fmt.Errorf("lease: manifest %s: %w", d, ErrNotFound)
		}
	}
	var rnd [8]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, err
	}
	id := hex.EncodeToString(rnd[:])
	final := filepath.Join(s.dir, leasesDir, id)
	// The temp file is flocked from its creation: that lock becomes the
	// lease's liveness once the file is renamed into leases/, complete.
	t, err := s.createTemp("lease")
	if err != nil {
		return nil, fmt.Errorf("lease: %w", err)
	}
	if _, err := t.Write(b); err != nil {
		t.discard()
		return nil, fmt.Errorf("lease: write: %w", err)
	}
	if err := t.Chmod(0o444); err != nil {
		t.discard()
		return nil, fmt.Errorf("lease: %w", err)
	}
	if err := os.Rename(t.path, final); err != nil {
		t.discard()
		return nil, fmt.Errorf("lease: %w", err)
	}
	return &Lease{id: id, path: final, f: t.File, rec: rec}, nil
}

// ID returns the lease's name under leases/.
func (l *Lease) ID() string { return l.id }

// Manifests returns what the lease protects.
func (l *Lease) Manifests() []Digest { return l.rec.Manifests }

// Release ends the lease: its file is removed, then its lock dropped.
func (l *Lease) Release() error {
	if l.f == nil {
		return nil
	}
	err := os.Remove(l.path)
	if errors.Is(err, os.ErrNotExist) {
		err = nil // a GC removed it after its expiry; nothing to undo
	}
	l.f.Close()
	l.f = nil
	if err != nil {
		return fmt.Errorf("release lease %s: %w", l.id, err)
	}
	return nil
}

// LeaseInfo describes a lease file as found in the store.
type LeaseInfo struct {
	ID      string
	Alive   bool // its holder still holds its lock
	Expired bool
	Record  LeaseRecord
	Err     error // a malformed lease file
}

// Leases lists the store's lease files and whether each is alive.
func (s *Store) Leases() ([]LeaseInfo, error) {
	names, err := readDirNames(filepath.Join(s.dir, leasesDir))
	if err != nil {
		return nil, fmt.Errorf("list leases: %w", err)
	}
	sort.Strings(names)
	var out []LeaseInfo
	for _, n := range names {
		info, f, err := s.inspectLease(n, time.Now())
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			return nil, err
		}
		if f != nil {
			f.Close()
		}
		out = append(out, info)
	}
	return out, nil
}

// inspectLease opens lease id and tests whether it is alive. For a dead
// lease it returns the file still open and locked, so that a GC can remove
// it knowing no holder can be using it.
func (s *Store) inspectLease(id string, now time.Time) (LeaseInfo, *os.File, error) {
	info := LeaseInfo{ID: id}
	path := filepath.Join(s.dir, leasesDir, id)
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return info, nil, err
	}
	free, err := tryFlock(f)
	if err != nil {
		f.Close()
		return info, nil, err
	}
	info.Alive = !free
	b, err := readFileLimited(path, int64(maxLeaseFileSize))
	if err == nil {
		info.Record, err = ParseLease(b)
	}
	if err != nil {
		info.Err = fmt.Errorf("lease %s: %w: %v", id, ErrCorrupt, err)
	} else if !info.Record.Expires.IsZero() && now.After(info.Record.Expires) {
		info.Expired = true
	}
	if info.Alive {
		f.Close()
		return info, nil, nil
	}
	return info, f, nil
}
