package main

import (
	"bytes"
	"context"
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/voltvmm/volt/cas"
	"github.com/voltvmm/volt/cas/volume"
)

// volt runs the CLI in-process and returns its exit status and output.
func volt(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	rc := run(context.Background(), &env{stdout: &out, stderr: &errb}, args)
	return rc, out.String(), errb.String()
}

type world struct {
	store string
	dir   string
	data  []byte
	file  string
}

func newWorld(t *testing.T) *world {
	t.Helper()
	w := &world{store: filepath.Join(t.TempDir(), "store"), dir: t.TempDir()}
	w.data = make([]byte, 3<<20+12345)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range w.data {
		w.data[i] = byte(r.Uint32())
	}
	clear(w.data[256<<10 : 768<<10]) // two 256 KiB holes
	w.file = filepath.Join(w.dir, "image")
	if err := os.WriteFile(w.file, w.data, 0o644); err != nil {
		t.Fatal(err)
	}
	return w
}

func (w *world) volt(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	return volt(t, append(args, "--store", w.store)...)
}

func TestUsageAndInputErrors(t *testing.T) {
	w := newWorld(t)
	if rc, _, e := w.volt(t, "cas", "import", w.file, "--name", "img"); rc != exitOK {
		t.Fatalf("setup import: %d %s", rc, e)
	}
	fifo := filepath.Join(w.dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		args    []string
		rc      int
		wantErr string
	}{
		{"no command", nil, exitUsage, "usage: volt"},
		{"unknown group", []string{"nope"}, exitUsage, `unknown command "nope"`},
		{"unknown cas command", []string{"cas", "nope"}, exitUsage, `unknown command "nope"`},
		{"group help", []string{"cas", "--help"}, exitOK, ""},
		{"command help", []string{"cas", "import", "--help"}, exitOK, "usage: volt cas import"},
		{"unknown flag", []string{"cas", "ls", "--bogus"}, exitUsage, "unknown flag"},
		{"import without file", []string{"cas", "import", "--name", "x"}, exitUsage, "missing arguments"},
		{"import without name", []string{"cas", "import", w.file}, exitUsage, "--name is required"},
		{"import with a bad name", []string{"cas", "import", w.file, "--name", "a/b"}, exitUsage, "invalid ref name"},
		{"import with a bad chunk size", []string{"cas", "import", w.file, "--name", "x", "--chunk-size", "3M"}, exitUsage, "power of two"},
		{"import with a garbage chunk size", []string{"cas", "import", w.file, "--name", "x", "--chunk-size", "big"}, exitUsage, "not a size"},
		{"import with a bad kind", []string{"cas", "import", w.file, "--name", "x", "--kind", "disk"}, exitUsage, "unknown object kind"},
		{"import of two files", []string{"cas", "import", w.file, w.file, "--name", "x"}, exitUsage, "unexpected argument"},
		{"import of a missing file", []string{"cas", "import", filepath.Join(w.dir, "absent"), "--name", "x"}, exitFailure, "no such file"},
		{"import of a FIFO", []string{"cas", "import", fifo, "--name", "x"}, exitFailure, "not a regular file (it is a FIFO)"},
		{"import of a device", []string{"cas", "import", "/dev/zero", "--name", "x"}, exitFailure, "character device"},
		{"import of a directory", []string{"cas", "import", w.dir, "--name", "x"}, exitFailure, "directory"},
		{"import over an existing name", []string{"cas", "import", w.file, "--name", "img"}, exitFailure, "use --force"},
		{"export of an unknown name", []string{"cas", "export", "absent", filepath.Join(w.dir, "out")}, exitFailure, `ref "absent": not found`},
		{"export to a FIFO", []string{"cas", "export", "img", fifo}, exitFailure, "not a regular file"},
		{"export with one argument", []string{"cas", "export", "img"}, exitUsage, "missing arguments"},
		{"rm of an unknown name", []string{"cas", "rm", "absent"}, exitFailure, "not found"},
		{"clone of an unknown name", []string{"cas", "clone", "absent", "new"}, exitFailure, "not found"},
		{"clone over an existing name", []string{"cas", "clone", "img", "img"}, exitFailure, "use --force"},
		{"verify of an unknown name", []string{"cas", "verify", "absent"}, exitFailure, "not found"},
		{"commit of a non-volume", []string{"cas", "commit", w.dir, "--name", "v"}, exitFailure, "open volume"},
		{"volume over an unknown name", []string{"cas", "volume", "create", filepath.Join(w.dir, "v"), "--from", "absent"}, exitFailure, "not found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rc, out, errs := w.volt(t, tt.args...)
			if rc != tt.rc {
				t.Errorf("exit %d, want %d; stderr: %s", rc, tt.rc, errs)
			}
			if tt.wantErr != "" && !strings.Contains(errs+out, tt.wantErr) {
				t.Errorf("output %q lacks %q", errs+out, tt.wantErr)
			}
		})
	}
	if rc, _, e := w.volt(t, "cas", "verify"); rc != exitOK {
		t.Errorf("the store is damaged after the bad inputs: %s", e)
	}
}

func TestImportExportAndAccounting(t *testing.T) {
	w := newWorld(t)
	rc, out, errs := w.volt(t, "cas", "import", w.file, "--name", "img", "--chunk-size", "256K", "--json")
	if rc != exitOK {
		t.Fatalf("import: %d %s", rc, errs)
	}
	var imp struct {
		Digest    string `json:"digest"`
		Size      int64  `json:"size"`
		Holes     int    `json:"holes"`
		ChunkSize int64  `json:"chunk_size"`
	}
	if err := json.Unmarshal([]byte(out), &imp); err != nil {
		t.Fatalf("import --json: %v: %s", err, out)
	}
	if imp.Size != int64(len(w.data)) || imp.Holes != 2 || imp.ChunkSize != 256<<10 {
		t.Errorf("import result %+v", imp)
	}
	outFile := filepath.Join(w.dir, "out")
	if rc, _, errs := w.volt(t, "cas", "export", "img", outFile); rc != exitOK {
		t.Fatalf("export: %s", errs)
	}
	if got, _ := os.ReadFile(outFile); !bytes.Equal(got, w.data) {
		t.Fatal("exported file differs")
	}
	rc, out, _ = w.volt(t, "cas", "export", "img", "-")
	if rc != exitOK || out != string(w.data) {
		t.Fatal("export to stdout differs")
	}
	if rc, _, errs := w.volt(t, "cas", "clone", "img", "copy"); rc != exitOK {
		t.Fatalf("clone: %s", errs)
	}
	rc, out, _ = w.volt(t, "cas", "ls", "--json")
	var objs []cas.ObjectInfo
	if err := json.Unmarshal([]byte(out), &objs); rc != exitOK || err != nil || len(objs) != 2 || objs[0].Digest != objs[1].Digest {
		t.Fatalf("ls --json: %d %v %s", rc, err, out)
	}
	rc, out, _ = w.volt(t, "cas", "du", "--json")
	var u cas.Usage
	if err := json.Unmarshal([]byte(out), &u); rc != exitOK || err != nil {
		t.Fatalf("du --json: %v %s", err, out)
	}
	if u.LogicalBytes != 2*int64(len(w.data)) || u.StoredBytes != int64(len(w.data))-512<<10 || u.DedupRatio != 2 {
		t.Errorf("du: logical %d stored %d dedup %v", u.LogicalBytes, u.StoredBytes, u.DedupRatio)
	}
	if rc, out, _ := w.volt(t, "cas", "du"); rc != exitOK || !strings.Contains(out, "dedup ratio 2.00x") {
		t.Errorf("du: %s", out)
	}
	if rc, _, _ := w.volt(t, "cas", "rm", "img"); rc != exitOK {
		t.Fatal("rm")
	}
	rc, out, _ = w.volt(t, "cas", "gc", "--json")
	var g cas.GCResult
	if err := json.Unmarshal([]byte(out), &g); rc != exitOK || err != nil || g.ChunksRemoved != 0 || g.Refs != 1 {
		t.Errorf("gc after removing one of two names: %+v %v", g, err)
	}
	if rc, _, _ := w.volt(t, "cas", "rm", "copy"); rc != exitOK {
		t.Fatal("rm")
	}
	rc, out, _ = w.volt(t, "cas", "gc", "--json")
	if err := json.Unmarshal([]byte(out), &g); rc != exitOK || err != nil || g.ChunksRemoved != 11 {
		t.Errorf("gc after removing both names: %+v %v", g, err)
	}
}

func TestVerifyReportsDamage(t *testing.T) {
	w := newWorld(t)
	w.volt(t, "cas", "import", w.file, "--name", "img")
	s, err := cas.Open(w.store)
	if err != nil {
		t.Fatal(err)
	}
	_, m, err := s.Resolve(context.Background(), "img")
	if err != nil {
		t.Fatal(err)
	}
	p := s.ChunkPath(m.Chunks[1])
	os.Chmod(p, 0o644)
	os.Truncate(p, 5)
	rc, out, _ := w.volt(t, "cas", "verify", "img")
	if rc != exitFailure || !strings.Contains(out, m.Chunks[1].String()) || !strings.Contains(out, "img") {
		t.Errorf("verify of a damaged object: exit %d, %s", rc, out)
	}
	rc, _, errs := w.volt(t, "cas", "export", "img", filepath.Join(w.dir, "out"))
	if rc != exitFailure || !strings.Contains(errs, m.Chunks[1].String()) {
		t.Errorf("export of a damaged object: exit %d, %s", rc, errs)
	}
	if _, err := os.Stat(filepath.Join(w.dir, "out")); !os.IsNotExist(err) {
		t.Error("a failed export left its output file")
	}
}

func TestVolumeCreateCommitAndClone(t *testing.T) {
	w := newWorld(t)
	w.volt(t, "cas", "import", w.file, "--name", "base", "--kind", "volume")
	dir := filepath.Join(w.dir, "vol")
	if rc, _, errs := w.volt(t, "cas", "volume", "create", dir, "--from", "base"); rc != exitOK {
		t.Fatalf("volume create: %s", errs)
	}
	// The VM's part: write through the package, as virtio-blk will.
	s, _ := cas.Open(w.store)
	v, err := volume.Open(context.Background(), s, dir)
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("hello from the guest")
	if _, err := v.WriteAt(msg, 1<<20+3); err != nil {
		t.Fatal(err)
	}
	// While the volume is open, commit from outside must refuse.
	if rc, _, errs := w.volt(t, "cas", "commit", dir, "--name", "v1"); rc != exitFailure || !strings.Contains(errs, "in use") {
		t.Errorf("commit of an open volume: %d %s", rc, errs)
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	rc, out, errs := w.volt(t, "cas", "commit", dir, "--name", "v1", "--json")
	if rc != exitOK {
		t.Fatalf("commit: %s", errs)
	}
	var c struct {
		Changed int `json:"changed_chunks"`
	}
	json.Unmarshal([]byte(out), &c)
	if c.Changed != 1 {
		t.Errorf("commit changed %d chunks, want 1: %s", c.Changed, out)
	}
	want := append([]byte(nil), w.data...)
	copy(want[1<<20+3:], msg)
	if rc, _, _ := w.volt(t, "cas", "clone", "v1", "v1-clone"); rc != exitOK {
		t.Fatal("clone")
	}
	outFile := filepath.Join(w.dir, "clone.img")
	if rc, _, errs := w.volt(t, "cas", "export", "v1-clone", outFile); rc != exitOK {
		t.Fatal(errs)
	}
	if got, _ := os.ReadFile(outFile); !bytes.Equal(got, want) {
		t.Error("the clone does not hold the committed write")
	}
	rc, out, _ = w.volt(t, "cas", "volume", "info", dir, "--json")
	var info volume.Info
	if err := json.Unmarshal([]byte(out), &info); rc != exitOK || err != nil || info.WrittenBlocks != 0 {
		t.Errorf("volume info after commit: %+v %v", info, err)
	}
}

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"4096", 4096, true}, {"64K", 64 << 10, true}, {"64k", 64 << 10, true}, {"64KiB", 64 << 10, true},
		{"2M", 2 << 20, true}, {"2MiB", 2 << 20, true}, {"2MB", 2 << 20, true}, {"1G", 1 << 30, true},
		{"", 0, false}, {"M", 0, false}, {"-1", 0, false}, {"1.5M", 0, false}, {"2T", 0, false}, {"9999999999999K", 0, false},
	}
	for _, tt := range tests {
		got, err := parseSize(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("parseSize(%q) = %d, %v; want %d, ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}
