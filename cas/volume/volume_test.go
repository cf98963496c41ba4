package volume

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/voltvmm/volt/cas"
)

const kib = 1 << 10

func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// fixture is a store holding a base object named "base", with a copy of
// its bytes to compare against.
type fixture struct {
	store *cas.Store
	base  cas.Digest
	data  []byte
	chunk int64
}

func newFixture(t testing.TB, data []byte, chunk int64) *fixture {
	t.Helper()
	return newFixtureIn(t, t.TempDir(), data, chunk)
}

func newFixtureIn(t testing.TB, dir string, data []byte, chunk int64) *fixture {
	t.Helper()
	s, err := cas.Open(filepath.Join(dir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ss, err := s.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer ss.Close()
	res, err := ss.Import(ctx, bytes.NewReader(data), cas.ImportOptions{ChunkSize: chunk})
	if err != nil {
		t.Fatal(err)
	}
	if err := ss.SetRef("base", res.Digest); err != nil {
		t.Fatal(err)
	}
	return &fixture{store: s, base: res.Digest, data: append([]byte(nil), data...), chunk: chunk}
}

func (f *fixture) newVolume(t testing.TB, blockSize int64) (*Volume, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "vol")
	if err := Create(context.Background(), f.store, dir, f.base, Options{BlockSize: blockSize}); err != nil {
		t.Fatal(err)
	}
	v, err := Open(context.Background(), f.store, dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	return v, dir
}

func readAll(t testing.TB, v *Volume) []byte {
	t.Helper()
	b := make([]byte, v.Size())
	if _, err := v.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

func expectContent(t testing.TB, v *Volume, want []byte, when string) {
	t.Helper()
	if got := readAll(t, v); !bytes.Equal(got, want) {
		i := 0
		for i < len(got) && got[i] == want[i] {
			i++
		}
		t.Fatalf("%s: volume differs from the model at byte %d", when, i)
	}
}

func exportRef(t testing.TB, s *cas.Store, name string) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := s.Export(context.Background(), name, &b, nil); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

var blockSizes = []struct {
	name string
	size int64 // 0: the chunk size (whole-chunk copy-on-write)
}{{"4KiB blocks", 4 * kib}, {"whole-chunk blocks", 0}}

func TestVolumeWritesOverTheBase(t *testing.T) {
	const chunk = 64 * kib
	size := 5*chunk + 3*kib + 7 // a short last chunk and a short last block
	type write struct {
		off int64
		n   int
	}
	tests := []struct {
		name   string
		writes []write
	}{
		{"one aligned block", []write{{8 * kib, 4 * kib}}},
		{"one byte", []write{{12345, 1}}},
		{"spanning two blocks", []write{{4*kib - 10, 20}}},
		{"spanning two chunks", []write{{chunk - 100, 300}}},
		{"the last byte", []write{{int64(size) - 1, 1}}},
		{"the short last block", []write{{int64(size) - 100, 100}}},
		{"overwrites", []write{{100, 5000}, {200, 10}, {4000, 9000}}},
		{"the whole volume", []write{{0, size}}},
		{"zeros over a chunk", nil}, // filled below
	}
	for _, bs := range blockSizes {
		for _, tt := range tests {
			t.Run(bs.name+"/"+tt.name, func(t *testing.T) {
				f := newFixture(t, randomBytes(1, size), chunk)
				v, _ := f.newVolume(t, bs.size)
				model := append([]byte(nil), f.data...)
				expectContent(t, v, model, "before writing")
				for i, w := range tt.writes {
					p := randomBytes(uint64(100+i), w.n)
					if _, err := v.WriteAt(p, w.off); err != nil {
						t.Fatal(err)
					}
					copy(model[w.off:], p)
				}
				if tt.name == "zeros over a chunk" {
					z := make([]byte, chunk)
					if _, err := v.WriteAt(z, 2*chunk); err != nil {
						t.Fatal(err)
					}
					copy(model[2*chunk:], z)
				}
				expectContent(t, v, model, "after writing")
				res, err := v.Commit(context.Background(), "committed")
				if err != nil {
					t.Fatal(err)
				}
				if got := exportRef(t, f.store, "committed"); !bytes.Equal(got, model) {
					t.Fatal("the committed manifest differs from what the volume read")
				}
				expectContent(t, v, model, "after the commit rebased the volume")
				if v.WrittenBlocks() != 0 || v.Base() != res.Digest {
					t.Errorf("after commit: %d written blocks, base %s; want 0 and %s", v.WrittenBlocks(), v.Base().Short(), res.Digest.Short())
				}
				if tt.name == "zeros over a chunk" && !res.Manifest.Chunks[2].IsZero() {
					t.Error("a chunk written with zeros was stored instead of becoming a hole")
				}
			})
		}
	}
}

// TestVolumeAgainstAModel runs random operations on a volume and on a byte
// slice and checks that they agree, including across reopen and commit.
func TestVolumeAgainstAModel(t *testing.T) {
	const chunk = 32 * kib
	size := 9*chunk + 1000
	for _, bs := range blockSizes {
		t.Run(bs.name, func(t *testing.T) {
			f := newFixture(t, randomBytes(2, size), chunk)
			dir := filepath.Join(t.TempDir(), "vol")
			ctx := context.Background()
			if err := Create(ctx, f.store, dir, f.base, Options{BlockSize: bs.size}); err != nil {
				t.Fatal(err)
			}
			v, err := Open(ctx, f.store, dir)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { v.Close() }()
			model := append([]byte(nil), f.data...)
			r := rand.New(rand.NewPCG(3, 4))
			for op := range 400 {
				off := r.Int64N(int64(size))
				n := int(r.Int64N(min(int64(size)-off, 3*chunk)) + 1)
				switch k := r.IntN(20); {
				case k < 12:
					p := randomBytes(uint64(op), n)
					if _, err := v.WriteAt(p, off); err != nil {
						t.Fatal(err)
					}
					copy(model[off:], p)
				case k < 15:
					if err := v.Discard(off, int64(n)); err != nil {
						t.Fatal(err)
					}
					clear(model[off : off+int64(n)])
				case k < 17:
					p := make([]byte, n)
					if _, err := v.ReadAt(p, off); err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(p, model[off:off+int64(n)]) {
						t.Fatalf("op %d: read of %d at %d differs", op, n, off)
					}
				case k < 18:
					if err := v.Flush(); err != nil {
						t.Fatal(err)
					}
				case k < 19:
					if err := v.Close(); err != nil {
						t.Fatal(err)
					}
					if v, err = Open(ctx, f.store, dir); err != nil {
						t.Fatal(err)
					}
				default:
					if _, err := v.Commit(ctx, "model"); err != nil {
						t.Fatal(err)
					}
				}
			}
			expectContent(t, v, model, "at the end")
			if _, err := v.Commit(ctx, "model"); err != nil {
				t.Fatal(err)
			}
			if got := exportRef(t, f.store, "model"); !bytes.Equal(got, model) {
				t.Fatal("final commit differs from the model")
			}
			rep, err := f.store.Verify(ctx, cas.VerifyOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if !rep.OK() {
				t.Fatalf("verify: %v", rep.Problems)
			}
		})
	}
}

func TestCommitRehashesOnlyChangedChunks(t *testing.T) {
	const chunk = 64 * kib
	f := newFixture(t, randomBytes(5, 16*chunk), chunk)
	v, _ := f.newVolume(t, 4*kib)
	for _, off := range []int64{3*chunk + 10, 3*chunk + 5000, 9 * chunk, 15*chunk + chunk - 1} {
		if _, err := v.WriteAt([]byte{1, 2, 3}[:1], off); err != nil {
			t.Fatal(err)
		}
	}
	res, err := v.Commit(context.Background(), "v2")
	if err != nil {
		t.Fatal(err)
	}
	if res.ChangedChunks != 3 || res.NewChunks != 3 {
		t.Errorf("changed %d chunks, stored %d new; want 3 and 3", res.ChangedChunks, res.NewChunks)
	}
	baseM, _ := f.store.ReadManifest(context.Background(), f.base)
	same := 0
	for i := range baseM.Chunks {
		if baseM.Chunks[i] == res.Manifest.Chunks[i] {
			same++
		}
	}
	if same != 13 {
		t.Errorf("%d chunks shared with the base, want 13", same)
	}
	// A commit with nothing written yields the same manifest.
	again, err := v.Commit(context.Background(), "v3")
	if err != nil {
		t.Fatal(err)
	}
	if again.Digest != res.Digest || again.ChangedChunks != 0 {
		t.Errorf("empty commit: %s, %d changed; want %s, 0", again.Digest.Short(), again.ChangedChunks, res.Digest.Short())
	}
}

func TestInstantCloneSeesTheCommit(t *testing.T) {
	const chunk = 64 * kib
	ctx := context.Background()
	f := newFixture(t, randomBytes(6, 4*chunk), chunk)
	v, _ := f.newVolume(t, 0)
	msg := []byte("written by the first VM")
	if _, err := v.WriteAt(msg, chunk+100); err != nil {
		t.Fatal(err)
	}
	res, err := v.Commit(ctx, "golden")
	if err != nil {
		t.Fatal(err)
	}
	ss, err := f.store.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := ss.SetRef("clone", res.Digest); err != nil { // the instant clone
		t.Fatal(err)
	}
	ss.Close()
	d, err := f.store.Ref("clone")
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "clone-vol")
	if err := Create(ctx, f.store, dir, d, Options{}); err != nil {
		t.Fatal(err)
	}
	c, err := Open(ctx, f.store, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got := make([]byte, len(msg))
	if _, err := c.ReadAt(got, chunk+100); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("clone reads %q, %v", got, err)
	}
	// Writes to the clone do not reach the original.
	if _, err := c.WriteAt([]byte("clone's own"), chunk+100); err != nil {
		t.Fatal(err)
	}
	if _, err := v.ReadAt(got, chunk+100); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("original reads %q after the clone wrote, %v", got, err)
	}
}

func TestVolumeOpenIsExclusive(t *testing.T) {
	f := newFixture(t, randomBytes(7, 100*kib), 64*kib)
	_, dir := f.newVolume(t, 0)
	if _, err := Open(context.Background(), f.store, dir); !errors.Is(err, ErrInUse) {
		t.Fatalf("second open: %v, want ErrInUse", err)
	}
	info, err := ReadInfo(dir)
	if err != nil || !info.InUse || info.Base != f.base {
		t.Errorf("info %+v, %v", info, err)
	}
}

func TestOpenVolumeLeasesItsBase(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, randomBytes(8, 200*kib), 64*kib)
	v, dir := f.newVolume(t, 0)
	if err := f.store.RemoveRef("base"); err != nil {
		t.Fatal(err)
	}
	res, err := f.store.GC(ctx, cas.GCOptions{})
	if err != nil || res.ChunksRemoved != 0 || res.LiveLeases != 1 {
		t.Fatalf("gc while the volume is open: %+v, %v", res, err)
	}
	expectContent(t, v, f.data, "after gc")
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	if res, err := f.store.GC(ctx, cas.GCOptions{}); err != nil || res.ChunksRemoved != 4 {
		t.Fatalf("gc after close: %+v, %v", res, err)
	}
	if _, err := Open(ctx, f.store, dir); !errors.Is(err, cas.ErrNotFound) {
		t.Errorf("open over a collected base: %v, want ErrNotFound", err)
	}
}

func TestVolumeBounds(t *testing.T) {
	f := newFixture(t, randomBytes(9, 10000), 4*kib)
	v, _ := f.newVolume(t, 0)
	for _, c := range []struct {
		off int64
		n   int
	}{{-1, 1}, {10000, 1}, {9999, 2}, {1 << 62, 1}} {
		if _, err := v.WriteAt(make([]byte, c.n), c.off); !errors.Is(err, ErrOutOfRange) {
			t.Errorf("WriteAt(%d bytes at %d): %v", c.n, c.off, err)
		}
	}
	if err := v.Discard(9000, 2000); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("Discard past the end: %v", err)
	}
	p := make([]byte, 100)
	n, err := v.ReadAt(p, 9950)
	if n != 50 || err != io.EOF || !bytes.Equal(p[:50], f.data[9950:]) {
		t.Errorf("ReadAt over the end: %d, %v", n, err)
	}
	if _, err := v.ReadAt(p, 10000); err != io.EOF {
		t.Errorf("ReadAt at the end: %v", err)
	}
}

func TestVolumeReportsADamagedBaseChunk(t *testing.T) {
	const chunk = 64 * kib
	f := newFixture(t, randomBytes(10, 3*chunk), chunk)
	m, _ := f.store.ReadManifest(context.Background(), f.base)
	bad := m.Chunks[1]
	p := f.store.ChunkPath(bad)
	os.Chmod(p, 0o644)
	if err := os.Truncate(p, 100); err != nil {
		t.Fatal(err)
	}
	v, _ := f.newVolume(t, 4*kib)
	_, err := v.ReadAt(make([]byte, 10), chunk+10)
	var ce *cas.ChunkError
	if !errors.As(err, &ce) || ce.Chunk != bad || !errors.Is(err, cas.ErrCorrupt) {
		t.Fatalf("read of a damaged base chunk: %v", err)
	}
	// A partial write into that chunk needs the base and fails too, leaving
	// nothing half-written.
	if _, err := v.WriteAt([]byte{1}, chunk+10); !errors.As(err, &ce) {
		t.Fatalf("partial write over a damaged chunk: %v", err)
	}
	if v.WrittenBlocks() != 0 {
		t.Error("a failed write marked blocks as written")
	}
	// A whole-block write needs no base.
	if _, err := v.WriteAt(make([]byte, 4*kib), chunk); err != nil {
		t.Fatal(err)
	}
}

func TestDiscardFreesOverlaySpace(t *testing.T) {
	const chunk = 256 * kib
	f := newFixture(t, randomBytes(11, 8*chunk), chunk)
	v, dir := f.newVolume(t, 4*kib)
	if _, err := v.WriteAt(randomBytes(12, 4*chunk), 0); err != nil {
		t.Fatal(err)
	}
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	before := overlayDisk(t, dir)
	if err := v.Discard(0, 4*chunk); err != nil {
		t.Fatal(err)
	}
	after := overlayDisk(t, dir)
	if before < 4*chunk || after > before/8 {
		t.Errorf("overlay on disk: %d bytes before discard, %d after", before, after)
	}
	res, err := v.Commit(context.Background(), "discarded")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		if !res.Manifest.Chunks[i].IsZero() {
			t.Errorf("discarded chunk %d is not a hole", i)
		}
	}
}

func overlayDisk(t testing.TB, dir string) int64 {
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(dir, overlayName), &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

func TestCreateRefusesBadInput(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, randomBytes(13, 100*kib), 64*kib)
	tests := []struct {
		name string
		base cas.Digest
		bs   int64
		prep func(dir string)
	}{
		{"absent base", cas.Sum([]byte("nothing")), 0, nil},
		{"block larger than the chunk", f.base, 128 * kib, nil},
		{"block not a power of two", f.base, 12 * kib, nil},
		{"block too small", f.base, 512, nil},
		{"directory not empty", f.base, 0, func(dir string) { os.MkdirAll(dir, 0o755); os.WriteFile(filepath.Join(dir, "x"), nil, 0o644) }},
	}
	for _, tt := range tests {
		dir := filepath.Join(t.TempDir(), "vol")
		if tt.prep != nil {
			tt.prep(dir)
		}
		if err := Create(ctx, f.store, dir, tt.base, Options{BlockSize: tt.bs}); err == nil {
			t.Errorf("%s: Create succeeded", tt.name)
		}
	}
}
