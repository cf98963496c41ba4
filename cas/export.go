package cas

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// WriteObject writes the object m describes to w, byte for byte, verifying
// every chunk before writing it. object names it in errors (a ref name or a
// digest). Holes are written as zeros, except to a regular file, where they
// are skipped and the file is sized at the end, leaving holes. progress, if
// set, is called with the bytes written so far.
func WriteObject(ctx context.Context, src Source, m *Manifest, object string, w io.Writer, progress func(int64)) error {
	if err := m.Validate(); err != nil {
		return fmt.Errorf("object %s: %w", object, err)
	}
	f, _ := w.(*os.File)
	if start, ok := sparseFrom(f); ok {
		return writeObjectToFile(ctx, src, m, object, f, start, progress)
	}
	buf := getBuffer(m.ChunkSize)
	defer putBuffer(buf)
	var done int64
	for i, d := range m.Chunks {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := m.ChunkLen(i)
		if d.IsZero() {
			if err := writeZeros(w, n); err != nil {
				return fmt.Errorf("object %s: write: %w", object, err)
			}
		} else {
			p := (*buf)[:n]
			if err := src.ReadChunk(ctx, d, p); err != nil {
				return inObject(err, object, i, int64(i)*m.ChunkSize)
			}
			if _, err := w.Write(p); err != nil {
				return fmt.Errorf("object %s: write: %w", object, err)
			}
		}
		done += n
		if progress != nil {
			progress(done)
		}
	}
	return nil
}

// chunkFiler is a Source whose chunks are local files (*Store): their
// verified bytes can be copied to the output inside the kernel.
type chunkFiler interface {
	ChunkFile(ctx context.Context, d Digest, length int64) (*os.File, error)
}

// writeObjectToFile writes the object at offset start of the regular file
// f, leaving holes, and leaves f's offset at its end. From a local store,
// each chunk is verified (read and hashed) and then copied from its file
// inside the kernel: chunk files never change, so the copied bytes are the
// verified ones.
func writeObjectToFile(ctx context.Context, src Source, m *Manifest, object string, f *os.File, start int64, progress func(int64)) error {
	files, _ := src.(chunkFiler)
	buf := getBuffer(m.ChunkSize)
	defer putBuffer(buf)
	var done int64
	for i, d := range m.Chunks {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := m.ChunkLen(i)
		off := int64(i) * m.ChunkSize
		if !d.IsZero() {
			copied := false
			if files != nil {
				cf, err := files.ChunkFile(ctx, d, n)
				if err != nil {
					return inObject(err, object, i, off)
				}
				copied = copyRange(cf, 0, f, start+off, n)
				cf.Close()
			}
			if !copied {
				p := (*buf)[:n]
				if err := src.ReadChunk(ctx, d, p); err != nil {
					return inObject(err, object, i, off)
				}
				if _, err := f.WriteAt(p, start+off); err != nil {
					return fmt.Errorf("object %s: write: %w", object, err)
				}
			}
		}
		done += n
		if progress != nil {
			progress(done)
		}
	}
	// A trailing hole exists only once the file is sized.
	if err := f.Truncate(start + m.Size); err != nil {
		return fmt.Errorf("object %s: size the output: %w", object, err)
	}
	if _, err := f.Seek(start+m.Size, io.SeekStart); err != nil {
		return fmt.Errorf("object %s: seek: %w", object, err)
	}
	return nil
}

// sparseFrom reports whether holes can be left in f by seeking over them,
// and the offset writing starts at: only in a regular file, not opened for
// appending (a seek would not move the write), with nothing at or after the
// current position (a skipped range must read back as zeros).
func sparseFrom(f *os.File) (start int64, ok bool) {
	if f == nil {
		return 0, false
	}
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		return 0, false
	}
	fl, err := unix.FcntlInt(f.Fd(), unix.F_GETFL, 0)
	if err != nil || fl&unix.O_APPEND != 0 {
		return 0, false
	}
	start, err = f.Seek(0, io.SeekCurrent)
	if err != nil || st.Size() > start {
		return 0, false
	}
	return start, true
}

func writeZeros(w io.Writer, n int64) error {
	for n > 0 {
		k := min(n, int64(len(zeroPage)))
		if _, err := w.Write(zeroPage[:k]); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

// Export writes the object ref name points at to w (see WriteObject),
// holding the store's shared lock so that no GC runs meanwhile.
func (s *Store) Export(ctx context.Context, name string, w io.Writer, progress func(int64)) error {
	return s.withSharedLock(ctx, func() error {
		_, m, err := s.Resolve(ctx, name)
		if err != nil {
			return err
		}
		return WriteObject(ctx, s, m, name, w, progress)
	})
}

// ExportFile writes the object ref name points at to the file path. It
// writes a temp file beside path and renames it into place only when the
// whole object is written, verified and fsynced, so that a failed export
// leaves an existing file as it was. An existing path that is not a regular
// file (a FIFO, a device, a directory) is refused; a symlink is followed.
func (s *Store) ExportFile(ctx context.Context, name, path string, progress func(int64)) error {
	target := path
	if resolved, err := filepath.EvalSymlinks(path); err == nil {
		target = resolved
	}
	if st, err := os.Stat(target); err == nil && !st.Mode().IsRegular() {
		return fmt.Errorf("export to %s: %w (it is a %s)", path, ErrNotRegular, describeMode(st.Mode()))
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("export to %s: %w", path, err)
	}
	// The temp file is created with mode 0644 and the process umask, as
	// the final file would be.
	f, err := createExclusive(filepath.Dir(target), "."+filepath.Base(target)+".volt-export-", 0o644)
	if err != nil {
		return fmt.Errorf("export to %s: %w", path, err)
	}
	ok := false
	defer func() {
		if !ok {
			os.Remove(f.Name())
		}
		f.Close()
	}()
	if err := s.Export(ctx, name, f, progress); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("export to %s: fsync: %w", path, err)
	}
	if err := os.Rename(f.Name(), target); err != nil {
		return fmt.Errorf("export to %s: %w", path, err)
	}
	ok = true
	return syncDir(filepath.Dir(target))
}

// createExclusive creates a new file named prefix plus random digits in dir.
func createExclusive(dir, prefix string, mode os.FileMode) (*os.File, error) {
	for {
		var rnd [8]byte
		if _, err := rand.Read(rnd[:]); err != nil {
			return nil, err
		}
		f, err := os.OpenFile(filepath.Join(dir, prefix+hex.EncodeToString(rnd[:])), os.O_RDWR|os.O_CREATE|os.O_EXCL, mode)
		if errors.Is(err, os.ErrExist) {
			continue
		}
		return f, err
	}
}
