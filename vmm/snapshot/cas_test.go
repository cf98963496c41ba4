package snapshot

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/voltvmm/volt/cas"
	"github.com/voltvmm/volt/vmm/memory"
)

func casStore(t *testing.T) *cas.Store {
	t.Helper()
	s, err := cas.Open(filepath.Join(t.TempDir(), "cas"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// mapCAS restores a state's memory from the store the way the VMM does
// and returns its bytes.
func mapCAS(t *testing.T, store *cas.Store, statePath string) []byte {
	t.Helper()
	st, err := ReadStateFile(statePath)
	if err != nil {
		t.Fatal(err)
	}
	chunks, lease, err := OpenCASMemory(context.Background(), store, st, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer lease.Release()
	m, err := memory.New(memory.Config{Size: st.Memory.Size, Backing: memory.ChunkMapped, Chunks: chunks})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	return append([]byte(nil), m.Mapping()...)
}

func TestMemoryInTheCASRoundTripsAndDeduplicates(t *testing.T) {
	store := casStore(t)
	dir := t.TempDir()
	const chunk = 16 * memory.PageSize
	a := guestMemory(t, map[int]byte{1: 1, 33: 3})
	b := guestMemory(t, map[int]byte{1: 1, 33: 3, 50: 5}) // one chunk more than a
	for name, m := range map[string]*memory.Memory{"a": a, "b": b} {
		_, d, err := CreateInCAS(context.Background(), CASParams{StatePath: filepath.Join(dir, name+".state"), Store: store, State: stateFor(m), Memory: m, ChunkSize: chunk})
		if err != nil {
			t.Fatal(err)
		}
		if got := mapCAS(t, store, filepath.Join(dir, name+".state")); string(got) != string(m.Mapping()) {
			t.Fatalf("%s: memory restored from manifest %s differs", name, d.Short())
		}
	}
	u, err := store.Usage(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// a has data in chunks 0 and 2, b in 0, 2 and 3: four distinct chunks
	// would mean no sharing.
	if u.StoredBytes != 3*chunk {
		t.Errorf("the store holds %d bytes, want the 3 distinct chunks (%d): identical chunks must be stored once", u.StoredBytes, 3*chunk)
	}
	st, _ := ReadStateFile(filepath.Join(dir, "a.state"))
	if st.Memory.Manifest == "" || st.Memory.ID.IsZero() {
		t.Fatalf("state %+v names no manifest", st.Memory)
	}
	if _, err := store.Ref(DefaultMemoryRef(st.Memory.ID)); err != nil {
		t.Errorf("the manifest has no ref, so GC would take it: %v", err)
	}
}

func TestOpenCASMemoryRefusesWrongOrDamagedStores(t *testing.T) {
	store := casStore(t)
	dir := t.TempDir()
	m := guestMemory(t, map[int]byte{2: 2})
	state := filepath.Join(dir, "vm.state")
	_, d, err := CreateInCAS(context.Background(), CASParams{StatePath: state, Store: store, State: stateFor(m), Memory: m})
	if err != nil {
		t.Fatal(err)
	}
	if man, err := store.ReadManifest(context.Background(), d); err != nil {
		t.Error(err)
	} else if man.ChunkSize != DefaultMemoryChunkSize {
		t.Errorf("created manifest: chunk size %d, want the default %d", man.ChunkSize, DefaultMemoryChunkSize)
	}
	st, _ := ReadStateFile(state)
	if _, _, err := OpenCASMemory(context.Background(), casStore(t), st, 1); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("another store: %v", err)
	}
	// Damage the chunk file (as root can despite its mode).
	var chunk string
	filepath.Walk(filepath.Join(store.Dir(), "chunks"), func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			chunk = p
		}
		return nil
	})
	b, _ := os.ReadFile(chunk)
	b[100] ^= 1
	os.Chmod(chunk, 0o644)
	os.WriteFile(chunk, b, 0o444)
	if _, _, err := OpenCASMemory(context.Background(), store, st, 1); err == nil || !strings.Contains(err.Error(), "chunk 0") {
		t.Errorf("a flipped bit in a chunk: %v, want an error naming the chunk", err)
	}
	st.Memory.Size *= 2
	if _, _, err := OpenCASMemory(context.Background(), store, st, 1); err == nil || !strings.Contains(err.Error(), "the state describes") {
		t.Errorf("a manifest of another size: %v", err)
	}
}

func TestImportMemoryMovesAFlatSnapshotIntoTheCAS(t *testing.T) {
	store := casStore(t)
	dir := t.TempDir()
	m := guestMemory(t, map[int]byte{4: 4, 60: 6})
	create(t, dir, m)
	state := filepath.Join(dir, "vm.state")
	d, err := ImportMemory(context.Background(), store, state, filepath.Join(dir, "vm.mem"), "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := mapCAS(t, store, state); string(got) != string(m.Mapping()) {
		t.Fatalf("imported memory (manifest %s) differs", d.Short())
	}
	if man, err := store.ReadManifest(context.Background(), d); err != nil {
		t.Error(err)
	} else if man.ChunkSize != DefaultMemoryChunkSize {
		t.Errorf("imported manifest: chunk size %d, want the default %d", man.ChunkSize, DefaultMemoryChunkSize)
	}
	if _, err := ImportMemory(context.Background(), store, state, filepath.Join(dir, "vm.mem"), "", 0); err == nil {
		t.Error("a second import of the same snapshot was accepted")
	}
}
