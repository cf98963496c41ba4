// Package fusedisk serves a block backend (a cas/volume, or anything with
// the same methods) as one regular file through FUSE, so that a loop device
// can sit on it and the host kernel can mount the file system inside. This
// is how a container reads the chunks of its image straight from the CAS
// and writes into its own copy-on-write overlay: the host has no NBD, ublk
// or device mapper to do it in the block layer (see docs/containers.md).
//
// The FUSE file system has no directories: its root is the file (mounted
// with rootmode=S_IFREG over an existing regular file), so the only
// requests are the ones a file needs: open, read, write, fsync, fallocate
// (a loop device's discard), getattr and statfs.
package fusedisk

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Backend is what the file serves. *volume.Volume satisfies it.
type Backend interface {
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
	// Flush makes every write before it durable.
	Flush() error
	// Discard makes a range read as zeros and frees its space.
	Discard(off, n int64) error
	Size() int64
}

// Options configure a mount.
type Options struct {
	// ReadOnly refuses opens for writing (EROFS) and every write.
	ReadOnly bool
	// Workers is how many requests are served at once (default 4): the
	// kernel sends reads concurrently.
	Workers int
	// Logf receives backend errors (a damaged chunk, a full disk), which
	// the kernel only sees as EIO. Nil discards them.
	Logf func(format string, args ...any)
}

// maxWrite is the largest request payload: 256 pages, the kernel's limit
// for max_pages.
const maxWrite = 1 << 20

// Server is a mounted file. Close unmounts it and waits for its workers.
type Server struct {
	path string
	fd   int // /dev/fuse, non-blocking
	// wakeR becomes readable (its write end closed) when Close wants the
	// workers gone: a read(2) blocked on /dev/fuse would never notice, and
	// the runtime poller's edge-triggered epoll misses /dev/fuse's wake-ups
	// (measured: requests after INIT were never delivered), so each worker
	// waits in a level-triggered poll(2) on both.
	wakeR, wakeW int
	sess         *session
	wg           sync.WaitGroup

	closeOnce sync.Once
	closeErr  error
	// serveErr is the first error that stopped a worker for a reason other
	// than the unmount.
	serveErr atomic.Pointer[error]
}

// Mount mounts a FUSE file system over path, an existing regular file
// (which it hides while mounted), whose root is a regular file of
// b.Size() bytes serving b. Needs CAP_SYS_ADMIN. The mount is made in the
// caller's mount namespace; callers that want it to vanish with them run in
// a private one.
func Mount(path string, b Backend, opts Options) (*Server, error) {
	st, err := os.Lstat(path)
	if err != nil {
		return nil, fmt.Errorf("fusedisk: mount point: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("fusedisk: mount point %s is %s, want a regular file", path, st.Mode().Type())
	}
	if b.Size() < 0 {
		return nil, fmt.Errorf("fusedisk: backend size %d", b.Size())
	}
	fd, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("fusedisk: open /dev/fuse: %w (the kernel needs CONFIG_FUSE_FS)", err)
	}
	var pipe [2]int
	if err := unix.Pipe2(pipe[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("fusedisk: %w", err)
	}
	s := &Server{path: path, fd: fd, wakeR: pipe[0], wakeW: pipe[1]}
	// Options the kernel parses (fs/fuse/inode.c): the fd, the root's
	// type, and the owner that may use it. allow_other lets the loop
	// driver and the container's processes through; default_permissions
	// has the kernel check the mode bits.
	data := fmt.Sprintf("fd=%d,rootmode=%o,user_id=0,group_id=0,allow_other,default_permissions,max_read=%d",
		fd, unix.S_IFREG, maxWrite)
	var flags uintptr = unix.MS_NOSUID | unix.MS_NODEV
	if opts.ReadOnly {
		flags |= unix.MS_RDONLY
	}
	if err := unix.Mount("volt-disk", path, "fuse.volt-disk", flags, data); err != nil {
		s.closeFds()
		return nil, fmt.Errorf("fusedisk: mount %s: %w", path, err)
	}
	workers := opts.Workers
	if workers <= 0 {
		workers = 4
	}
	logf := opts.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	s.sess = newSession(b, opts.ReadOnly, logf)
	for range workers {
		s.wg.Add(1)
		go s.worker()
	}
	return s, nil
}

func (s *Server) closeFds() {
	unix.Close(s.fd)
	unix.Close(s.wakeR)
	if s.wakeW >= 0 {
		unix.Close(s.wakeW)
	}
}

// Path is the mounted file.
func (s *Server) Path() string { return s.path }

// Open opens the served file for the caller's own use (binding a loop
// device to it). Use it rather than os.OpenFile: the Go runtime registers
// files it opens with its epoll, and for a FUSE file that is a FUSE_POLL
// request made while the runtime holds a scheduler slot; with every slot
// so held, no worker can answer and the process deadlocks (seen with two
// slots). The file returned here is not registered.
func (s *Server) Open(flags int) (*os.File, error) {
	fd, err := unix.Open(s.path, flags|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: s.path, Err: err}
	}
	return os.NewFile(uintptr(fd), s.path), nil
}

// WaitReady blocks until the kernel's INIT has been answered (the file can
// be opened without waiting) or ctx ends.
func (s *Server) WaitReady(ctx context.Context) error {
	select {
	case <-s.sess.ready:
		if err := s.sess.initErr.Load(); err != nil {
			return *err
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// worker serves requests until Close or the end of the connection. It
// blocks its OS thread in poll(2), which is what a FUSE server does.
func (s *Server) worker() {
	defer s.wg.Done()
	buf := make([]byte, inHeaderSize+writeInSize+maxWrite)
	out := make([]byte, outHeaderSize+maxWrite)
	fds := []unix.PollFd{{Fd: int32(s.fd), Events: unix.POLLIN}, {Fd: int32(s.wakeR), Events: unix.POLLIN}}
	for {
		fds[0].Revents, fds[1].Revents = 0, 0
		if _, err := unix.Poll(fds, -1); err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			s.fail(fmt.Errorf("fusedisk: poll: %w", err))
			return
		}
		if fds[1].Revents != 0 {
			return // Close
		}
		if fds[0].Revents&(unix.POLLERR|unix.POLLHUP|unix.POLLNVAL) != 0 {
			return // the connection was aborted
		}
		n, err := unix.Read(s.fd, buf)
		if err != nil {
			switch {
			case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINTR):
				continue // another worker took it
			case errors.Is(err, unix.ENOENT):
				continue // interrupted before we read it
			case errors.Is(err, unix.ENODEV):
				return // unmounted
			}
			s.fail(fmt.Errorf("fusedisk: read /dev/fuse: %w", err))
			return
		}
		reply := s.sess.handle(buf[:n], out)
		if reply == nil {
			continue
		}
		if _, err := unix.Write(s.fd, reply); err != nil {
			switch {
			case errors.Is(err, unix.ENOENT):
				continue // the request was interrupted; nobody waits
			case errors.Is(err, unix.ENODEV):
				return
			}
			s.fail(fmt.Errorf("fusedisk: reply: %w", err))
			return
		}
	}
}

func (s *Server) fail(err error) {
	s.serveErr.CompareAndSwap(nil, &err)
}

// Close unmounts the file and stops the workers. The unmount is lazy
// (MNT_DETACH), so Close never waits for a loop device still open on the
// file; closing /dev/fuse afterwards aborts the connection, and such a user
// sees EIO from then on. Close the loop device first.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		if err := unix.Unmount(s.path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			s.closeErr = fmt.Errorf("fusedisk: unmount %s: %w", s.path, err)
		}
		unix.Close(s.wakeW) // wakes every worker's poll
		s.wakeW = -1
		s.wg.Wait()
		s.closeFds()
		if e := s.serveErr.Load(); e != nil && s.closeErr == nil {
			s.closeErr = *e
		}
	})
	return s.closeErr
}

// session answers requests; it holds no fd, so tests and the fuzz test can
// drive it with bytes.
type session struct {
	b        Backend
	readOnly bool
	logf     func(string, ...any)
	mtime    uint64

	readyOnce sync.Once
	ready     chan struct{}
	initErr   atomic.Pointer[error]
	// inited is set once INIT is answered: nothing else is served before.
	inited atomic.Bool
	// logged limits backend error messages so a broken disk cannot fill
	// the log: the first few are printed, then one a minute.
	loggedMu   sync.Mutex
	logged     int
	lastLogged time.Time
}

func newSession(b Backend, readOnly bool, logf func(string, ...any)) *session {
	return &session{b: b, readOnly: readOnly, logf: logf, mtime: uint64(time.Now().Unix()), ready: make(chan struct{})}
}

func (s *session) markReady(err error) {
	s.readyOnce.Do(func() {
		if err != nil {
			s.initErr.Store(&err)
		}
		close(s.ready)
	})
}

func (s *session) logBackend(op string, off int64, n int, err error) {
	s.loggedMu.Lock()
	defer s.loggedMu.Unlock()
	now := time.Now()
	if s.logged >= 10 && now.Sub(s.lastLogged) < time.Minute {
		return
	}
	s.logged++
	s.lastLogged = now
	s.logf("fusedisk: %s of %d bytes at %d: %v", op, n, off, err)
}

// handle answers one message in out and returns the reply to write, or nil
// when the opcode takes none. It never panics on any input: every length
// is checked before a field is read.
func (s *session) handle(msg, out []byte) []byte {
	req, err := parseRequest(msg)
	if err != nil {
		// Without a trustworthy header there is nobody to answer.
		s.logf("%v", err)
		return nil
	}
	if !needsReply(req.opcode) {
		return nil
	}
	if req.opcode != opInit && !s.inited.Load() {
		return errReply(out, req, unix.EIO)
	}
	switch req.opcode {
	case opInit:
		return s.init(req, out)
	case opDestroy:
		return okReply(out, req, 0)
	}
	if req.nodeid != rootID {
		// There is only the root; nothing else was ever looked up.
		return errReply(out, req, unix.ENOENT)
	}
	switch req.opcode {
	case opGetattr:
		return s.getattr(req, out)
	case opSetattr:
		return s.setattr(req, out)
	case opOpen:
		return s.open(req, out)
	case opRead:
		return s.read(req, out)
	case opWrite:
		return s.write(req, out)
	case opFsync:
		if len(req.body) < fsyncInSize {
			return errReply(out, req, unix.EINVAL)
		}
		if s.readOnly {
			return okReply(out, req, 0)
		}
		if err := s.b.Flush(); err != nil {
			s.logBackend("flush", 0, 0, err)
			return errReply(out, req, unix.EIO)
		}
		return okReply(out, req, 0)
	case opFlush, opRelease:
		return okReply(out, req, 0)
	case opFallocate:
		return s.fallocate(req, out)
	case opStatfs:
		return s.statfs(req, out)
	case opLookup:
		return errReply(out, req, unix.ENOENT) // a file has no entries
	case opAccess, opGetxattr, opListxattr, opLseek:
		// ENOSYS is remembered by the kernel, which then stops asking
		// (access: default_permissions decides; lseek: generic).
		return errReply(out, req, unix.ENOSYS)
	}
	return errReply(out, req, unix.ENOSYS)
}

func okReply(out []byte, req request, payload int) []byte {
	n := outHeaderSize + payload
	putHeader(out, n, 0, req.unique)
	return out[:n]
}

func errReply(out []byte, req request, errno unix.Errno) []byte {
	putHeader(out, outHeaderSize, -int32(errno), req.unique)
	return out[:outHeaderSize]
}

func (s *session) init(req request, out []byte) []byte {
	if s.inited.Load() {
		return errReply(out, req, unix.EINVAL)
	}
	if len(req.body) < initInSize {
		s.markReady(fmt.Errorf("fusedisk: INIT of %d bytes", len(req.body)))
		return errReply(out, req, unix.EINVAL)
	}
	le := binary.LittleEndian
	major, minor := le.Uint32(req.body[0:]), le.Uint32(req.body[4:])
	readahead, kflags := le.Uint32(req.body[8:]), le.Uint32(req.body[12:])
	if major < kernelMajor {
		err := fmt.Errorf("fusedisk: kernel speaks FUSE %d.%d, need %d.%d", major, minor, kernelMajor, minMinor)
		s.markReady(err)
		return errReply(out, req, unix.EPROTO)
	}
	if major > kernelMajor {
		// The protocol says: answer with our major and the kernel will
		// send a new INIT in it.
		b := out[outHeaderSize : outHeaderSize+initOutSize]
		clear(b)
		le.PutUint32(b[0:], kernelMajor)
		le.PutUint32(b[4:], ourMinor)
		return okReply(out, req, initOutSize)
	}
	if minor < minMinor {
		err := fmt.Errorf("fusedisk: kernel speaks FUSE 7.%d, need 7.%d", minor, minMinor)
		s.markReady(err)
		return errReply(out, req, unix.EPROTO)
	}
	b := out[outHeaderSize : outHeaderSize+initOutSize]
	clear(b)
	le.PutUint32(b[0:], kernelMajor)
	le.PutUint32(b[4:], min(minor, ourMinor))
	le.PutUint32(b[8:], readahead)
	le.PutUint32(b[12:], kflags&(initAsyncRead|initBigWrites|initMaxPages))
	binary.LittleEndian.PutUint16(b[16:], 16) // max_background
	binary.LittleEndian.PutUint16(b[18:], 12) // congestion_threshold
	le.PutUint32(b[20:], maxWrite)
	le.PutUint32(b[24:], 1) // time_gran: 1 ns
	binary.LittleEndian.PutUint16(b[28:], maxWrite/4096)
	s.inited.Store(true)
	s.markReady(nil)
	return okReply(out, req, initOutSize)
}

func (s *session) fileAttr() attr {
	size := uint64(s.b.Size())
	mode := uint32(unix.S_IFREG | 0o600)
	if s.readOnly {
		mode = unix.S_IFREG | 0o400
	}
	return attr{ino: rootID, size: size, blocks: (size + 511) / 512, mtime: s.mtime, mode: mode, nlink: 1, blksize: 4096}
}

// attrValid is how long the kernel may cache the attributes: the size
// never changes.
const attrValid = 3600

func (s *session) attrReply(req request, out []byte) []byte {
	b := out[outHeaderSize : outHeaderSize+attrOutSize]
	clear(b[:16])
	binary.LittleEndian.PutUint64(b[0:], attrValid)
	putAttr(b[16:], s.fileAttr())
	return okReply(out, req, attrOutSize)
}

func (s *session) getattr(req request, out []byte) []byte {
	return s.attrReply(req, out)
}

func (s *session) setattr(req request, out []byte) []byte {
	if len(req.body) < setattrInSize {
		return errReply(out, req, unix.EINVAL)
	}
	le := binary.LittleEndian
	valid := le.Uint32(req.body[0:])
	if valid&fattrSize != 0 && int64(le.Uint64(req.body[16:])) != s.b.Size() {
		return errReply(out, req, unix.EPERM) // a disk does not change size
	}
	if valid&^(fattrHarmless|fattrSize) != 0 {
		return errReply(out, req, unix.EPERM) // mode and owner are fixed
	}
	return s.attrReply(req, out)
}

func (s *session) open(req request, out []byte) []byte {
	if len(req.body) < openInSize {
		return errReply(out, req, unix.EINVAL)
	}
	flags := binary.LittleEndian.Uint32(req.body[0:])
	if s.readOnly && flags&unix.O_ACCMODE != unix.O_RDONLY {
		return errReply(out, req, unix.EROFS)
	}
	if flags&unix.O_TRUNC != 0 && s.b.Size() != 0 {
		return errReply(out, req, unix.EPERM)
	}
	b := out[outHeaderSize : outHeaderSize+openOutSize]
	clear(b)
	binary.LittleEndian.PutUint64(b[0:], 1) // fh: one file, one handle value
	binary.LittleEndian.PutUint32(b[8:], fopenDirectIO|fopenNoFlush)
	return okReply(out, req, openOutSize)
}

func (s *session) read(req request, out []byte) []byte {
	if len(req.body) < readInSize {
		return errReply(out, req, unix.EINVAL)
	}
	le := binary.LittleEndian
	off := le.Uint64(req.body[8:])
	size := le.Uint32(req.body[16:])
	if off > uint64(s.b.Size()) || off > 1<<62 {
		return errReply(out, req, unix.EINVAL)
	}
	// A read past the end is short, as for any file.
	want := min(uint64(size), maxWrite, uint64(s.b.Size())-off)
	p := out[outHeaderSize : outHeaderSize+int(want)]
	n, err := s.b.ReadAt(p, int64(off))
	if err != nil && !(errors.Is(err, io.EOF) && n == len(p)) {
		s.logBackend("read", int64(off), len(p), err)
		return errReply(out, req, unix.EIO)
	}
	return okReply(out, req, n)
}

func (s *session) write(req request, out []byte) []byte {
	if len(req.body) < writeInSize {
		return errReply(out, req, unix.EINVAL)
	}
	if s.readOnly {
		return errReply(out, req, unix.EROFS)
	}
	le := binary.LittleEndian
	off := le.Uint64(req.body[8:])
	size := le.Uint32(req.body[16:])
	data := req.body[writeInSize:]
	if uint64(size) != uint64(len(data)) {
		return errReply(out, req, unix.EINVAL)
	}
	if off > uint64(s.b.Size()) || uint64(size) > uint64(s.b.Size())-off {
		return errReply(out, req, unix.ENOSPC) // past the end of a fixed-size disk
	}
	n, err := s.b.WriteAt(data, int64(off))
	if err != nil {
		s.logBackend("write", int64(off), len(data), err)
		if errors.Is(err, unix.ENOSPC) {
			return errReply(out, req, unix.ENOSPC)
		}
		return errReply(out, req, unix.EIO)
	}
	b := out[outHeaderSize : outHeaderSize+writeOutSize]
	clear(b)
	le.PutUint32(b[0:], uint32(n))
	return okReply(out, req, writeOutSize)
}

func (s *session) fallocate(req request, out []byte) []byte {
	if len(req.body) < fallocInSize {
		return errReply(out, req, unix.EINVAL)
	}
	if s.readOnly {
		return errReply(out, req, unix.EROFS)
	}
	le := binary.LittleEndian
	off, length := le.Uint64(req.body[8:]), le.Uint64(req.body[16:])
	mode := le.Uint32(req.body[24:])
	size := uint64(s.b.Size())
	if off > size || length > size-off {
		if mode&fallocKeepSize == 0 {
			return errReply(out, req, unix.EOPNOTSUPP) // cannot grow
		}
		// KEEP_SIZE past the end: only the part inside matters.
		if off >= size {
			return okReply(out, req, 0)
		}
		length = size - off
	}
	switch mode {
	case 0, fallocKeepSize:
		// Allocation inside the disk: the overlay allocates as it is
		// written, so there is nothing to reserve.
		return okReply(out, req, 0)
	case fallocPunchHole | fallocKeepSize, fallocZeroRange, fallocZeroRange | fallocKeepSize:
		if err := s.b.Discard(int64(off), int64(length)); err != nil {
			s.logBackend("discard", int64(off), int(min(length, 1<<30)), err)
			return errReply(out, req, unix.EIO)
		}
		return okReply(out, req, 0)
	}
	return errReply(out, req, unix.EOPNOTSUPP)
}

func (s *session) statfs(req request, out []byte) []byte {
	b := out[outHeaderSize : outHeaderSize+statfsOutSize]
	clear(b)
	le := binary.LittleEndian
	le.PutUint64(b[0:], uint64(s.b.Size())/4096) // blocks
	le.PutUint64(b[32:], 0)                      // ffree
	le.PutUint64(b[24:], 1)                      // files
	le.PutUint32(b[40:], 4096)                   // bsize
	le.PutUint32(b[44:], 255)                    // namelen
	le.PutUint32(b[48:], 4096)                   // frsize
	return okReply(out, req, statfsOutSize)
}
