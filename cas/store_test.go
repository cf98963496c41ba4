package cas

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

const kib = 1 << 10

// pattern builds test objects: random data with zero ranges cut into it.
type zeroRange struct{ off, n int }

func makeObject(seed uint64, size int, zeros ...zeroRange) []byte {
	b := randomBytes(seed, size)
	for _, z := range zeros {
		clear(b[z.off : z.off+z.n])
	}
	return b
}

func TestImportExportRoundTrip(t *testing.T) {
	const c = 64 * kib
	tests := []struct {
		name      string
		data      []byte
		chunk     int64
		wantHoles int
	}{
		{"empty", nil, c, 0},
		{"one byte", []byte{7}, c, 0},
		{"one zero byte", []byte{0}, c, 1},
		{"chunk minus one", makeObject(1, c-1), c, 0},
		{"exactly one chunk", makeObject(2, c), c, 0},
		{"chunk plus one", makeObject(3, c+1), c, 0},
		{"three and a half chunks", makeObject(4, 3*c+c/2), c, 0},
		{"aligned hole in the middle", makeObject(5, 4*c, zeroRange{c, 2 * c}), c, 2},
		{"unaligned zeros are data", makeObject(6, 4*c, zeroRange{c / 2, c}), c, 0},
		{"zero tail shorter than a chunk", makeObject(7, 2*c+100, zeroRange{2 * c, 100}), c, 1},
		{"all zeros", make([]byte, 5*c+3), c, 6},
		{"4 KiB chunks", makeObject(8, 37*kib+5, zeroRange{8 * kib, 8 * kib}), 4 * kib, 2},
		{"2 MiB default chunks", makeObject(9, 5<<20+17, zeroRange{2 << 20, 2 << 20}), 0, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStore(t)
			dir := t.TempDir()
			in := writeFile(t, dir, "in", tt.data)
			ctx := context.Background()
			ss, err := s.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			res, err := ss.ImportFile(ctx, in, ImportOptions{ChunkSize: tt.chunk})
			if err != nil {
				t.Fatal(err)
			}
			if err := ss.SetRef("obj", res.Digest); err != nil {
				t.Fatal(err)
			}
			ss.Close()
			if res.Manifest.Size != int64(len(tt.data)) {
				t.Errorf("manifest size %d, want %d", res.Manifest.Size, len(tt.data))
			}
			if res.Holes != tt.wantHoles {
				t.Errorf("holes %d, want %d", res.Holes, tt.wantHoles)
			}
			// Streamed import must give the same manifest as the file path
			// (which skips holes by SEEK_DATA).
			ss2, _ := s.Begin(ctx)
			res2, err := ss2.Import(ctx, bytes.NewReader(tt.data), ImportOptions{ChunkSize: tt.chunk})
			ss2.Close()
			if err != nil {
				t.Fatal(err)
			}
			if res2.Digest != res.Digest {
				t.Errorf("streamed import digest %s, file import %s", res2.Digest.Short(), res.Digest.Short())
			}
			if res2.NewChunks != 0 {
				t.Errorf("second import of the same data wrote %d chunks, want 0", res2.NewChunks)
			}

			got, err := exportBytes(t, s, "obj")
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tt.data) {
				t.Fatalf("export to a stream differs from the input (%d vs %d bytes)", len(got), len(tt.data))
			}
			out := filepath.Join(dir, "out")
			if err := s.ExportFile(ctx, "obj", out, nil); err != nil {
				t.Fatal(err)
			}
			fileGot, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(fileGot, tt.data) {
				t.Fatalf("export to a file differs from the input")
			}
			mustVerify(t, s)
		})
	}
}

func TestImportSkipsAndExportLeavesHoles(t *testing.T) {
	s := newStore(t)
	dir := t.TempDir()
	in := filepath.Join(dir, "sparse")
	f, err := os.Create(in)
	if err != nil {
		t.Fatal(err)
	}
	// 64 MiB file with 1 MiB of data at 8 MiB and a byte at the very end.
	if _, err := f.WriteAt(randomBytes(1, 1<<20), 8<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{1}, 64<<20-1); err != nil {
		t.Fatal(err)
	}
	f.Close()
	ctx := context.Background()
	ss, _ := s.Begin(ctx)
	res, err := ss.ImportFile(ctx, in, ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ss.SetRef("sparse", res.Digest)
	ss.Close()
	if res.NewChunks != 2 || res.Holes != 30 {
		t.Errorf("new chunks %d, holes %d; want 2 and 30", res.NewChunks, res.Holes)
	}
	out := filepath.Join(dir, "out")
	if err := s.ExportFile(ctx, "sparse", out, nil); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(out, &st); err != nil {
		t.Fatal(err)
	}
	if st.Size != 64<<20 {
		t.Fatalf("exported size %d", st.Size)
	}
	if alloc := st.Blocks * 512; alloc > 8<<20 {
		t.Errorf("exported file allocates %d bytes for 4 MiB of data chunks: holes were written", alloc)
	}
	a, _ := os.ReadFile(in)
	b, _ := os.ReadFile(out)
	if !bytes.Equal(a, b) {
		t.Error("sparse export differs from the input")
	}
}

func TestDedupAcrossImagesSharingABase(t *testing.T) {
	const c = 64 * kib
	s := newStore(t)
	base := randomBytes(10, 16*c)
	imgA := append(append([]byte{}, base...), randomBytes(11, 4*c)...)
	imgB := append(append([]byte{}, base...), randomBytes(12, 4*c)...)
	copy(imgB[3*c:], randomBytes(13, 100)) // one changed chunk in B's base

	ra := importBytes(t, s, "a", imgA, c)
	rb := importBytes(t, s, "b", imgB, c)
	if ra.NewChunks != 20 {
		t.Errorf("first image wrote %d chunks, want 20", ra.NewChunks)
	}
	if rb.NewChunks != 5 || rb.KnownChunks != 15 {
		t.Errorf("second image wrote %d chunks and reused %d; want 5 and 15", rb.NewChunks, rb.KnownChunks)
	}
	u, err := s.Usage(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if u.LogicalBytes != 40*c || u.StoredBytes != 25*c || u.ReferencedBytes != 25*c {
		t.Errorf("logical %d stored %d referenced %d; want %d, %d, %d", u.LogicalBytes, u.StoredBytes, u.ReferencedBytes, 40*c, 25*c, 25*c)
	}
	if want := 40.0 / 25.0; u.DedupRatio != want {
		t.Errorf("dedup ratio %v, want %v", u.DedupRatio, want)
	}
	for _, o := range u.Objects {
		if want := int64(c * map[string]int{"a": 5, "b": 5}[o.Name]); o.UniqueBytes != want {
			t.Errorf("%s: unique bytes %d, want %d", o.Name, o.UniqueBytes, want)
		}
	}
	for name, want := range map[string][]byte{"a": imgA, "b": imgB} {
		got, err := exportBytes(t, s, name)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("export %s: %v, identical %v", name, err, bytes.Equal(got, want))
		}
	}
}

// TestChunkFaults damages one chunk of an object in each way a disk or a
// person can, and checks that reads fail naming the chunk and the object,
// and that verify reports it.
func TestChunkFaults(t *testing.T) {
	const c = 64 * kib
	tests := []struct {
		name    string
		damage  func(t *testing.T, path string)
		wantErr error
	}{
		{"truncated", func(t *testing.T, p string) { must(t, os.Truncate(p, c/2)) }, ErrCorrupt},
		{"emptied", func(t *testing.T, p string) { must(t, os.Truncate(p, 0)) }, ErrCorrupt},
		{"flipped bit", func(t *testing.T, p string) { flipBit(t, p, 12345) }, ErrCorrupt},
		{"flipped bit in the last byte", func(t *testing.T, p string) { flipBit(t, p, c*8-1) }, ErrCorrupt},
		{"grown", func(t *testing.T, p string) { must(t, os.Chmod(p, 0o644)); appendTo(t, p, []byte{0}) }, ErrCorrupt},
		{"missing", func(t *testing.T, p string) { must(t, os.Remove(p)) }, ErrNotFound},
		{"replaced by a directory", func(t *testing.T, p string) { must(t, os.Remove(p)); must(t, os.Mkdir(p, 0o755)) }, ErrCorrupt},
		{"replaced by a FIFO", func(t *testing.T, p string) { must(t, os.Remove(p)); must(t, unix.Mkfifo(p, 0o644)) }, ErrCorrupt},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStore(t)
			data := randomBytes(20, 4*c)
			res := importBytes(t, s, "img", data, c)
			bad := res.Manifest.Chunks[2]
			tt.damage(t, s.ChunkPath(bad))

			_, err := exportBytes(t, s, "img")
			checkChunkError(t, err, tt.wantErr, "img", bad, 2)

			r, err := NewObjectReader(context.Background(), s, res.Manifest, "img", 0)
			if err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 10)
			if _, err := r.ReadAt(buf, 2*c+5); err == nil {
				t.Error("ReadAt of the damaged chunk succeeded")
			} else {
				checkChunkError(t, err, tt.wantErr, "img", bad, 2)
			}
			if _, err := r.ReadAt(buf, c+5); err != nil {
				t.Errorf("ReadAt of an intact chunk: %v", err)
			}
			r.Close()

			if _, err := s.ChunkFile(context.Background(), bad, c); !errors.Is(err, tt.wantErr) {
				t.Errorf("ChunkFile: %v, want %v", err, tt.wantErr)
			}

			for _, names := range [][]string{nil, {"img"}} {
				rep, err := s.Verify(context.Background(), VerifyOptions{Names: names})
				if err != nil {
					t.Fatal(err)
				}
				found := false
				for _, p := range rep.Problems {
					if p.Chunk == bad.String() && p.Object == "img" && p.Index == 2 {
						found = true
					}
				}
				if !found {
					t.Errorf("verify %v did not report chunk 2 of img: %v", names, rep.Problems)
				}
			}
		})
	}
}

func checkChunkError(t *testing.T, err, want error, object string, chunk Digest, index int) {
	t.Helper()
	if err == nil {
		t.Fatal("read of a damaged object succeeded")
	}
	if !errors.Is(err, want) {
		t.Errorf("error %v, want %v", err, want)
	}
	var ce *ChunkError
	if !errors.As(err, &ce) {
		t.Fatalf("error %v is not a ChunkError", err)
	}
	if ce.Chunk != chunk || ce.Object != object || ce.Index != index {
		t.Errorf("ChunkError names chunk %s of %q index %d; want %s of %q index %d", ce.Chunk.Short(), ce.Object, ce.Index, chunk.Short(), object, index)
	}
	if !strings.Contains(err.Error(), chunk.String()) || !strings.Contains(err.Error(), object) {
		t.Errorf("message %q does not name the chunk and the object", err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func flipBit(t *testing.T, path string, bit int64) {
	t.Helper()
	must(t, os.Chmod(path, 0o644))
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	must(t, err)
	defer f.Close()
	b := make([]byte, 1)
	_, err = f.ReadAt(b, bit/8)
	must(t, err)
	b[0] ^= 1 << (bit % 8)
	_, err = f.WriteAt(b, bit/8)
	must(t, err)
	must(t, os.Chmod(path, 0o444))
}

func appendTo(t *testing.T, path string, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	must(t, err)
	_, err = f.Write(b)
	must(t, err)
	must(t, f.Close())
}

func TestManifestNamingAnAbsentChunk(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	absent := Sum([]byte("never stored"))
	m := &Manifest{Kind: KindImage, ChunkSize: MinChunkSize, Size: 3 * MinChunkSize, Chunks: []Digest{{}, absent, {}}}
	ss, _ := s.Begin(ctx)
	if _, err := ss.PutManifest(m); err == nil {
		t.Fatal("PutManifest accepted a manifest naming an absent chunk")
	}
	ss.Close()

	// Written behind the store's back, it must still fail on read.
	b, _ := m.MarshalBinary()
	d := Sum(b)
	must(t, os.MkdirAll(filepath.Dir(s.manifestPath(d)), 0o755))
	must(t, os.WriteFile(s.manifestPath(d), b, 0o444))
	must(t, os.WriteFile(s.refPath("ghost"), EncodeRef(d), 0o644))
	_, err := exportBytes(t, s, "ghost")
	checkChunkError(t, err, ErrNotFound, "ghost", absent, 1)
	rep, err := s.Verify(ctx, VerifyOptions{})
	must(t, err)
	if rep.OK() {
		t.Error("verify passed a manifest naming an absent chunk")
	}
}

func TestDamagedManifestAndRefFiles(t *testing.T) {
	tests := []struct {
		name   string
		damage func(t *testing.T, s *Store, d Digest)
	}{
		{"manifest bit flip", func(t *testing.T, s *Store, d Digest) { flipBit(t, s.manifestPath(d), 8*30+3) }},
		{"manifest truncated", func(t *testing.T, s *Store, d Digest) { must(t, os.Truncate(s.manifestPath(d), 40)) }},
		{"manifest missing", func(t *testing.T, s *Store, d Digest) { must(t, os.Remove(s.manifestPath(d))) }},
		{"ref garbage", func(t *testing.T, s *Store, d Digest) {
			must(t, os.WriteFile(s.refPath("img"), []byte("hello\n"), 0o644))
		}},
		{"ref empty", func(t *testing.T, s *Store, d Digest) { must(t, os.WriteFile(s.refPath("img"), nil, 0o644)) }},
		{"ref uppercase", func(t *testing.T, s *Store, d Digest) {
			must(t, os.WriteFile(s.refPath("img"), []byte(strings.ToUpper(d.String())+"\n"), 0o644))
		}},
		{"ref without newline", func(t *testing.T, s *Store, d Digest) {
			must(t, os.WriteFile(s.refPath("img"), []byte(d.String()+" "), 0o644))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStore(t)
			res := importBytes(t, s, "img", randomBytes(30, 3*MinChunkSize), MinChunkSize)
			importBytes(t, s, "other", randomBytes(31, MinChunkSize), MinChunkSize)
			tt.damage(t, s, res.Digest)
			if _, err := exportBytes(t, s, "img"); err == nil {
				t.Error("export of a damaged object succeeded")
			}
			rep, err := s.Verify(context.Background(), VerifyOptions{})
			must(t, err)
			if rep.OK() {
				t.Error("verify found nothing wrong")
			}
			// The other object is unaffected.
			if _, err := exportBytes(t, s, "other"); err != nil {
				t.Errorf("export of an intact object: %v", err)
			}
			// GC must not guess what a damaged ref or manifest protects.
			if !strings.Contains(tt.name, "missing") {
				if _, err := s.GC(context.Background(), GCOptions{}); !errors.Is(err, ErrCorrupt) {
					t.Errorf("gc with a damaged ref or manifest: %v, want ErrCorrupt", err)
				}
			}
		})
	}
}

func TestOpenStoreDirectories(t *testing.T) {
	tests := []struct {
		name    string
		prepare func(t *testing.T, dir string)
		wantErr error // nil: opens
	}{
		{"absent", func(t *testing.T, dir string) {}, nil},
		{"empty", func(t *testing.T, dir string) { must(t, os.Mkdir(dir, 0o755)) }, nil},
		{"interrupted initialisation", func(t *testing.T, dir string) {
			must(t, os.MkdirAll(filepath.Join(dir, chunksDir), 0o755))
			must(t, os.MkdirAll(filepath.Join(dir, ingestDir), 0o755))
		}, nil},
		{"newer version", func(t *testing.T, dir string) {
			must(t, os.Mkdir(dir, 0o755))
			must(t, os.WriteFile(filepath.Join(dir, versionFile), EncodeVersion(StoreVersion+1), 0o444))
		}, ErrNewerStore},
		{"garbage version", func(t *testing.T, dir string) {
			must(t, os.Mkdir(dir, 0o755))
			must(t, os.WriteFile(filepath.Join(dir, versionFile), []byte("7\n"), 0o444))
		}, ErrBadVersion},
		{"version zero", func(t *testing.T, dir string) {
			must(t, os.Mkdir(dir, 0o755))
			must(t, os.WriteFile(filepath.Join(dir, versionFile), []byte("volt-cas-store 0\n"), 0o444))
		}, ErrBadVersion},
		{"someone else's files", func(t *testing.T, dir string) {
			must(t, os.Mkdir(dir, 0o755))
			must(t, os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("x"), 0o644))
		}, ErrNotStore},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "store")
			tt.prepare(t, dir)
			s, err := Open(dir)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Open: %v, want %v", err, tt.wantErr)
				}
				if tt.wantErr == ErrNewerStore && !strings.Contains(err.Error(), "upgrade") {
					t.Errorf("message %q does not say what to do", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			importBytes(t, s, "x", randomBytes(1, 100), MinChunkSize)
			if _, err := Open(dir); err != nil {
				t.Fatalf("reopen: %v", err)
			}
		})
	}
}

func TestOpenExistingRefusesWhatIsNotAStore(t *testing.T) {
	root := t.TempDir()
	absent := filepath.Join(root, "absent")
	if _, err := OpenExisting(absent); !errors.Is(err, ErrNotStore) {
		t.Errorf("OpenExisting(absent): %v", err)
	}
	if _, err := os.Stat(absent); !errors.Is(err, os.ErrNotExist) {
		t.Error("OpenExisting created the directory")
	}
	empty := filepath.Join(root, "empty")
	must(t, os.Mkdir(empty, 0o755))
	if _, err := OpenExisting(empty); !errors.Is(err, ErrNotStore) {
		t.Errorf("OpenExisting(empty): %v", err)
	}
	made := filepath.Join(root, "made")
	if _, err := Open(made); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(made); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("new store directory: %v, %v; want mode 0700", st.Mode(), err)
	}
	if _, err := OpenExisting(made); err != nil {
		t.Errorf("OpenExisting of a store: %v", err)
	}
}

func TestOpenRegularRefusesSpecialFiles(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	must(t, unix.Mkfifo(fifo, 0o644))
	sock := filepath.Join(dir, "sock")
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	must(t, err)
	defer unix.Close(fd)
	must(t, unix.Bind(fd, &unix.SockaddrUnix{Name: sock}))
	tests := []struct {
		path string
		want error
	}{
		{fifo, ErrNotRegular}, // must not block waiting for a writer
		{"/dev/null", ErrNotRegular},
		{dir, ErrNotRegular},
		{filepath.Join(dir, "absent"), os.ErrNotExist},
	}
	for _, tt := range tests {
		f, err := OpenRegular(tt.path)
		if !errors.Is(err, tt.want) {
			t.Errorf("OpenRegular(%s): %v, want %v", tt.path, err, tt.want)
		}
		if f != nil {
			f.Close()
		}
	}
	s := newStore(t)
	ss, _ := s.Begin(context.Background())
	defer ss.Close()
	if _, err := ss.ImportFile(context.Background(), fifo, ImportOptions{}); !errors.Is(err, ErrNotRegular) {
		t.Errorf("import of a FIFO: %v", err)
	}
}

func TestExportFileSafety(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	data := randomBytes(40, 3*MinChunkSize)
	res := importBytes(t, s, "img", data, MinChunkSize)
	dir := t.TempDir()

	fifo := filepath.Join(dir, "fifo")
	must(t, unix.Mkfifo(fifo, 0o644))
	if err := s.ExportFile(ctx, "img", fifo, nil); !errors.Is(err, ErrNotRegular) {
		t.Errorf("export to a FIFO: %v", err)
	}
	if err := s.ExportFile(ctx, "img", "/dev/null", nil); !errors.Is(err, ErrNotRegular) {
		t.Errorf("export to a device: %v", err)
	}

	// A failed export leaves the existing file untouched and no temp file.
	keep := writeFile(t, dir, "keep", []byte("precious"))
	flipBit(t, s.ChunkPath(res.Manifest.Chunks[1]), 1)
	if err := s.ExportFile(ctx, "img", keep, nil); err == nil {
		t.Fatal("export of a damaged object succeeded")
	}
	if b, _ := os.ReadFile(keep); string(b) != "precious" {
		t.Errorf("failed export changed the target: %q", b)
	}
	if names, _ := readDirNames(dir); len(names) != 2 {
		t.Errorf("failed export left files: %v", names)
	}
	if err := s.ExportFile(ctx, "absent", filepath.Join(dir, "x"), nil); !errors.Is(err, ErrNotFound) {
		t.Errorf("export of an unknown ref: %v", err)
	}
}

func TestRefs(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	res := importBytes(t, s, "base", randomBytes(50, 5000), MinChunkSize)
	ss, _ := s.Begin(ctx)
	// An instant clone is a second name for the same manifest.
	must(t, ss.SetRef("clone", res.Digest))
	if err := ss.SetRef("../escape", res.Digest); !errors.Is(err, ErrBadRefName) {
		t.Errorf("SetRef(../escape): %v", err)
	}
	if err := ss.SetRef("dangling", Sum([]byte("no such manifest"))); !errors.Is(err, ErrNotFound) {
		t.Errorf("SetRef to an absent manifest: %v", err)
	}
	ss.Close()
	refs, err := s.Refs()
	must(t, err)
	if len(refs) != 2 || refs[0].Name != "base" || refs[1].Name != "clone" || refs[1].Digest != res.Digest {
		t.Errorf("refs %+v", refs)
	}
	must(t, s.RemoveRef("base"))
	if err := s.RemoveRef("base"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second RemoveRef: %v", err)
	}
	if _, err := exportBytes(t, s, "clone"); err != nil {
		t.Errorf("the clone lost its data when the original's ref went: %v", err)
	}
}

func TestStaleTempFilesAreCleaned(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	// A dead writer's temp file: present, nobody holds its lock.
	dead := filepath.Join(s.Dir(), ingestDir, "chunk-dead")
	must(t, os.WriteFile(dead, []byte("partial"), 0o600))
	// A live writer's temp file.
	live, err := s.createTemp("chunk")
	must(t, err)
	defer live.discard()

	ss, err := s.Begin(ctx)
	must(t, err)
	ss.Close()
	if _, err := os.Stat(dead); !errors.Is(err, os.ErrNotExist) {
		t.Error("a dead writer's temp file survived the next session")
	}
	if _, err := os.Stat(live.path); err != nil {
		t.Errorf("a live writer's temp file was removed: %v", err)
	}
	res, err := s.GC(ctx, GCOptions{})
	must(t, err)
	if res.TempFilesRemoved != 0 {
		t.Errorf("gc removed %d temp files, the live one must stay", res.TempFilesRemoved)
	}
	if _, err := os.Stat(live.path); err != nil {
		t.Errorf("gc removed a live writer's temp file: %v", err)
	}
}

func TestChunkFilesAreReadOnlyAndExact(t *testing.T) {
	s := newStore(t)
	data := randomBytes(60, 2*MinChunkSize+100)
	res := importBytes(t, s, "img", data, MinChunkSize)
	for i, d := range res.Manifest.Chunks {
		f, err := s.ChunkFile(context.Background(), d, res.Manifest.ChunkLen(i))
		must(t, err)
		st, err := f.Stat()
		must(t, err)
		if st.Mode().Perm() != 0o444 {
			t.Errorf("chunk %d mode %v, want 0444", i, st.Mode().Perm())
		}
		if st.Size() != res.Manifest.ChunkLen(i) {
			t.Errorf("chunk %d is %d bytes, want %d", i, st.Size(), res.Manifest.ChunkLen(i))
		}
		f.Close()
	}
	if _, err := s.ChunkFile(context.Background(), res.Manifest.Chunks[0], MinChunkSize+1); !errors.Is(err, ErrCorrupt) {
		t.Errorf("ChunkFile with a wrong length: %v", err)
	}
}

func TestReimportReplacesATruncatedChunk(t *testing.T) {
	s := newStore(t)
	data := randomBytes(70, 3*MinChunkSize)
	res := importBytes(t, s, "img", data, MinChunkSize)
	p := s.ChunkPath(res.Manifest.Chunks[1])
	must(t, os.Truncate(p, 10))
	importBytes(t, s, "img", data, MinChunkSize)
	got, err := exportBytes(t, s, "img")
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("export after re-import: %v", err)
	}
	mustVerify(t, s)
}

func TestImportCancelled(t *testing.T) {
	s := newStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	ss, _ := s.Begin(context.Background())
	defer ss.Close()
	n := 0
	_, err := ss.Import(ctx, bytes.NewReader(randomBytes(80, 64*MinChunkSize)), ImportOptions{ChunkSize: MinChunkSize, Progress: func(int64) {
		if n++; n == 3 {
			cancel()
		}
	}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled import: %v", err)
	}
	if names := ingestFiles(t, s); len(names) != 0 {
		t.Errorf("cancelled import left temp files: %v", names)
	}
}

// TestCopiedChunkIsCheckedAgainstTheHashedBytes: when a chunk is copied
// from the source file inside the kernel, a source that changed since it
// was hashed must be refused, never stored under the old digest.
func TestCopiedChunkIsCheckedAgainstTheHashedBytes(t *testing.T) {
	s := newStore(t)
	hashed := randomBytes(150, MinChunkSize)
	changed := writeFile(t, t.TempDir(), "src", randomBytes(151, MinChunkSize))
	f, err := os.Open(changed)
	must(t, err)
	defer f.Close()
	ss, err := s.Begin(context.Background())
	must(t, err)
	defer ss.Close()
	_, err = ss.startChunk(Sum(hashed), hashed, &copySource{f: f, check: make([]byte, MinChunkSize)})
	if !errors.Is(err, ErrSourceChanged) {
		t.Fatalf("startChunk from a changed source: %v", err)
	}
	if files := chunkFiles(t, s); len(files) != 0 {
		t.Errorf("chunk files: %v", files)
	}
	if names := ingestFiles(t, s); len(names) != 0 {
		t.Errorf("temp files left: %v", names)
	}
	// The same source, unchanged, is copied and accepted.
	same, _ := os.ReadFile(changed)
	p, err := ss.startChunk(Sum(same), same, &copySource{f: f, check: make([]byte, MinChunkSize)})
	must(t, err)
	must(t, ss.finishChunks([]*pendingChunk{p}))
	got := make([]byte, MinChunkSize)
	must(t, s.ReadChunk(context.Background(), Sum(same), got))
}
