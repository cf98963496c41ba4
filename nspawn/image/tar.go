package image

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ExtractStats counts what an extraction did.
type ExtractStats struct {
	Entries int
	Bytes   int64 // regular file contents written
	// Skipped counts device nodes left out because the caller may not
	// make them (not root); the container's /dev is nspawn's anyway.
	Skipped int
}

// ErrBadArchive is wrapped by every error about the archive's content (as
// against the disk or permissions).
var ErrBadArchive = errors.New("bad archive")

// Extract unpacks a tar archive (plain or gzip-compressed) into dir, which
// must exist and should be empty. The archive is untrusted: every path is
// resolved inside dir through an os.Root, so no entry (a "../" name, an
// absolute name, a symlink planted by an earlier entry) can create or
// change anything outside it. Ownership, modes (with setuid/setgid/sticky),
// modification times and extended attributes are kept when run as root.
func Extract(r io.Reader, dir string) (ExtractStats, error) {
	var st ExtractStats
	br := bufio.NewReader(r)
	if magic, err := br.Peek(2); err == nil && magic[0] == 0x1f && magic[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return st, fmt.Errorf("%w: gzip: %v", ErrBadArchive, err)
		}
		defer zr.Close()
		r = zr
	} else {
		r = br
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return st, err
	}
	defer root.Close()
	x := &extractor{root: root, privileged: os.Geteuid() == 0}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return st, fmt.Errorf("%w: entry %d: %v", ErrBadArchive, st.Entries+1, err)
		}
		st.Entries++
		if err := x.entry(h, tr, &st); err != nil {
			return st, fmt.Errorf("entry %q: %w", truncate(h.Name), err)
		}
	}
	if err := x.finishDirs(); err != nil {
		return st, err
	}
	return st, nil
}

type extractor struct {
	root       *os.Root
	privileged bool
	// dirs get their mode and times after everything inside them exists,
	// deepest first, so creating children does not undo them.
	dirs []*tar.Header
}

// cleanName maps an archive name to a path inside the root: "." for the
// root itself. Leading "/" and "./" are dropped, as tar does; ".."
// components are refused outright rather than left to os.Root, so the
// error says what is wrong.
func cleanName(name string) (string, error) {
	if name == "" || strings.IndexByte(name, 0) >= 0 {
		return "", fmt.Errorf("%w: empty name or NUL in name", ErrBadArchive)
	}
	n := strings.TrimLeft(name, "/")
	for _, part := range strings.Split(n, "/") {
		if part == ".." {
			return "", fmt.Errorf("%w: name has a \"..\" component", ErrBadArchive)
		}
	}
	n = path.Clean("/" + n)[1:]
	if n == "" {
		return ".", nil
	}
	return n, nil
}

func (x *extractor) entry(h *tar.Header, r io.Reader, st *ExtractStats) error {
	name, err := cleanName(h.Name)
	if err != nil {
		return err
	}
	if h.Typeflag != tar.TypeDir && name == "." {
		return fmt.Errorf("%w: the root is not a directory", ErrBadArchive)
	}
	if dir := path.Dir(name); dir != "." {
		// Archives may omit parents; make them as tar does.
		if err := x.root.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}
	switch h.Typeflag {
	case tar.TypeDir:
		if name != "." {
			if err := x.root.Mkdir(name, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
				return err
			}
			if fi, err := x.root.Lstat(name); err != nil {
				return err
			} else if !fi.IsDir() {
				return fmt.Errorf("%w: a directory where the archive already put a %s", ErrBadArchive, fi.Mode().Type())
			}
		}
		x.dirs = append(x.dirs, h)
		return x.owner(name, h)
	case tar.TypeReg, tar.TypeRegA: //nolint:staticcheck // old archives still use '\x00'
		if err := x.replace(name); err != nil {
			return err
		}
		f, err := x.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
		if err != nil {
			return err
		}
		n, err := io.Copy(f, archiveReader{r})
		st.Bytes += n
		if err == nil && n != h.Size {
			err = fmt.Errorf("%w: %d bytes of %d", ErrBadArchive, n, h.Size)
		}
		if err == nil {
			err = x.xattrs(f, h)
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
		return x.attrs(name, h)
	case tar.TypeSymlink:
		if h.Linkname == "" || strings.IndexByte(h.Linkname, 0) >= 0 {
			return fmt.Errorf("%w: empty symlink target", ErrBadArchive)
		}
		if err := x.replace(name); err != nil {
			return err
		}
		// The target is text: it is resolved by the container, inside
		// its own root, never by us.
		if err := symlinkIn(x.root, h.Linkname, name); err != nil {
			return err
		}
		return x.owner(name, h)
	case tar.TypeLink:
		target, err := cleanName(h.Linkname)
		if err != nil {
			return err
		}
		if fi, err := x.root.Lstat(target); err != nil {
			return fmt.Errorf("%w: hard link to %q, which the archive has not created", ErrBadArchive, truncate(h.Linkname))
		} else if fi.IsDir() {
			return fmt.Errorf("%w: hard link to a directory", ErrBadArchive)
		}
		if err := x.replace(name); err != nil {
			return err
		}
		return x.root.Link(target, name)
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		if !x.privileged && h.Typeflag != tar.TypeFifo {
			st.Skipped++
			return nil
		}
		if err := x.replace(name); err != nil {
			return err
		}
		mode := uint32(unix.S_IFIFO)
		switch h.Typeflag {
		case tar.TypeChar:
			mode = unix.S_IFCHR
		case tar.TypeBlock:
			mode = unix.S_IFBLK
		}
		if err := mknodIn(x.root, name, mode|0o600, unix.Mkdev(uint32(h.Devmajor), uint32(h.Devminor))); err != nil {
			return err
		}
		return x.attrs(name, h)
	case tar.TypeXGlobalHeader:
		return nil // global PAX records: nothing to create
	}
	return fmt.Errorf("%w: unsupported entry type %q", ErrBadArchive, h.Typeflag)
}

// replace removes what an earlier entry put at name (later entries win, as
// with tar), except a directory, which an archive cannot replace.
func (x *extractor) replace(name string) error {
	fi, err := x.root.Lstat(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return fmt.Errorf("%w: replaces a directory", ErrBadArchive)
	}
	return x.root.Remove(name)
}

// owner sets ownership without following a symlink.
func (x *extractor) owner(name string, h *tar.Header) error {
	if !x.privileged {
		return nil
	}
	return x.root.Lchown(name, h.Uid, h.Gid)
}

// attrs sets owner, then mode (chown clears setuid bits), then times.
func (x *extractor) attrs(name string, h *tar.Header) error {
	if err := x.owner(name, h); err != nil {
		return err
	}
	if err := x.root.Chmod(name, fileMode(h)); err != nil {
		return err
	}
	return x.root.Chtimes(name, h.ModTime, h.ModTime)
}

func fileMode(h *tar.Header) fs.FileMode {
	m := fs.FileMode(h.Mode & 0o777)
	if h.Mode&0o4000 != 0 {
		m |= fs.ModeSetuid
	}
	if h.Mode&0o2000 != 0 {
		m |= fs.ModeSetgid
	}
	if h.Mode&0o1000 != 0 {
		m |= fs.ModeSticky
	}
	return m
}

// xattrs applies the PAX SCHILY.xattr records (GNU tar, bsdtar and the
// Go archive writer use them), such as security.capability of ping.
func (x *extractor) xattrs(f *os.File, h *tar.Header) error {
	if !x.privileged {
		return nil
	}
	keys := make([]string, 0, len(h.PAXRecords))
	for k := range h.PAXRecords {
		if strings.HasPrefix(k, "SCHILY.xattr.") {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		attr := strings.TrimPrefix(k, "SCHILY.xattr.")
		if err := unix.Fsetxattr(int(f.Fd()), attr, []byte(h.PAXRecords[k]), 0); err != nil {
			return fmt.Errorf("xattr %s: %w", attr, err)
		}
	}
	return nil
}

func (x *extractor) finishDirs() error {
	// Deepest first: a parent's mtime is set after its children's changes.
	slices.SortStableFunc(x.dirs, func(a, b *tar.Header) int {
		return strings.Count(path.Clean(b.Name), "/") - strings.Count(path.Clean(a.Name), "/")
	})
	for _, h := range x.dirs {
		name, _ := cleanName(h.Name)
		if err := x.root.Chmod(name, fileMode(h)); err != nil {
			return fmt.Errorf("entry %q: %w", truncate(h.Name), err)
		}
		mt := h.ModTime
		if mt.IsZero() {
			mt = time.Unix(0, 0)
		}
		if err := x.root.Chtimes(name, mt, mt); err != nil {
			return fmt.Errorf("entry %q: %w", truncate(h.Name), err)
		}
	}
	return nil
}

// symlinkIn makes a symlink at name (inside root) pointing at target,
// whatever the target says: it is created relative to its parent
// directory's descriptor, so name's own resolution stays inside root.
func symlinkIn(root *os.Root, target, name string) error {
	return atParent(root, name, func(dirfd int, base string) error {
		return unix.Symlinkat(target, dirfd, base)
	})
}

func mknodIn(root *os.Root, name string, mode uint32, dev uint64) error {
	return atParent(root, name, func(dirfd int, base string) error {
		return unix.Mknodat(dirfd, base, mode, int(dev))
	})
}

// atParent opens name's parent inside root and calls fn with its
// descriptor and name's last component.
func atParent(root *os.Root, name string, fn func(dirfd int, base string) error) error {
	d, err := root.OpenFile(path.Dir(name), os.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := fn(int(d.Fd()), path.Base(name)); err != nil {
		return &fs.PathError{Op: "create", Path: name, Err: err}
	}
	return nil
}

// archiveReader marks read errors as the archive's, so that a truncated
// archive is ErrBadArchive and a full disk is not.
type archiveReader struct{ r io.Reader }

func (a archiveReader) Read(p []byte) (int, error) {
	n, err := a.r.Read(p)
	if err != nil && !errors.Is(err, io.EOF) {
		err = fmt.Errorf("%w: %v", ErrBadArchive, err)
	}
	return n, err
}

func truncate(s string) string {
	if len(s) > 80 {
		return s[:77] + "..."
	}
	return s
}
