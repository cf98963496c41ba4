package fusedisk

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// memDisk is a Backend in memory that counts flushes and discards.
type memDisk struct {
	mu       sync.Mutex
	data     []byte
	flushes  int
	discards [][2]int64
	failRead bool
}

func (m *memDisk) ReadAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.failRead {
		return 0, errors.New("chunk 3f2a… is damaged")
	}
	if off >= int64(len(m.data)) {
		return 0, io.EOF
	}
	n := copy(p, m.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (m *memDisk) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return copy(m.data[off:], p), nil
}

func (m *memDisk) Flush() error { m.mu.Lock(); m.flushes++; m.mu.Unlock(); return nil }

func (m *memDisk) Discard(off, n int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.data[off : off+n])
	m.discards = append(m.discards, [2]int64{off, n})
	return nil
}

func (m *memDisk) Size() int64 { return int64(len(m.data)) }

func requireFUSE(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount FUSE")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("no /dev/fuse: %v", err)
	}
}

func mountMem(t *testing.T, m *memDisk, opts Options) (*Server, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "disk")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := Mount(path, m, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.WaitReady(ctx); err != nil {
		t.Fatalf("INIT: %v", err)
	}
	return s, path
}

func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i>>12)
	}
	return b
}

func TestFileServesTheBackendThroughTheKernel(t *testing.T) {
	requireFUSE(t)
	m := &memDisk{data: pattern(3<<20 + 512)}
	want := bytes.Clone(m.data)
	srv, path := mountMem(t, m, Options{})

	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != int64(len(want)) || !st.Mode().IsRegular() {
		t.Fatalf("stat: size %d mode %v, want %d regular", st.Size(), st.Mode(), len(want))
	}
	got, err := readFile(srv)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("contents read through FUSE differ from the backend")
	}

	f, err := srv.Open(os.O_RDWR)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// A write that spans more than one request, unaligned.
	w := bytes.Repeat([]byte{0xab}, 2<<20+100)
	if _, err := f.WriteAt(w, 4096+17); err != nil {
		t.Fatal(err)
	}
	copy(want[4096+17:], w)
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if m.flushes == 0 {
		t.Error("fsync did not reach the backend's Flush")
	}
	if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 1<<20, 8192); err != nil {
		t.Fatal(err)
	}
	clear(want[1<<20 : 1<<20+8192])
	if len(m.discards) != 1 || m.discards[0] != [2]int64{1 << 20, 8192} {
		t.Errorf("discards %v, want one of 8192 bytes at 1 MiB", m.discards)
	}
	m.mu.Lock()
	same := bytes.Equal(m.data, want)
	m.mu.Unlock()
	if !same {
		t.Error("backend does not hold what was written")
	}
	// Past the end: a disk does not grow.
	if _, err := f.WriteAt([]byte("x"), int64(len(want))); err == nil {
		t.Error("a write past the end succeeded")
	}
	if err := f.Truncate(10); err == nil {
		t.Error("truncate succeeded")
	}
	if err := f.Chmod(0o777); err == nil {
		t.Error("chmod succeeded")
	}
	// A short read at the end.
	buf := make([]byte, 1000)
	n, err := f.ReadAt(buf, int64(len(want))-10)
	if n != 10 || !errors.Is(err, io.EOF) {
		t.Errorf("read at the end: %d, %v; want 10, EOF", n, err)
	}
}

func TestReadOnlyFileRefusesWrites(t *testing.T) {
	requireFUSE(t)
	m := &memDisk{data: pattern(64 << 10)}
	srv, _ := mountMem(t, m, Options{ReadOnly: true})
	if _, err := srv.Open(os.O_RDWR); !errors.Is(err, unix.EROFS) {
		t.Errorf("open for writing: %v, want EROFS", err)
	}
	got, err := readFile(srv)
	if err != nil || !bytes.Equal(got, m.data) {
		t.Errorf("read-only read: %v", err)
	}
}

func TestBackendErrorsAreEIOAndLogged(t *testing.T) {
	requireFUSE(t)
	m := &memDisk{data: pattern(64 << 10), failRead: true}
	var mu sync.Mutex
	var logs []string
	srv, _ := mountMem(t, m, Options{Logf: func(f string, a ...any) {
		mu.Lock()
		logs = append(logs, f)
		mu.Unlock()
	}})
	_, err := readFile(srv)
	if !errors.Is(err, unix.EIO) {
		t.Errorf("read of a damaged backend: %v, want EIO", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(logs) == 0 {
		t.Error("the backend error was not logged")
	}
}

// readFile reads the whole served file through Server.Open.
func readFile(srv *Server) ([]byte, error) {
	f, err := srv.Open(os.O_RDONLY)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(f)
}

// With one scheduler slot, opening and reading the file from the serving
// process itself must not deadlock (os.Open would: see Server.Open).
func TestServingProcessCanUseTheFileWithOneSchedulerSlot(t *testing.T) {
	requireFUSE(t)
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	m := &memDisk{data: pattern(1 << 20)}
	srv, _ := mountMem(t, m, Options{})
	done := make(chan error, 1)
	go func() {
		got, err := readFile(srv)
		if err == nil && !bytes.Equal(got, m.data) {
			err = errors.New("contents differ")
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("reading the served file from its own process hung")
	}
}

func TestMountRefusesAMountPointThatIsNotAFile(t *testing.T) {
	requireFUSE(t)
	if _, err := Mount(t.TempDir(), &memDisk{}, Options{}); err == nil {
		t.Fatal("mounted over a directory")
	}
}

// message builds a request with header fields and a body.
func message(opcode uint32, nodeid uint64, body []byte) []byte {
	b := make([]byte, inHeaderSize+len(body))
	binary.LittleEndian.PutUint32(b[0:], uint32(len(b)))
	binary.LittleEndian.PutUint32(b[4:], opcode)
	binary.LittleEndian.PutUint64(b[8:], 42)
	binary.LittleEndian.PutUint64(b[16:], nodeid)
	copy(b[inHeaderSize:], body)
	return b
}

func initBody(major, minor uint32) []byte {
	b := make([]byte, 64)
	binary.LittleEndian.PutUint32(b[0:], major)
	binary.LittleEndian.PutUint32(b[4:], minor)
	binary.LittleEndian.PutUint32(b[8:], 128<<10)
	binary.LittleEndian.PutUint32(b[12:], initAsyncRead|initMaxPages|1<<30)
	return b
}

func replyErrno(t *testing.T, r []byte) int32 {
	t.Helper()
	if len(r) < outHeaderSize || int(binary.LittleEndian.Uint32(r)) != len(r) {
		t.Fatalf("malformed reply %x", r)
	}
	return int32(binary.LittleEndian.Uint32(r[4:]))
}

func TestSessionProtocol(t *testing.T) {
	out := make([]byte, outHeaderSize+maxWrite)
	m := &memDisk{data: pattern(8192)}
	s := newSession(m, false, func(string, ...any) {})

	if e := replyErrno(t, s.handle(message(opGetattr, rootID, make([]byte, 16)), out)); e != -int32(unix.EIO) {
		t.Errorf("getattr before INIT: errno %d, want -EIO", e)
	}
	for _, tc := range []struct {
		name         string
		major, minor uint32
		want         int32
	}{
		{"too old", 7, 20, -int32(unix.EPROTO)},
		{"older major", 6, 40, -int32(unix.EPROTO)},
	} {
		s := newSession(m, false, func(string, ...any) {})
		if e := replyErrno(t, s.handle(message(opInit, 0, initBody(tc.major, tc.minor)), out)); e != tc.want {
			t.Errorf("%s: errno %d, want %d", tc.name, e, tc.want)
		}
	}
	r := s.handle(message(opInit, 0, initBody(7, 44)), out)
	if replyErrno(t, r) != 0 || len(r) != outHeaderSize+initOutSize {
		t.Fatalf("INIT reply %x", r)
	}
	if minor := binary.LittleEndian.Uint32(r[outHeaderSize+4:]); minor != ourMinor {
		t.Errorf("negotiated minor %d, want %d", minor, ourMinor)
	}
	if flags := binary.LittleEndian.Uint32(r[outHeaderSize+12:]); flags&(1<<30) != 0 {
		t.Error("echoed a flag we do not implement")
	}
	if e := replyErrno(t, s.handle(message(opInit, 0, initBody(7, 44)), out)); e == 0 {
		t.Error("a second INIT was accepted")
	}

	readBody := func(off uint64, size uint32) []byte {
		b := make([]byte, readInSize)
		binary.LittleEndian.PutUint64(b[8:], off)
		binary.LittleEndian.PutUint32(b[16:], size)
		return b
	}
	for _, tc := range []struct {
		name    string
		msg     []byte
		errno   int32
		payload int
	}{
		{"read", message(opRead, rootID, readBody(4096, 4096)), 0, 4096},
		{"read short at the end", message(opRead, rootID, readBody(8000, 4096)), 0, 192},
		{"read past the end", message(opRead, rootID, readBody(9000, 10)), -int32(unix.EINVAL), 0},
		{"read truncated body", message(opRead, rootID, make([]byte, 8)), -int32(unix.EINVAL), 0},
		{"other node", message(opGetattr, 7, make([]byte, 16)), -int32(unix.ENOENT), 0},
		{"lookup", message(opLookup, rootID, []byte("x\x00")), -int32(unix.ENOENT), 0},
		{"unknown opcode", message(9999, rootID, nil), -int32(unix.ENOSYS), 0},
		{"getattr", message(opGetattr, rootID, make([]byte, 16)), 0, attrOutSize},
		{"statfs", message(opStatfs, rootID, nil), 0, statfsOutSize},
		{"destroy", message(opDestroy, 0, nil), 0, 0},
	} {
		r := s.handle(tc.msg, out)
		if e := replyErrno(t, r); e != tc.errno {
			t.Errorf("%s: errno %d, want %d", tc.name, e, tc.errno)
			continue
		}
		if tc.errno == 0 && len(r)-outHeaderSize != tc.payload {
			t.Errorf("%s: payload %d bytes, want %d", tc.name, len(r)-outHeaderSize, tc.payload)
		}
		if got := binary.LittleEndian.Uint64(r[8:]); got != 42 {
			t.Errorf("%s: unique %d, want 42", tc.name, got)
		}
	}
	// A write whose size field disagrees with its payload.
	wb := make([]byte, writeInSize+10)
	binary.LittleEndian.PutUint32(wb[16:], 11)
	if e := replyErrno(t, s.handle(message(opWrite, rootID, wb), out)); e != -int32(unix.EINVAL) {
		t.Errorf("inconsistent write: errno %d, want -EINVAL", e)
	}
	for _, op := range []uint32{opForget, opBatchForget, opInterrupt} {
		if r := s.handle(message(op, rootID, make([]byte, 16)), out); r != nil {
			t.Errorf("opcode %d got a reply", op)
		}
	}
	if r := s.handle([]byte{1, 2, 3}, out); r != nil {
		t.Error("a truncated header got a reply")
	}
	bad := message(opGetattr, rootID, make([]byte, 16))
	binary.LittleEndian.PutUint32(bad, 9999)
	if r := s.handle(bad, out); r != nil {
		t.Error("a header with a wrong length got a reply")
	}
}

// FuzzSession feeds arbitrary messages to an initialised session: it must
// never panic, and every reply must be a well-formed header that echoes the
// request's unique and says how long it is.
func FuzzSession(f *testing.F) {
	f.Add(message(opRead, rootID, make([]byte, readInSize)))
	f.Add(message(opWrite, rootID, append(make([]byte, writeInSize), 1, 2, 3)))
	f.Add(message(opFallocate, rootID, make([]byte, fallocInSize)))
	f.Add(message(opSetattr, rootID, make([]byte, setattrInSize)))
	f.Add(message(opInit, 0, initBody(7, 31)))
	f.Add(message(opOpen, rootID, make([]byte, openInSize)))
	f.Fuzz(func(t *testing.T, msg []byte) {
		out := make([]byte, outHeaderSize+maxWrite)
		m := &memDisk{data: make([]byte, 1<<16)}
		for _, ro := range []bool{false, true} {
			s := newSession(m, ro, func(string, ...any) {})
			s.handle(message(opInit, 0, initBody(7, 40)), out)
			// Fix the length so that the fuzzer reaches the handlers.
			if len(msg) >= inHeaderSize {
				binary.LittleEndian.PutUint32(msg, uint32(len(msg)))
			}
			r := s.handle(msg, out)
			if r == nil {
				continue
			}
			if len(r) < outHeaderSize || int(binary.LittleEndian.Uint32(r)) != len(r) {
				t.Fatalf("malformed reply %x", r)
			}
			if binary.LittleEndian.Uint64(r[8:]) != binary.LittleEndian.Uint64(msg[8:]) {
				t.Fatal("reply does not echo the request's unique")
			}
			if e := int32(binary.LittleEndian.Uint32(r[4:])); e > 0 || (e != 0 && len(r) != outHeaderSize) {
				t.Fatalf("errno %d with %d bytes", e, len(r))
			}
		}
	})
}
