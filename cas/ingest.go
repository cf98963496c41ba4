package cas

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Every file enters the store through ingest/: it is written to a temp file
// there, fsynced, and only then linked or renamed to its final name, so a
// name under chunks/, manifests/, refs/ or leases/ never shows a partial
// file. Each temp file is flocked by its writer for as long as it exists;
// a temp file nobody holds a lock on belongs to a writer that died (kill -9,
// power loss) and is removed by the next session or GC (cleanIngest).

// tempFile is a locked file under ingest/.
type tempFile struct {
	*os.File
	path   string
	closed bool
}

// createTemp makes a new, locked temp file under ingest/.
func (s *Store) createTemp(prefix string) (*tempFile, error) {
	for attempt := 0; ; attempt++ {
		var rnd [12]byte
		if _, err := rand.Read(rnd[:]); err != nil {
			return nil, err
		}
		path := filepath.Join(s.dir, ingestDir, prefix+"-"+hex.EncodeToString(rnd[:]))
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return nil, fmt.Errorf("create temp file: %w", err)
		}
		// Between the create and the flock a cleaner may have found the
		// file unlocked and removed it. Check, after locking, that the name
		// still leads to this file; if not, try a new name.
		ok, err := tryFlock(f)
		if err == nil && ok {
			var st1, st2 unix.Stat_t
			e1 := unix.Fstat(int(f.Fd()), &st1)
			e2 := unix.Stat(path, &st2)
			if e1 == nil && e2 == nil && st1.Ino == st2.Ino && st1.Dev == st2.Dev {
				return &tempFile{File: f, path: path}, nil
			}
		}
		f.Close()
		if err != nil {
			return nil, err
		}
		if attempt >= 10 {
			return nil, fmt.Errorf("create temp file in %s: kept losing it to a concurrent cleaner", filepath.Dir(path))
		}
	}
}

// discard removes the temp name and closes the file (dropping its lock);
// it does nothing after renameTo or a previous discard.
func (t *tempFile) discard() {
	if t.closed {
		return
	}
	os.Remove(t.path)
	t.Close()
	t.closed = true
}

// seal makes the temp file's content final: read-only mode, then fsync, so
// that it is durable before any name leads to it.
func (t *tempFile) seal(mode fs.FileMode) error {
	if err := t.Chmod(mode); err != nil {
		return err
	}
	if err := t.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", t.path, err)
	}
	return nil
}

// linkTo makes the sealed temp file visible at final without ever replacing
// an existing file there: content-addressed files are never replaced, so a
// reader that mapped a chunk sees the same inode forever. It reports whether
// final already existed (another writer stored the same content first). The
// temp name stays; discard it afterwards. The caller fsyncs final's
// directory before anything that refers to final is made durable.
func (t *tempFile) linkTo(final string) (existed bool, err error) {
	err = os.Link(t.path, final)
	if errors.Is(err, os.ErrNotExist) {
		// Open makes every shard directory; one may have been removed.
		if err := mkdirDurable(filepath.Dir(final)); err != nil {
			return false, err
		}
		err = os.Link(t.path, final)
	}
	if errors.Is(err, os.ErrExist) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("link %s: %w", final, err)
	}
	return false, nil
}

// renameTo moves the sealed temp file to final, replacing what is there:
// for refs, which change, and to replace a damaged chunk file with a new
// inode. On success the temp file is closed.
func (t *tempFile) renameTo(final string) error {
	err := os.Rename(t.path, final)
	if errors.Is(err, os.ErrNotExist) {
		if err := mkdirDurable(filepath.Dir(final)); err != nil {
			return err
		}
		err = os.Rename(t.path, final)
	}
	if err != nil {
		return fmt.Errorf("rename to %s: %w", final, err)
	}
	t.Close()
	t.closed = true
	return nil
}

// writeFileAtomic writes data to path through a temp file and fsyncs path's
// directory. replace chooses rename (replace) or link (keep an existing file).
func (s *Store) writeFileAtomic(path string, data []byte, mode fs.FileMode, replace bool) error {
	t, err := s.createTemp("file")
	if err != nil {
		return err
	}
	if _, err := t.Write(data); err != nil {
		t.discard()
		return fmt.Errorf("write %s: %w", t.path, err)
	}
	if err := t.seal(mode); err != nil {
		t.discard()
		return err
	}
	if replace {
		err = t.renameTo(path)
	} else {
		_, err = t.linkTo(path)
	}
	if err != nil {
		t.discard()
		return err
	}
	if !replace {
		t.discard()
	}
	return syncDir(filepath.Dir(path))
}

// cleanIngest removes temp files whose writers are gone: those nobody holds
// an flock on. It returns how many it removed. A live writer's file is never
// touched, so it is safe to call at any time.
func (s *Store) cleanIngest() (removed int, err error) {
	dir := filepath.Join(s.dir, ingestDir)
	names, err := readDirNames(dir)
	if err != nil {
		return 0, err
	}
	for _, n := range names {
		path := filepath.Join(dir, n)
		f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) || errors.Is(err, os.ErrPermission) {
				continue // its writer finished meanwhile, or it is not ours to judge
			}
			return removed, fmt.Errorf("clean %s: %w", path, err)
		}
		ok, err := tryFlock(f)
		if err == nil && ok {
			err = os.Remove(path)
			if err == nil {
				removed++
			} else if errors.Is(err, os.ErrNotExist) {
				err = nil
			}
		}
		f.Close()
		if err != nil {
			return removed, fmt.Errorf("clean %s: %w", path, err)
		}
	}
	return removed, nil
}

func readDirNames(dir string) ([]string, error) {
	d, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	return d.Readdirnames(-1)
}
