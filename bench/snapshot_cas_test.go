package bench

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"os"
	"strings"
	"testing"
	"time"
)

const (
	digestA = "0ec880a03508aa0ec880a03508aa0ec880a03508aa0ec880a03508aa0ec880a0"
	digestB = "8bb513b9a3938bb513b9a3938bb513b9a3938bb513b9a3938bb513b9a3938bb5"
)

// stateFile encodes payload as docs/snapshots.md lays out a state file.
func stateFile(major, minor uint16, payload []byte) []byte {
	out := make([]byte, stateHeaderSize, stateHeaderSize+len(payload))
	copy(out, stateMagic)
	binary.LittleEndian.PutUint16(out[8:], major)
	binary.LittleEndian.PutUint16(out[10:], minor)
	binary.LittleEndian.PutUint64(out[16:], uint64(len(payload)))
	sum := sha256.Sum256(payload)
	copy(out[24:], sum[:])
	return append(out, payload...)
}

func TestSwapStateManifestRepointsOnlyTheDigest(t *testing.T) {
	payload := []byte(`{"Machine":{"CPUs":1},"Memory":{"Size":134217728,"Manifest":"` + digestA + `","Regions":[]}}`)
	in := stateFile(2, 0, payload)
	out, err := swapStateManifest(in, digestA, digestB)
	if err != nil {
		t.Fatal(err)
	}
	want := stateFile(2, 0, bytes.Replace(payload, []byte(digestA), []byte(digestB), 1))
	if !bytes.Equal(out, want) {
		t.Errorf("swapped state differs from the state naming the new manifest:\n%q\n%q", out, want)
	}
	if bytes.Contains(in, []byte(digestB)) {
		t.Error("the input was changed")
	}
	// The result is a state file again: swapping back restores the input.
	back, err := swapStateManifest(out, digestB, digestA)
	if err != nil || !bytes.Equal(back, in) {
		t.Errorf("swap back: %v", err)
	}
}

func TestSwapStateManifestRefusesWhatItWasNotWrittenFor(t *testing.T) {
	good := []byte(`{"Memory":{"Manifest":"` + digestA + `"}}`)
	twice := []byte(`{"Memory":{"Manifest":"` + digestA + `"},"Other":"` + digestA + `"}`)
	flipped := stateFile(2, 0, good)
	flipped[len(flipped)-3] ^= 1
	short := stateFile(2, 0, good)
	binary.LittleEndian.PutUint64(short[16:], uint64(len(good)+1))
	reserved := stateFile(2, 0, good)
	reserved[12] = 1
	for name, tc := range map[string]struct {
		state    []byte
		old, new string
	}{
		"empty":            {nil, digestA, digestB},
		"bad magic":        {append([]byte("NOTSNAP!"), stateFile(2, 0, good)[8:]...), digestA, digestB},
		"format 1":         {stateFile(1, 0, good), digestA, digestB},
		"format 3":         {stateFile(3, 0, good), digestA, digestB},
		"reserved bytes":   {reserved, digestA, digestB},
		"length":           {short, digestA, digestB},
		"checksum":         {flipped, digestA, digestB},
		"not named":        {stateFile(2, 0, good), digestB, digestA},
		"named twice":      {stateFile(2, 0, twice), digestA, digestB},
		"old not a digest": {stateFile(2, 0, good), "0ec880a0", digestB},
		"new not a digest": {stateFile(2, 0, good), digestA, strings.ToUpper(digestB)},
		"header only":      {stateFile(2, 0, nil), digestA, digestB},
	} {
		if _, err := swapStateManifest(tc.state, tc.old, tc.new); !errors.Is(err, ErrStateFile) {
			t.Errorf("%s: %v, want ErrStateFile", name, err)
		}
	}
}

// The state file is read from disk: whatever it holds, swapStateManifest
// either refuses it or returns a state file of the same length that names
// the new manifest where it named the old one, with a valid checksum.
func FuzzSwapStateManifest(f *testing.F) {
	f.Add(stateFile(2, 0, []byte(`{"Memory":{"Manifest":"`+digestA+`"}}`)))
	f.Add(stateFile(2, 1, []byte(`"`+digestA+`"`)))
	f.Add([]byte(stateMagic))
	f.Fuzz(func(t *testing.T, state []byte) {
		out, err := swapStateManifest(state, digestA, digestB)
		if err != nil {
			if !errors.Is(err, ErrStateFile) {
				t.Fatalf("error %v does not wrap ErrStateFile", err)
			}
			return
		}
		if len(out) != len(state) || bytes.Count(out[stateHeaderSize:], []byte(`"`+digestB+`"`)) < 1 {
			t.Fatalf("swapped %d bytes into %d", len(state), len(out))
		}
		sum := sha256.Sum256(out[stateHeaderSize:])
		if !bytes.Equal(sum[:], out[24:stateHeaderSize]) {
			t.Fatal("checksum not recomputed")
		}
	})
}

func TestParseChunkSize(t *testing.T) {
	for in, want := range map[string]int64{"2M": 2 << 20, "256K": 256 << 10, "64k": 64 << 10, "4096": 4096, "64M": 64 << 20, "1MiB": 1 << 20} {
		if got, err := ParseChunkSize(in); err != nil || got != want {
			t.Errorf("ParseChunkSize(%q) = %d, %v; want %d", in, got, err, want)
		}
		if got, _ := ParseChunkSize(FormatChunkSize(want)); got != want {
			t.Errorf("FormatChunkSize(%d) = %q does not parse back", want, FormatChunkSize(want))
		}
	}
	for _, in := range []string{"", "0", "2K", "3M", "128M", "-64K", "64KK", "1G", "1e6", "9999999999999999999"} {
		if n, err := ParseChunkSize(in); err == nil {
			t.Errorf("ParseChunkSize(%q) = %d, want an error", in, n)
		}
	}
}

func TestDescribeCASFindsTheOneNewMemoryRef(t *testing.T) {
	old := CASObject{Name: "snapshot-mem-aa", Digest: digestB, Kind: "memory"}
	added := CASObject{Name: "snapshot-mem-bb", Digest: digestA, Kind: "memory", ChunkSize: 2 << 20, Chunks: 64, DataChunks: 3, DataBytes: 6 << 20}
	c := &CASSnapshot{Store: "/s"}
	if err := describeCAS(c, []CASObject{old}, []CASObject{old, added}); err != nil {
		t.Fatal(err)
	}
	if c.Ref != added.Name || c.Manifest != digestA || c.ChunkSize != 2<<20 || c.DataChunks != 3 || c.ChunkName() != "2M" {
		t.Errorf("described %+v", c)
	}
	for name, after := range map[string][]CASObject{
		"none new": {old},
		"two new":  {old, added, {Name: "x", Digest: digestA, Kind: "memory"}},
		"an image": {old, {Name: "img", Digest: digestA, Kind: "image"}},
		"bad hash": {old, {Name: "m", Digest: "zz", Kind: "memory"}},
	} {
		if err := describeCAS(&CASSnapshot{}, []CASObject{old}, after); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestProbeReplies(t *testing.T) {
	for cmd, want := range map[string]string{
		"echo idle":         "idle",
		"echo two words  ":  "two words",
		"touch 100":         "touched 100 ",
		"sum 4096":          "sum 4096 ",
		"gen":               "gen ",
		"cpus":              "cpus ",
		"repeat 200 echo x": "repeat 200 ok=200",
	} {
		if got, err := ProbeReply(cmd); err != nil || got != want {
			t.Errorf("ProbeReply(%q) = %q, %v; want %q", cmd, got, err, want)
		}
	}
	for _, cmd := range []string{"", "echo", "touch", "touch x", "touch -1", "touch 1 2", "gen 3", "repeat 5", "repeat 5 frob", "poweroff", "reset", "panic", "blk write 0 1"} {
		if _, err := ProbeReply(cmd); err == nil {
			t.Errorf("ProbeReply(%q) accepted", cmd)
		}
	}
	if n, ok := touchCount("touch 12"); !ok || n != 12 {
		t.Errorf("touchCount: %d %v", n, ok)
	}
	if _, ok := touchCount("sum 12"); ok {
		t.Error("touchCount of sum")
	}
}

// Bad specs are refused before any VMM starts.
func TestSnapshotSpecsAreCheckedFirst(t *testing.T) {
	tmpl := &Snapshot{Dir: "/t", Memory: "128M", CPUs: 1}
	for name, spec := range map[string]DeriveSpec{
		"no template":             {VMMBin: "v", Dir: "/d", Timeout: time.Second},
		"no memory anywhere":      {VMMBin: "v", Template: tmpl, Dir: "/d", Timeout: time.Second, NoFile: true},
		"volt CLI without store":  {VMMBin: "v", Template: tmpl, Dir: "/d", Timeout: time.Second, VoltBin: "volt"},
		"work the probe lacks":    {VMMBin: "v", Template: tmpl, Dir: "/d", Timeout: time.Second, Work: []string{"poweroff"}},
		"a touch without a count": {VMMBin: "v", Template: tmpl, Dir: "/d", Timeout: time.Second, Work: []string{"touch"}},
	} {
		if _, err := DeriveSnapshot(context.Background(), spec); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	spec := SnapshotSpec{VMMBin: "v", Kernel: "k", CPUs: 1, Dir: "/d", Timeout: time.Second, VoltBin: "volt"}
	if err := spec.Validate(); err == nil {
		t.Error("a volt CLI to describe a CAS snapshot that is not taken")
	}
	if args, err := snapshotterArgs("/d", "", []string{"--no-seccomp"}); err != nil || strings.Join(args, " ") != "--snapshot-dir /d --no-seccomp" {
		t.Errorf("snapshotter args %q, %v", args, err)
	}
	store := t.TempDir() + "/store"
	if args, err := snapshotterArgs("/d", store, nil); err != nil || strings.Join(args, " ") != "--snapshot-dir /d --snapshot-dir "+store {
		t.Errorf("snapshotter args %q, %v", args, err)
	} else if fi, err := os.Stat(store); err != nil || !fi.IsDir() {
		t.Errorf("the store directory was not made: %v", err)
	}
}
