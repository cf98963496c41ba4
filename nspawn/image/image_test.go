package image

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/voltvmm/volt/cas"
)

type tarEntry struct {
	hdr  tar.Header
	body string
}

func makeTar(t testing.TB, entries []tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.hdr
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if h.ModTime.IsZero() {
			h.ModTime = time.Unix(1700000000, 0)
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if e.body != "" {
			if _, err := tw.Write([]byte(e.body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func dir(name string, mode int64) tarEntry {
	return tarEntry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode}}
}

func file(name, body string, mode int64) tarEntry {
	return tarEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode}, body: body}
}

func symlink(name, target string) tarEntry {
	return tarEntry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777}}
}

func TestExtractKeepsTheTree(t *testing.T) {
	root := os.Geteuid() == 0
	entries := []tarEntry{
		dir("./", 0o755),
		dir("etc/", 0o755),
		file("etc/motd", "hello\n", 0o644),
		file("bin/su", "#!/bin/sh\n", 0o4755), // parent not in the archive
		symlink("bin/sh", "/bin/busybox"),
		symlink("lib", "usr/lib"),
		dir("usr/lib/", 0o755),
		file("lib/libc.so", "elf", 0o644), // through a relative symlink, inside
		{hdr: tar.Header{Typeflag: tar.TypeLink, Name: "etc/motd.hard", Linkname: "etc/motd"}},
		{hdr: tar.Header{Typeflag: tar.TypeFifo, Name: "run/fifo", Mode: 0o600}},
		{hdr: tar.Header{Typeflag: tar.TypeChar, Name: "dev/null", Mode: 0o666, Devmajor: 1, Devminor: 3}},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "etc/owned", Mode: 0o640, Uid: 1234, Gid: 5678}, body: "x"},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "bin/ping", Mode: 0o755, PAXRecords: map[string]string{"SCHILY.xattr.user.volt": "test"}}, body: "ping"},
		dir("tmp/", 0o1777),
		file("etc/motd", "replaced\n", 0o644), // a later entry wins
	}
	d := t.TempDir()
	st, err := Extract(bytes.NewReader(makeTar(t, entries)), d)
	if err != nil {
		t.Fatal(err)
	}
	if st.Entries != len(entries) {
		t.Errorf("%d entries, want %d", st.Entries, len(entries))
	}
	check := func(p string, want os.FileMode) os.FileInfo {
		t.Helper()
		fi, err := os.Lstat(filepath.Join(d, p))
		if err != nil {
			t.Fatal(err)
		}
		if want != 0 && fi.Mode() != want {
			t.Errorf("%s: mode %v, want %v", p, fi.Mode(), want)
		}
		return fi
	}
	check("bin/su", 0o755|os.ModeSetuid)
	check("tmp", 0o777|os.ModeDir|os.ModeSticky)
	check("bin/sh", 0o777|os.ModeSymlink)
	if tgt, _ := os.Readlink(filepath.Join(d, "bin/sh")); tgt != "/bin/busybox" {
		t.Errorf("bin/sh -> %q", tgt)
	}
	if b, _ := os.ReadFile(filepath.Join(d, "usr/lib/libc.so")); string(b) != "elf" {
		t.Errorf("file through a relative symlink: %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(d, "etc/motd")); string(b) != "replaced\n" {
		t.Errorf("etc/motd = %q, want the later entry", b)
	}
	if b, _ := os.ReadFile(filepath.Join(d, "etc/motd.hard")); string(b) != "hello\n" {
		t.Errorf("hard link = %q (it links the first file, which the second replaced)", b)
	}
	check("run/fifo", 0o600|os.ModeNamedPipe)
	fi := check("etc/motd", 0o644)
	if !fi.ModTime().Equal(time.Unix(1700000000, 0)) {
		t.Errorf("mtime %v", fi.ModTime())
	}
	if root {
		check("dev/null", 0o666|os.ModeDevice|os.ModeCharDevice)
		check("etc/owned", 0o640)
		var o unix.Stat_t
		if err := unix.Lstat(filepath.Join(d, "etc/owned"), &o); err != nil || o.Uid != 1234 || o.Gid != 5678 {
			t.Errorf("etc/owned owned by %d:%d", o.Uid, o.Gid)
		}
		v := make([]byte, 16)
		n, err := unix.Lgetxattr(filepath.Join(d, "bin/ping"), "user.volt", v)
		if err != nil || string(v[:n]) != "test" {
			t.Errorf("xattr: %q, %v", v[:n], err)
		}
	} else if st.Skipped != 1 {
		t.Errorf("skipped %d, want the one device", st.Skipped)
	}
}

// Every archive that tries to reach outside the directory fails, and
// nothing appears outside it.
func TestExtractStaysInside(t *testing.T) {
	for _, tc := range []struct {
		name    string
		entries []tarEntry
	}{
		{"dot-dot", []tarEntry{file("../escape", "x", 0o644)}},
		{"dot-dot deep", []tarEntry{file("a/../../escape", "x", 0o644)}},
		{"through an absolute symlink", []tarEntry{symlink("evil", "/tmp"), file("evil/escape", "x", 0o644)}},
		{"through a climbing symlink", []tarEntry{symlink("evil", "../.."), file("evil/escape", "x", 0o644)}},
		{"symlink then file over it", []tarEntry{symlink("evil", "../escape"), {hdr: tar.Header{Typeflag: tar.TypeLink, Name: "x", Linkname: "evil/../../escape"}}}},
		{"hard link outside", []tarEntry{{hdr: tar.Header{Typeflag: tar.TypeLink, Name: "x", Linkname: "../escape"}}}},
		{"hard link to a missing file", []tarEntry{{hdr: tar.Header{Typeflag: tar.TypeLink, Name: "x", Linkname: "nope"}}}},
		{"file over a directory", []tarEntry{dir("d/", 0o755), file("d", "x", 0o644)}},
		{"root as a file", []tarEntry{file(".", "x", 0o644)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			parent := t.TempDir()
			d := filepath.Join(parent, "a", "b")
			if err := os.MkdirAll(d, 0o755); err != nil {
				t.Fatal(err)
			}
			_, err := Extract(bytes.NewReader(makeTar(t, tc.entries)), d)
			if err == nil {
				t.Fatal("extracted")
			}
			for _, p := range []string{filepath.Join(parent, "escape"), filepath.Join(parent, "a", "escape"), "/tmp/escape"} {
				if _, err := os.Lstat(p); err == nil {
					os.Remove(p)
					t.Fatalf("%s was created", p)
				}
			}
		})
	}
}

func TestExtractGzipAndGarbage(t *testing.T) {
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(makeTar(t, []tarEntry{file("a", "gz", 0o644)}))
	zw.Close()
	d := t.TempDir()
	if _, err := Extract(&gz, d); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(d, "a")); string(b) != "gz" {
		t.Errorf("a = %q", b)
	}
	for name, data := range map[string][]byte{
		"garbage":   bytes.Repeat([]byte("not a tar "), 100),
		"truncated": makeTar(t, []tarEntry{file("a", strings.Repeat("x", 5000), 0o644)})[:2000],
		"bad gzip":  {0x1f, 0x8b, 0, 0, 1, 2, 3},
	} {
		if _, err := Extract(bytes.NewReader(data), t.TempDir()); !errors.Is(err, ErrBadArchive) {
			t.Errorf("%s: %v, want ErrBadArchive", name, err)
		}
	}
}

// FuzzExtract: arbitrary archive bytes never panic, and whatever happens
// nothing is created next to the target directory.
func FuzzExtract(f *testing.F) {
	f.Add(makeTar(f, []tarEntry{file("a", "x", 0o644), symlink("b", "../x"), dir("c/", 0o755)}))
	f.Add(makeTar(f, []tarEntry{{hdr: tar.Header{Typeflag: tar.TypeLink, Name: "x", Linkname: "a"}}}))
	f.Fuzz(func(t *testing.T, data []byte) {
		parent := t.TempDir()
		d := filepath.Join(parent, "in")
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		Extract(bytes.NewReader(data), d)
		names, err := os.ReadDir(parent)
		if err != nil {
			t.Fatal(err)
		}
		if len(names) != 1 {
			t.Fatalf("entries next to the target: %v", names)
		}
	})
}

func superblock(blocks uint32, logBS uint32, incompat uint32) []byte {
	b := make([]byte, superblockSize)
	le := binary.LittleEndian
	le.PutUint32(b[0x04:], blocks)
	le.PutUint32(b[0x18:], logBS)
	le.PutUint16(b[0x38:], ext4Magic)
	le.PutUint32(b[0x5C:], compatJournal)
	le.PutUint32(b[0x60:], incompat)
	copy(b[0x78:], "volt-root")
	return b
}

func TestParseSuperblock(t *testing.T) {
	sb, err := ParseSuperblock(superblock(1000, 2, 0x2|0x40))
	if err != nil {
		t.Fatal(err)
	}
	if sb.BlockSize != 4096 || sb.Blocks != 1000 || sb.Label != "volt-root" || !sb.HasJournal || sb.FSSizeBytes != 4096000 {
		t.Errorf("%+v", sb)
	}
	for name, b := range map[string][]byte{
		"short":            make([]byte, 100),
		"no magic":         make([]byte, superblockSize),
		"huge block size":  superblock(1000, 9, 0),
		"no blocks":        superblock(0, 2, 0),
		"journal device":   superblock(1000, 2, incompatJournal),
		"unknown features": superblock(1000, 2, 0x80000000),
	} {
		if _, err := ParseSuperblock(b); !errors.Is(err, ErrNotExt4) {
			t.Errorf("%s: %v, want ErrNotExt4", name, err)
		}
	}
}

func FuzzParseSuperblock(f *testing.F) {
	f.Add(superblock(1000, 2, 0x2|0x40|0x80))
	f.Fuzz(func(t *testing.T, b []byte) {
		sb, err := ParseSuperblock(b)
		if err != nil {
			return
		}
		if sb.BlockSize < 1024 || sb.BlockSize > 64<<10 || sb.Blocks <= 0 || sb.FSSizeBytes != sb.Blocks*sb.BlockSize {
			t.Fatalf("accepted an impossible superblock: %+v", sb)
		}
	})
}

func requireMkfs(t *testing.T) {
	t.Helper()
	if _, err := findTool("mkfs.ext4"); err != nil {
		t.Skip(err)
	}
}

func newStore(t *testing.T) *cas.Store {
	t.Helper()
	s, err := cas.Open(filepath.Join(t.TempDir(), "store"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// debugfsCat reads a file out of an ext4 image without mounting it.
func debugfsCat(t *testing.T, img, path string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", "cat "+path, img).Output()
	if err != nil {
		t.Fatalf("debugfs cat %s: %v", path, err)
	}
	return string(out)
}

func TestImportFromEachSource(t *testing.T) {
	requireMkfs(t)
	ctx := context.Background()
	s := newStore(t)

	tree := t.TempDir()
	os.MkdirAll(filepath.Join(tree, "etc"), 0o755)
	os.WriteFile(filepath.Join(tree, "etc", "motd"), []byte("from a dir\n"), 0o644)
	res, err := Import(ctx, s, "fromdir", Source{Dir: tree}, ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Size != 32<<20+1<<20 && res.Size < 32<<20 {
		t.Errorf("size %d", res.Size)
	}
	if res.DataBytes >= res.Size/2 {
		t.Errorf("a nearly empty file system stored %d of %d bytes: free space is not holes", res.DataBytes, res.Size)
	}

	tarFile := filepath.Join(t.TempDir(), "x.tar")
	os.WriteFile(tarFile, makeTar(t, []tarEntry{file("etc/motd", "from a tar\n", 0o644)}), 0o644)
	res, err = Import(ctx, s, "fromtar", Source{Tar: tarFile}, ImportOptions{SizeMiB: 40})
	if err != nil {
		t.Fatal(err)
	}
	if res.Size != 40<<20 || res.Extract == nil || res.Extract.Entries != 1 {
		t.Errorf("tar import: %+v", res)
	}
	exported := filepath.Join(t.TempDir(), "out.ext4")
	if err := s.ExportFile(ctx, Ref("fromtar"), exported, nil); err != nil {
		t.Fatal(err)
	}
	if got := debugfsCat(t, exported, "/etc/motd"); got != "from a tar\n" {
		t.Errorf("the image holds %q", got)
	}

	// The exported file imported again as --ext4 is the same manifest.
	res2, err := Import(ctx, s, "fromext4", Source{Ext4: exported}, ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res2.Digest != res.Digest || res2.NewChunks != 0 {
		t.Errorf("re-import: digest %s new %d, want %s and 0", res2.Digest.Short(), res2.NewChunks, res.Digest.Short())
	}

	if len(res2.Warnings) != 0 {
		t.Errorf("warnings for a 4 KiB-block image: %v", res2.Warnings)
	}
	if sb, err := ReadSuperblock(ctx, s, "fromext4"); err != nil || sb.BlockSize != 4096 {
		t.Errorf("ReadSuperblock: %+v %v", sb, err)
	}

	// An ext4 with 1 KiB blocks is stored, with a warning that VMs cannot
	// mount it.
	small := filepath.Join(t.TempDir(), "1k.ext4")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-b", "1024", small, "8M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs: %v %s", err, out)
	}
	res3, err := Import(ctx, s, "onek", Source{Ext4: small}, ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(res3.Warnings) != 1 || !strings.Contains(res3.Warnings[0], "1024-byte blocks") {
		t.Errorf("warnings %v", res3.Warnings)
	}
	if err := Remove(s, "onek"); err != nil {
		t.Fatal(err)
	}

	infos, err := List(ctx, s)
	if err != nil || len(infos) != 3 {
		t.Fatalf("list: %v %v", infos, err)
	}
	if _, err := Import(ctx, s, "fromtar", Source{Tar: tarFile}, ImportOptions{}); !errors.Is(err, ErrExists) {
		t.Errorf("second import of a name: %v, want ErrExists", err)
	}
	if err := Remove(s, "fromdir"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := Resolve(ctx, s, "fromdir"); !errors.Is(err, ErrUnknown) {
		t.Errorf("resolve a removed image: %v", err)
	}
	if err := Remove(s, "fromdir"); !errors.Is(err, ErrUnknown) {
		t.Errorf("remove twice: %v", err)
	}
}

func TestImportRefusesBadInput(t *testing.T) {
	requireMkfs(t)
	ctx := context.Background()
	s := newStore(t)
	tmp := t.TempDir()
	notExt4 := filepath.Join(tmp, "random")
	os.WriteFile(notExt4, bytes.Repeat([]byte{1, 2, 3}, 10000), 0o644)

	good := filepath.Join(tmp, "good.ext4")
	if err := BuildExt4(ctx, t.TempDir(), good, 8, ""); err != nil {
		t.Fatal(err)
	}
	truncated := filepath.Join(tmp, "truncated.ext4")
	b, _ := os.ReadFile(good)
	os.WriteFile(truncated, b[:len(b)/2], 0o644)
	damaged := filepath.Join(tmp, "damaged.ext4")
	d := bytes.Clone(b)
	// Zero the block group descriptors (the block after the superblock's,
	// 4 KiB blocks): fsck must notice.
	clear(d[4096 : 4096+64])
	os.WriteFile(damaged, d, 0o644)
	fifo := filepath.Join(tmp, "fifo")
	unix.Mkfifo(fifo, 0o644)

	for _, tc := range []struct {
		name string
		img  string
		src  Source
		opts ImportOptions
		want string
	}{
		{"no source", "x", Source{}, ImportOptions{}, "exactly one"},
		{"two sources", "x", Source{Dir: tmp, Tar: notExt4}, ImportOptions{}, "exactly one"},
		{"bad name", "a/b", Source{Dir: tmp}, ImportOptions{}, "image name"},
		{"colon", "a:b", Source{Dir: tmp}, ImportOptions{}, "':'"},
		{"not ext4", "x", Source{Ext4: notExt4}, ImportOptions{}, "not an ext4"},
		{"truncated ext4", "x", Source{Ext4: truncated}, ImportOptions{}, "truncated"},
		{"damaged ext4", "x", Source{Ext4: damaged}, ImportOptions{}, "e2fsck"},
		{"fifo as tar", "x", Source{Tar: fifo}, ImportOptions{}, "FIFO"},
		{"fifo as ext4", "x", Source{Ext4: fifo}, ImportOptions{}, "FIFO"},
		{"file as dir", "x", Source{Dir: notExt4}, ImportOptions{}, "want a directory"},
		{"missing dir", "x", Source{Dir: filepath.Join(tmp, "nope")}, ImportOptions{}, "no such file"},
		{"garbage tar", "x", Source{Tar: notExt4}, ImportOptions{}, "bad archive"},
		{"size with ext4", "x", Source{Ext4: good}, ImportOptions{SizeMiB: 10}, "--size"},
		{"too small", "x", Source{Dir: filepath.Dir(good)}, ImportOptions{SizeMiB: 1}, "cannot hold"},
		{"bad chunk size", "x", Source{Ext4: good}, ImportOptions{ChunkSize: 1000}, "chunk size"},
	} {
		_, err := Import(ctx, s, tc.img, tc.src, tc.opts)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
	if infos, _ := List(ctx, s); len(infos) != 0 {
		t.Errorf("failed imports left images: %v", infos)
	}
}
