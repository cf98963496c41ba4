package blk

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// Backend is the storage behind a block device: a byte-addressed disk of a
// fixed size. Offsets and lengths the device passes are multiples of 512
// and inside Size. It is the shape of an io.ReaderAt/io.WriterAt with a
// flush, so a copy-on-write volume (cas/volume: ReadAt, WriteAt, Sync,
// Size) fits with a three-line adapter. The device calls it from one
// goroutine at a time.
type Backend interface {
	io.ReaderAt
	io.WriterAt
	// Flush makes every completed write durable (fdatasync for a file).
	Flush() error
	// Size is the disk's size in bytes. The device exposes whole 512-byte
	// sectors of it.
	Size() int64
}

// Optional backend capabilities. The device offers the matching virtio
// features only when the backend has them.
type (
	// VectorBackend moves several buffers in one call (preadv/pwritev),
	// so that a request's segments cost one system call.
	VectorBackend interface {
		ReadVAt(bufs [][]byte, off int64) (int, error)
		WriteVAt(bufs [][]byte, off int64) (int, error)
	}
	// Discarder deallocates a range (VIRTIO_BLK_F_DISCARD); later reads of
	// it may return anything.
	Discarder interface {
		Discard(off, n int64) error
	}
	// ZeroWriter makes a range read as zeroes (VIRTIO_BLK_F_WRITE_ZEROES),
	// deallocating it if mayUnmap.
	ZeroWriter interface {
		WriteZeroes(off, n int64, mayUnmap bool) error
	}
	// Identifier supplies the device ID string (VIRTIO_BLK_T_GET_ID) when
	// the device configuration gives none.
	Identifier interface {
		ID() string
	}
	// ReadOnlyBackend reports a backend that refuses writes; the device
	// is then read-only too (VIRTIO_BLK_F_RO).
	ReadOnlyBackend interface {
		ReadOnly() bool
	}
)

// FileOptions describe how OpenFile opens a disk.
type FileOptions struct {
	// ReadOnly opens the file read-only; the device offers VIRTIO_BLK_F_RO.
	ReadOnly bool
	// Direct opens with O_DIRECT, bypassing the host page cache. Guest
	// buffers that are not aligned as the file system needs go through an
	// aligned bounce buffer.
	Direct bool
	// NoLock skips the advisory lock (flock: exclusive for read-write,
	// shared for read-only) that keeps two VMMs from writing one disk.
	NoLock bool
}

// File is a Backend over a regular file or a block device.
type File struct {
	f *os.File
	// fd is f's descriptor, kept to avoid os.File.Fd on every request; it
	// lives as long as f, which File owns.
	fd       int
	path     string
	size     int64
	readOnly bool
	block    bool
	id       string
	// direct is set for O_DIRECT; align is then the offset and memory
	// alignment it needs.
	direct bool
	align  int64

	mu     sync.Mutex // guards bounce
	bounce []byte     // page-aligned (mmap), for O_DIRECT
}

var (
	_ Backend         = (*File)(nil)
	_ VectorBackend   = (*File)(nil)
	_ Discarder       = (*File)(nil)
	_ ZeroWriter      = (*File)(nil)
	_ Identifier      = (*File)(nil)
	_ ReadOnlyBackend = (*File)(nil)
)

// ErrNotDisk is wrapped when a path is neither a regular file nor a block
// device.
var ErrNotDisk = errors.New("not a regular file or block device")

func kind(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return "a directory"
	case unix.S_IFIFO:
		return "a named pipe (FIFO)"
	case unix.S_IFSOCK:
		return "a socket"
	case unix.S_IFCHR:
		return "a character device"
	}
	return "a special file"
}

// OpenFile opens a disk image or a block device. The open is non-blocking,
// so that a FIFO or a character device at path is refused at once instead
// of hanging, and the type is checked before anything is read.
func OpenFile(path string, opts FileOptions) (*File, error) {
	if path == "" {
		return nil, errors.New("drive: no path given")
	}
	mode := unix.O_RDWR
	if opts.ReadOnly {
		mode = unix.O_RDONLY
	}
	flags := mode | unix.O_NONBLOCK | unix.O_CLOEXEC | unix.O_NOCTTY
	if opts.Direct {
		flags |= unix.O_DIRECT
	}
	fd, err := unix.Open(path, flags, 0)
	switch {
	case errors.Is(err, unix.EISDIR):
		return nil, fmt.Errorf("drive %s is a directory: %w", path, ErrNotDisk)
	case errors.Is(err, unix.EINVAL) && opts.Direct:
		return nil, fmt.Errorf("drive %s: the file system does not support O_DIRECT (tmpfs does not); drop the direct option: %w", path, err)
	case err != nil:
		return nil, fmt.Errorf("drive %s: %w", path, err)
	}
	b := &File{path: path, readOnly: opts.ReadOnly, direct: opts.Direct}
	if err := b.setup(fd, opts); err != nil {
		unix.Close(fd)
		return nil, err
	}
	b.f, b.fd = os.NewFile(uintptr(fd), path), fd
	return b, nil
}

func (b *File) setup(fd int, opts FileOptions) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("drive %s: stat: %w", b.path, err)
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		b.size = st.Size
	case unix.S_IFBLK:
		b.block = true
		size, err := unix.IoctlGetUint64(fd, unix.BLKGETSIZE64)
		if err != nil {
			return fmt.Errorf("drive %s: BLKGETSIZE64: %w", b.path, err)
		}
		if size > 1<<62 {
			return fmt.Errorf("drive %s: block device of %d bytes is too large", b.path, size)
		}
		b.size = int64(size)
	default:
		return fmt.Errorf("drive %s is %s: %w", b.path, kind(st.Mode), ErrNotDisk)
	}
	flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err == nil {
		_, err = unix.FcntlInt(uintptr(fd), unix.F_SETFL, flags&^unix.O_NONBLOCK)
	}
	if err != nil {
		return fmt.Errorf("drive %s: clear O_NONBLOCK: %w", b.path, err)
	}
	if !opts.NoLock {
		how := unix.LOCK_EX
		if opts.ReadOnly {
			how = unix.LOCK_SH
		}
		if err := unix.Flock(fd, how|unix.LOCK_NB); err != nil {
			if errors.Is(err, unix.EWOULDBLOCK) {
				return fmt.Errorf("drive %s is in use by another process (flock); two VMs writing one disk corrupt it: %w", b.path, err)
			}
			return fmt.Errorf("drive %s: flock: %w", b.path, err)
		}
	}
	if b.direct {
		align, err := directAlignment(fd, b.block)
		if err != nil {
			return fmt.Errorf("drive %s: %w", b.path, err)
		}
		b.align = align
	}
	b.id = fmt.Sprintf("%x-%x", st.Dev, st.Ino)
	if len(b.id) > IDLen {
		b.id = b.id[len(b.id)-IDLen:]
	}
	return nil
}

// directAlignment is the larger of O_DIRECT's memory and offset alignment
// (statx STATX_DIOALIGN; the logical block size of a block device).
func directAlignment(fd int, block bool) (int64, error) {
	var stx unix.Statx_t
	if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH, unix.STATX_DIOALIGN, &stx); err == nil && stx.Mask&unix.STATX_DIOALIGN != 0 && stx.Dio_offset_align != 0 {
		return int64(max(stx.Dio_mem_align, stx.Dio_offset_align)), nil
	}
	if block {
		n, err := unix.IoctlGetInt(fd, unix.BLKSSZGET)
		if err != nil {
			return 0, fmt.Errorf("BLKSSZGET: %w", err)
		}
		return int64(n), nil
	}
	return 0, errors.New("the file system does not report O_DIRECT alignment (STATX_DIOALIGN), so O_DIRECT cannot be used safely; drop the direct option")
}

// Close closes the file (and releases its lock).
func (b *File) Close() error {
	b.mu.Lock()
	if b.bounce != nil {
		unix.Munmap(b.bounce)
		b.bounce = nil
	}
	b.mu.Unlock()
	return b.f.Close()
}

// Path is the file's path.
func (b *File) Path() string { return b.path }

// Size implements Backend.
func (b *File) Size() int64 { return b.size }

// ReadOnly implements ReadOnlyBackend.
func (b *File) ReadOnly() bool { return b.readOnly }

// ID implements Identifier: the file's device and inode numbers, which
// identify the disk for the guest's /dev/disk/by-id as long as the file
// exists.
func (b *File) ID() string { return b.id }

// BlockSize is the logical block size the guest should use: the O_DIRECT
// alignment, or 512.
func (b *File) BlockSize() int64 {
	if b.direct && b.align > SectorSize {
		return b.align
	}
	return SectorSize
}

// ReadAt implements io.ReaderAt.
func (b *File) ReadAt(p []byte, off int64) (int, error) { return b.ReadVAt([][]byte{p}, off) }

// WriteAt implements io.WriterAt.
func (b *File) WriteAt(p []byte, off int64) (int, error) { return b.WriteVAt([][]byte{p}, off) }

// ReadVAt implements VectorBackend with preadv. A read past the end of the
// file (it shrank under us) is io.ErrUnexpectedEOF.
func (b *File) ReadVAt(bufs [][]byte, off int64) (int, error) {
	n, err := b.vectored(bufs, off, false)
	if b.direct && errors.Is(err, unix.EINVAL) && n == 0 {
		return b.bounced(bufs, off, false)
	}
	return n, err
}

// WriteVAt implements VectorBackend with pwritev.
func (b *File) WriteVAt(bufs [][]byte, off int64) (int, error) {
	if b.readOnly {
		return 0, fmt.Errorf("drive %s is read-only", b.path)
	}
	n, err := b.vectored(bufs, off, true)
	if b.direct && errors.Is(err, unix.EINVAL) && n == 0 {
		return b.bounced(bufs, off, true)
	}
	return n, err
}

// vectored loops over preadv/pwritev until every buffer is done: both may
// return short counts (signals, huge requests).
func (b *File) vectored(bufs [][]byte, off int64, write bool) (int, error) {
	fd := b.fd
	total := 0
	iov := bufs
	for len(iov) > 0 {
		if len(iov[0]) == 0 {
			iov = iov[1:]
			continue
		}
		var n int
		var err error
		if write {
			n, err = unix.Pwritev(fd, iov, off)
		} else {
			n, err = unix.Preadv(fd, iov, off)
		}
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return total, err
		}
		if n == 0 {
			if write {
				return total, io.ErrShortWrite
			}
			return total, io.ErrUnexpectedEOF
		}
		total += n
		off += int64(n)
		// Drop what was done; copy the header of a partly done buffer so
		// the caller's slice is left alone.
		for n > 0 {
			if n >= len(iov[0]) {
				n -= len(iov[0])
				iov = iov[1:]
				continue
			}
			rest := append([][]byte{iov[0][n:]}, iov[1:]...)
			iov, n = rest, 0
		}
	}
	return total, nil
}

// bounced does an O_DIRECT transfer whose buffers or range are not aligned
// through a page-aligned buffer covering the aligned range around it
// (read-modify-write for a partial write).
func (b *File) bounced(bufs [][]byte, off int64, write bool) (int, error) {
	var n int64
	for _, p := range bufs {
		n += int64(len(p))
	}
	start := off &^ (b.align - 1)
	end := (off + n + b.align - 1) &^ (b.align - 1)
	b.mu.Lock()
	defer b.mu.Unlock()
	buf, err := b.bounceBuffer(end - start)
	if err != nil {
		return 0, err
	}
	partial := start != off || end != off+n
	if !write || partial {
		if _, err := b.vectored([][]byte{buf}, start, false); err != nil {
			return 0, fmt.Errorf("bounce read: %w", err)
		}
	}
	pos := buf[off-start:]
	for _, p := range bufs {
		if write {
			copy(pos, p)
		} else {
			copy(p, pos)
		}
		pos = pos[len(p):]
	}
	if write {
		if _, err := b.vectored([][]byte{buf}, start, true); err != nil {
			return 0, fmt.Errorf("bounce write: %w", err)
		}
	}
	return int(n), nil
}

// bounceBuffer returns n bytes of the page-aligned bounce buffer, growing
// it. Precondition: mu held.
func (b *File) bounceBuffer(n int64) ([]byte, error) {
	if int64(len(b.bounce)) < n {
		if b.bounce != nil {
			unix.Munmap(b.bounce)
			b.bounce = nil
		}
		size := (n + 0xfff) &^ 0xfff
		m, err := unix.Mmap(-1, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			return nil, fmt.Errorf("O_DIRECT bounce buffer of %d bytes: %w", size, err)
		}
		b.bounce = m
	}
	return b.bounce[:n], nil
}

// Flush implements Backend with fdatasync, which block devices honour as a
// cache flush too.
func (b *File) Flush() error {
	if b.readOnly {
		return nil
	}
	for {
		err := unix.Fdatasync(b.fd)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("drive %s: fdatasync: %w", b.path, err)
		}
		return nil
	}
}

// Discard implements Discarder by punching a hole (files) or discarding
// (block devices, through the same fallocate call). A host that cannot is
// not an error: discard is advisory.
func (b *File) Discard(off, n int64) error {
	if b.readOnly {
		return fmt.Errorf("drive %s is read-only", b.path)
	}
	err := fallocate(b.fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) {
		return nil
	}
	return err
}

// WriteZeroes implements ZeroWriter: FALLOC_FL_ZERO_RANGE, or a punched
// hole when unmapping is allowed, or plain writes of zeroes when the host
// can do neither.
func (b *File) WriteZeroes(off, n int64, mayUnmap bool) error {
	if b.readOnly {
		return fmt.Errorf("drive %s is read-only", b.path)
	}
	fd := b.fd
	err := fallocate(fd, unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	if err == nil {
		return nil
	}
	if mayUnmap || !b.block {
		// A hole in a regular file reads as zeroes; on a block device
		// PUNCH_HOLE is a zeroing discard.
		if err = fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n); err == nil {
			return nil
		}
	}
	if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EINVAL) {
		return err
	}
	// With O_DIRECT, WriteVAt bounces the unaligned zero buffer.
	zero := make([]byte, min(n, 1<<20))
	for n > 0 {
		k := min(n, int64(len(zero)))
		if _, err := b.WriteVAt([][]byte{zero[:k]}, off); err != nil {
			return err
		}
		off, n = off+k, n-k
	}
	return nil
}

func fallocate(fd int, mode uint32, off, n int64) error {
	for {
		err := unix.Fallocate(fd, mode, off, n)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}
