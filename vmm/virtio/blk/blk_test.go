package blk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/voltvmm/volt/vmm/ratelimit"
	"github.com/voltvmm/volt/vmm/virtio"
	"github.com/voltvmm/volt/vmm/virtio/virtiotest"
)

const diskSize = 1 << 20

// tmpfsDir is a directory on tmpfs when the host has /dev/shm (fast, and
// what the benchmarks want), else a test temp dir.
func tmpfsDir(t testing.TB) string {
	t.Helper()
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		dir, err := os.MkdirTemp("/dev/shm", "volt-blk-test-")
		if err == nil {
			t.Cleanup(func() { os.RemoveAll(dir) })
			return dir
		}
	}
	return t.TempDir()
}

// diskImage creates a file of size bytes with a recognisable pattern.
func diskImage(t testing.TB, dir string, size int) string {
	t.Helper()
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(i/SectorSize) ^ byte(i)
	}
	path := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func header(typ uint32, sector uint64) []byte {
	h := make([]byte, headerSize)
	binary.LittleEndian.PutUint32(h[0:], typ)
	binary.LittleEndian.PutUint64(h[8:], sector)
	return h
}

func seg(sector uint64, sectors, flags uint32) []byte {
	b := make([]byte, segmentSize)
	binary.LittleEndian.PutUint64(b[0:], sector)
	binary.LittleEndian.PutUint32(b[8:], sectors)
	binary.LittleEndian.PutUint32(b[12:], flags)
	return b
}

type disk struct {
	*virtiotest.Harness
	dev  *Device
	file *File
	path string
}

func newDisk(t testing.TB, opts FileOptions, cfg Config) *disk {
	t.Helper()
	path := diskImage(t, tmpfsDir(t), diskSize)
	f, err := OpenFile(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	cfg.Backend = f
	dev, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h := virtiotest.NewHarness(t, dev, dev.Features())
	return &disk{Harness: h, dev: dev, file: f, path: path}
}

// do sends a request and returns its used entry's data and status byte.
func (d *disk) do(s virtiotest.Segments) ([]byte, byte) {
	d.T.Helper()
	u := d.Request(0, s)
	if u.Len == 0 || int(u.Len) != len(u.Data) {
		d.T.Fatalf("used length %d for %d writable bytes", u.Len, len(u.Data))
	}
	return u.Data[:len(u.Data)-1], u.Data[len(u.Data)-1]
}

func (d *disk) fileBytes(off, n int) []byte {
	d.T.Helper()
	b, err := os.ReadFile(d.path)
	if err != nil {
		d.T.Fatal(err)
	}
	return b[off : off+n]
}

func TestReadWriteFlushID(t *testing.T) {
	d := newDisk(t, FileOptions{}, Config{ID: "volt-disk-0"})
	// Read sectors 3-4 and compare with the file.
	data, status := d.do(virtiotest.Segments{Readable: [][]byte{header(reqIn, 3)}, Writable: []uint32{1024, 1}})
	if status != statusOK || !bytes.Equal(data, d.fileBytes(3*512, 1024)) {
		t.Fatalf("read: status %d, data matches %v", status, bytes.Equal(data, d.fileBytes(3*512, 1024)))
	}
	// Write two sectors given as three segments; the file changes.
	payload := bytes.Repeat([]byte("volt"), 256)
	_, status = d.do(virtiotest.Segments{Readable: [][]byte{header(reqOut, 10), payload[:100], payload[100:612], payload[612:]}, Writable: []uint32{1}})
	if status != statusOK || !bytes.Equal(d.fileBytes(10*512, 1024), payload) {
		t.Fatalf("write: status %d", status)
	}
	// Read it back through one indirect chain, header and status in one
	// table as Linux lays them out.
	if _, err := d.Rings[0].AddIndirect(virtiotest.Segments{Readable: [][]byte{header(reqIn, 10)}, Writable: []uint32{512, 512, 1}}); err != nil {
		t.Fatal(err)
	}
	d.Kick(0)
	u := d.Wait(0)
	if u.Data[1024] != statusOK || !bytes.Equal(u.Data[:1024], payload) {
		t.Fatalf("indirect read back: status %d", u.Data[1024])
	}
	if _, status = d.do(virtiotest.Segments{Readable: [][]byte{header(reqFlush, 0)}, Writable: []uint32{1}}); status != statusOK {
		t.Fatalf("flush: status %d", status)
	}
	id, status := d.do(virtiotest.Segments{Readable: [][]byte{header(reqGetID, 0)}, Writable: []uint32{IDLen, 1}})
	if status != statusOK || string(bytes.TrimRight(id, "\x00")) != "volt-disk-0" {
		t.Fatalf("get id: status %d, %q", status, id)
	}
	// The last sector is readable; one past it is not.
	if _, status = d.do(virtiotest.Segments{Readable: [][]byte{header(reqIn, diskSize/512-1)}, Writable: []uint32{512, 1}}); status != statusOK {
		t.Fatalf("last sector: status %d", status)
	}
	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}
	st := d.dev.Stats()
	if st.Reads != 3 || st.Writes != 1 || st.Flushes != 1 || st.IDs != 1 || st.BytesWritten != 1024 {
		t.Fatalf("stats %+v", st)
	}
}

// Requests the driver got wrong are answered, never fatal.
func TestBadRequests(t *testing.T) {
	last := uint64(diskSize / 512)
	tests := []struct {
		name string
		seg  virtiotest.Segments
		want byte
	}{
		{"read past the end", virtiotest.Segments{Readable: [][]byte{header(reqIn, last)}, Writable: []uint32{512, 1}}, statusIOErr},
		{"read straddling the end", virtiotest.Segments{Readable: [][]byte{header(reqIn, last-1)}, Writable: []uint32{1024, 1}}, statusIOErr},
		{"read with a huge sector", virtiotest.Segments{Readable: [][]byte{header(reqIn, ^uint64(0))}, Writable: []uint32{512, 1}}, statusIOErr},
		{"sector*512 overflows", virtiotest.Segments{Readable: [][]byte{header(reqIn, 1<<55)}, Writable: []uint32{512, 1}}, statusIOErr},
		{"read of a partial sector", virtiotest.Segments{Readable: [][]byte{header(reqIn, 0)}, Writable: []uint32{100, 1}}, statusIOErr},
		{"read with readable data", virtiotest.Segments{Readable: [][]byte{header(reqIn, 0), make([]byte, 512)}, Writable: []uint32{512, 1}}, statusIOErr},
		{"write past the end", virtiotest.Segments{Readable: [][]byte{header(reqOut, last), make([]byte, 512)}, Writable: []uint32{1}}, statusIOErr},
		{"write of a partial sector", virtiotest.Segments{Readable: [][]byte{header(reqOut, 0), make([]byte, 513)}, Writable: []uint32{1}}, statusIOErr},
		{"write with writable data", virtiotest.Segments{Readable: [][]byte{header(reqOut, 0), make([]byte, 512)}, Writable: []uint32{512, 1}}, statusIOErr},
		{"header too short", virtiotest.Segments{Readable: [][]byte{make([]byte, 15)}, Writable: []uint32{1}}, statusIOErr},
		{"no readable part", virtiotest.Segments{Writable: []uint32{512, 1}}, statusIOErr},
		{"unknown type", virtiotest.Segments{Readable: [][]byte{header(99, 0)}, Writable: []uint32{1}}, statusUnsupp},
		{"get lifetime (not offered)", virtiotest.Segments{Readable: [][]byte{header(10, 0)}, Writable: []uint32{8, 1}}, statusUnsupp},
		{"discard with unmap", virtiotest.Segments{Readable: [][]byte{header(reqDiscard, 0), seg(0, 8, segFlagUnmap)}, Writable: []uint32{1}}, statusUnsupp},
		{"discard with unknown flags", virtiotest.Segments{Readable: [][]byte{header(reqDiscard, 0), seg(0, 8, 4)}, Writable: []uint32{1}}, statusUnsupp},
		{"write zeroes with unknown flags", virtiotest.Segments{Readable: [][]byte{header(reqWriteZeroes, 0), seg(0, 8, 2)}, Writable: []uint32{1}}, statusUnsupp},
		{"discard past the end", virtiotest.Segments{Readable: [][]byte{header(reqDiscard, 0), seg(last-4, 8, 0)}, Writable: []uint32{1}}, statusIOErr},
		{"discard of a partial segment", virtiotest.Segments{Readable: [][]byte{header(reqDiscard, 0), seg(0, 8, 0)[:10]}, Writable: []uint32{1}}, statusIOErr},
		{"discard without segments", virtiotest.Segments{Readable: [][]byte{header(reqDiscard, 0)}, Writable: []uint32{1}}, statusIOErr},
		{"too many discard segments", virtiotest.Segments{Readable: [][]byte{header(reqDiscard, 0), make([]byte, segmentSize*(MaxDiscardSegments+1))}, Writable: []uint32{1}}, statusIOErr},
	}
	d := newDisk(t, FileOptions{}, Config{})
	before := d.fileBytes(0, diskSize)
	for _, tt := range tests {
		if _, status := d.do(tt.seg); status != tt.want {
			t.Errorf("%s: status %d, want %d", tt.name, status, tt.want)
		}
	}
	if !bytes.Equal(before, d.fileBytes(0, diskSize)) {
		t.Error("a refused request changed the disk")
	}
	// A chain without any writable byte cannot be answered; it is
	// returned with length 0 and the device goes on.
	u := d.Request(0, virtiotest.Segments{Readable: [][]byte{header(reqIn, 0)}})
	if u.Len != 0 {
		t.Fatalf("statusless request: used length %d", u.Len)
	}
	if _, status := d.do(virtiotest.Segments{Readable: [][]byte{header(reqIn, 0)}, Writable: []uint32{512, 1}}); status != statusOK {
		t.Fatalf("after bad requests: status %d", status)
	}
	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}
	if st := d.dev.Stats(); st.Errors != uint64(len(tests)) || st.Malformed != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestDiscardAndWriteZeroes(t *testing.T) {
	d := newDisk(t, FileOptions{}, Config{})
	if d.dev.Features()&(FeatureDiscard|FeatureWriteZeroes) != FeatureDiscard|FeatureWriteZeroes {
		t.Fatalf("features %#x lack discard/write-zeroes", d.dev.Features())
	}
	_, status := d.do(virtiotest.Segments{Readable: [][]byte{header(reqWriteZeroes, 0), seg(4, 2, 0), seg(100, 8, segFlagUnmap)}, Writable: []uint32{1}})
	if status != statusOK {
		t.Fatalf("write zeroes: status %d", status)
	}
	for _, r := range [][2]int{{4 * 512, 1024}, {100 * 512, 4096}} {
		if !bytes.Equal(d.fileBytes(r[0], r[1]), make([]byte, r[1])) {
			t.Fatalf("write zeroes left data at %d", r[0])
		}
	}
	if got := d.fileBytes(6*512, 512); bytes.Equal(got, make([]byte, 512)) {
		t.Fatal("write zeroes cleared a sector outside its range")
	}
	if _, status = d.do(virtiotest.Segments{Readable: [][]byte{header(reqDiscard, 0), seg(200, 16, 0)}, Writable: []uint32{1}}); status != statusOK {
		t.Fatalf("discard: status %d", status)
	}
	if info, _ := os.Stat(d.path); info.Size() != diskSize {
		t.Fatalf("discard changed the file size to %d", info.Size())
	}
}

func TestReadOnlyDrive(t *testing.T) {
	for _, how := range []string{"file opened read-only", "device read-only"} {
		t.Run(how, func(t *testing.T) {
			opts, cfg := FileOptions{ReadOnly: true}, Config{}
			if how == "device read-only" {
				opts, cfg = FileOptions{}, Config{ReadOnly: true}
			}
			d := newDisk(t, opts, cfg)
			if d.dev.Features()&FeatureRO == 0 || d.dev.Features()&(FeatureDiscard|FeatureWriteZeroes) != 0 {
				t.Fatalf("features %#x", d.dev.Features())
			}
			before := d.fileBytes(0, 4096)
			if _, status := d.do(virtiotest.Segments{Readable: [][]byte{header(reqOut, 0), make([]byte, 4096)}, Writable: []uint32{1}}); status != statusIOErr {
				t.Fatalf("write to a read-only drive: status %d", status)
			}
			if !bytes.Equal(before, d.fileBytes(0, 4096)) {
				t.Fatal("read-only drive was written")
			}
			if _, status := d.do(virtiotest.Segments{Readable: [][]byte{header(reqFlush, 0)}, Writable: []uint32{1}}); status != statusOK {
				t.Fatalf("flush of a read-only drive: status %d", status)
			}
			if _, status := d.do(virtiotest.Segments{Readable: [][]byte{header(reqIn, 0)}, Writable: []uint32{4096, 1}}); status != statusOK {
				t.Fatalf("read: status %d", status)
			}
		})
	}
}

func TestConfigSpace(t *testing.T) {
	path := diskImage(t, tmpfsDir(t), diskSize+100) // a partial last sector is not exposed
	f, err := OpenFile(path, FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d, err := New(Config{Backend: f})
	if err != nil {
		t.Fatal(err)
	}
	read := func(off uint64, n int) uint64 {
		b := make([]byte, 8)
		d.ReadConfig(off, b[:n])
		return binary.LittleEndian.Uint64(b)
	}
	if got := read(0, 8); got != diskSize/512 {
		t.Errorf("capacity %d", got)
	}
	if read(8, 4) != SizeMax || read(12, 4) != SegMax || read(20, 4) != 512 {
		t.Errorf("size_max %d seg_max %d blk_size %d", read(8, 4), read(12, 4), read(20, 4))
	}
	if read(40, 4) != MaxDiscardSegments || read(56, 1) != 1 {
		t.Errorf("max_discard_seg %d write_zeroes_may_unmap %d", read(40, 4), read(56, 1))
	}
	if read(1000, 4) != 0 || read(58, 4) != 0 {
		t.Error("bytes past the configuration read non-zero")
	}
	want := uint64(virtio.QueueFeatures | FeatureFlush | FeatureSegMax | FeatureSizeMax | FeatureDiscard | FeatureWriteZeroes)
	if d.Features() != want {
		t.Errorf("features %#x, want %#x", d.Features(), want)
	}
	if _, err := New(Config{Backend: f, ID: strings.Repeat("x", 21)}); err == nil {
		t.Error("21-byte ID accepted")
	}
	if _, err := New(Config{Backend: f, BlockSize: 1000}); err == nil {
		t.Error("block size 1000 accepted")
	}
}

// Without VIRTIO_BLK_F_FLUSH negotiated, writes must be durable when they
// complete (§5.2.6.4); the device then flushes after each write.
type countingBackend struct {
	Backend
	flushes atomic.Int64
}

func (c *countingBackend) Flush() error { c.flushes.Add(1); return c.Backend.Flush() }

func TestWritethroughWithoutFlushFeature(t *testing.T) {
	path := diskImage(t, tmpfsDir(t), diskSize)
	f, err := OpenFile(path, FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cb := &countingBackend{Backend: f}
	dev, err := New(Config{Backend: cb})
	if err != nil {
		t.Fatal(err)
	}
	h := virtiotest.NewHarness(t, dev, dev.Features()&^FeatureFlush)
	u := h.Request(0, virtiotest.Segments{Readable: [][]byte{header(reqOut, 0), make([]byte, 512)}, Writable: []uint32{1}})
	if u.Data[0] != statusOK || cb.flushes.Load() != 1 {
		t.Fatalf("status %d, %d flushes; want 0, 1", u.Data[0], cb.flushes.Load())
	}
}

func TestRateLimitedRequestsComplete(t *testing.T) {
	d := newDisk(t, FileOptions{}, Config{RateLimit: ratelimit.Config{
		Bytes: ratelimit.BucketConfig{Size: 8192, RefillTime: 20 * time.Millisecond},
	}})
	const n = 8
	for i := 0; i < n; i++ {
		if _, err := d.Rings[0].Add(virtiotest.Segments{Readable: [][]byte{header(reqIn, uint64(i*8))}, Writable: []uint32{4096, 1}}); err != nil {
			t.Fatal(err)
		}
	}
	d.Kick(0)
	for i := 0; i < n; i++ {
		if u := d.Wait(0); u.Data[4096] != statusOK {
			t.Fatalf("request %d: status %d", i, u.Data[4096])
		}
	}
	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}
	if d.dev.Stats().Throttled == 0 {
		t.Fatal("8 x 4 KiB against an 8 KiB bucket were never throttled")
	}
}

// A malformed chain (a loop) breaks the device: Run returns the error.
func TestMalformedChainBreaksTheDevice(t *testing.T) {
	d := newDisk(t, FileOptions{}, Config{})
	r := d.Rings[0]
	r.WriteDesc(r.Desc, 0, 0x100000, 16, virtiotest.FlagNext, 1)
	r.WriteDesc(r.Desc, 1, 0x100000, 1, virtiotest.FlagNext|virtiotest.FlagWrite, 0)
	r.PublishHead(0)
	d.Kick(0)
	err, done := d.Done(10 * time.Second)
	if !done || !errors.Is(err, virtio.ErrInvalidChain) {
		t.Fatalf("Run = %v (exited %v), want ErrInvalidChain", err, done)
	}
}

func TestStateRestore(t *testing.T) {
	d := newDisk(t, FileOptions{}, Config{ID: "disk"})
	st := d.dev.State()
	if st.Capacity != diskSize/512 || st.ID != "disk" {
		t.Fatalf("state %+v", st)
	}
	if err := d.dev.Restore(st); err != nil {
		t.Fatal(err)
	}
	bigger := st
	bigger.Capacity++
	if err := d.dev.Restore(bigger); err == nil {
		t.Error("restore onto a disk of another size accepted")
	}
	ro := st
	ro.Features |= FeatureRO
	if err := d.dev.Restore(ro); err == nil {
		t.Error("restore with other features accepted")
	}
}
