package snapshot

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/voltvmm/volt/vmm/memory"
)

const testPages = 64

// guestMemory returns anonymous memory with the given pages written.
func guestMemory(t testing.TB, fill map[int]byte) *memory.Memory {
	t.Helper()
	m, err := memory.New(memory.Config{Size: testPages * memory.PageSize})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	for p, v := range fill {
		if err := m.WriteUint8(memory.GuestAddr(p*memory.PageSize+1), v); err != nil {
			t.Fatal(err)
		}
	}
	return m
}

func stateFor(m *memory.Memory) *VMState {
	st := validState()
	st.Machine.MemorySize, st.Memory.Size = m.Size(), m.Size()
	st.Memory.Regions = []Region{{Size: m.Size()}}
	return st
}

// create writes a full snapshot of m into dir (vm.state, vm.mem).
func create(t testing.TB, dir string, m *memory.Memory) MemoryID {
	t.Helper()
	id, err := Create(CreateParams{StatePath: filepath.Join(dir, "vm.state"), MemPath: filepath.Join(dir, "vm.mem"), State: stateFor(m), Memory: m})
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// load opens a snapshot directory as a restore would and returns its memory
// contents.
func load(dir string) ([]byte, error) {
	st, err := ReadStateFile(filepath.Join(dir, "vm.state"))
	if err != nil {
		return nil, err
	}
	f, err := OpenMemory(filepath.Join(dir, "vm.mem"), st.Memory.ID, st.Memory.Size)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := make([]byte, st.Memory.Size)
	if _, err := f.ReadAt(b, 0); err != nil {
		return nil, err
	}
	return b, nil
}

func TestCreateWritesABoundSparsePair(t *testing.T) {
	dir := t.TempDir()
	m := guestMemory(t, map[int]byte{3: 0x33, 60: 0x60})
	id := create(t, dir, m)
	got, err := load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got[3*memory.PageSize+1] != 0x33 || got[60*memory.PageSize+1] != 0x60 {
		t.Fatal("memory contents not written")
	}
	fi, _ := os.Stat(filepath.Join(dir, "vm.mem"))
	if fi.Size() != testPages*memory.PageSize+TrailerSize {
		t.Errorf("memory file is %d bytes, want RAM + trailer", fi.Size())
	}
	if blocks := fi.Sys().(*syscall.Stat_t).Blocks * 512; blocks > 4*memory.PageSize {
		t.Errorf("memory file uses %d bytes on disk; two pages and a trailer were written", blocks)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Errorf("directory holds %v, want only vm.state and vm.mem", entries)
	}
	f, err := os.Open(filepath.Join(dir, "vm.mem"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr, err := ReadTrailer(f)
	if err != nil || tr.ID != id || tr.Kind != FullMemory || tr.Merging || tr.Size != m.Size() {
		t.Fatalf("trailer %+v, %v; want full, ID %s", tr, err, id)
	}
}

func TestOpenMemoryRefusesAnythingButItsPair(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	m := guestMemory(t, map[int]byte{1: 1})
	idA := create(t, a, m)
	create(t, b, m)
	st, err := ReadStateFile(filepath.Join(a, "vm.state"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Memory.ID != idA {
		t.Fatalf("state ID %s, Create returned %s", st.Memory.ID, idA)
	}
	junk := filepath.Join(t.TempDir(), "junk")
	os.WriteFile(junk, make([]byte, 3*memory.PageSize), 0o600)
	cut := filepath.Join(t.TempDir(), "cut")
	whole, _ := os.ReadFile(filepath.Join(a, "vm.mem"))
	os.WriteFile(cut, whole[:len(whole)-1], 0o600)
	flipped := filepath.Join(t.TempDir(), "flipped")
	whole[len(whole)-100] ^= 1
	os.WriteFile(flipped, whole, 0o600)
	for _, tt := range []struct {
		name, path string
		size       uint64
		want       string
	}{
		{"its pair", filepath.Join(a, "vm.mem"), m.Size(), ""},
		{"another snapshot's memory", filepath.Join(b, "vm.mem"), m.Size(), "belongs to another snapshot"},
		{"no trailer", junk, m.Size(), "no trailer"},
		{"truncated", cut, m.Size(), "no trailer"},
		{"flipped trailer bit", flipped, m.Size(), "checksum mismatch"},
		{"another size", filepath.Join(a, "vm.mem"), 2 * m.Size(), "the state describes"},
		{"a device", "/dev/zero", m.Size(), "is a character device"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f, err := OpenMemory(tt.path, idA, tt.size)
			if err == nil {
				f.Close()
			}
			if (tt.want == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("OpenMemory: %v, want %q", err, tt.want)
			}
		})
	}
}

func TestCreateNeverReplacesASymlinkOrADevice(t *testing.T) {
	dir := t.TempDir()
	m := guestMemory(t, nil)
	target := filepath.Join(dir, "precious")
	os.WriteFile(target, []byte("keep me"), 0o600)
	link := filepath.Join(dir, "link")
	os.Symlink(target, link)
	for _, p := range []struct{ state, mem, want string }{
		{filepath.Join(dir, "s"), link, "mem_file_path " + link + " exists and is a symbolic link"},
		{link, filepath.Join(dir, "m"), "snapshot_path " + link + " exists and is a symbolic link"},
		{filepath.Join(dir, "s"), "/dev/full", "mem_file_path /dev/full exists and is a character device"},
		{"/dev/null", filepath.Join(dir, "m"), "is a character device"},
		{filepath.Join(dir, "s"), filepath.Join(dir, "no", "such", "m"), "no such file or directory"},
	} {
		_, err := Create(CreateParams{StatePath: p.state, MemPath: p.mem, State: stateFor(m), Memory: m})
		if err == nil || !strings.Contains(err.Error(), p.want) {
			t.Errorf("Create(%s, %s) = %v, want %q", p.state, p.mem, err, p.want)
		}
	}
	if b, _ := os.ReadFile(target); string(b) != "keep me" {
		t.Error("the symlink's target was changed")
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode().Type() != os.ModeSymlink {
		t.Error("the symlink was replaced")
	}
	if fi, err := os.Stat("/dev/full"); err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		t.Fatalf("/dev/full is no longer a device: %v", err)
	}
}

func TestCreateRemovesWhatDeadWritersLeft(t *testing.T) {
	dir := t.TempDir()
	stale := filepath.Join(dir, ".vm.mem.tmp-dead")
	os.WriteFile(stale, make([]byte, 1<<20), 0o600)
	live := filepath.Join(dir, ".vm.state.tmp-live")
	os.WriteFile(live, nil, 0o600)
	lf, _ := os.Open(live)
	defer lf.Close()
	if err := unix.Flock(int(lf.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	create(t, dir, guestMemory(t, nil))
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a dead writer's temporary file is still there: %v", err)
	}
	if _, err := os.Stat(live); err != nil {
		t.Errorf("a live writer's temporary file was removed: %v", err)
	}
}

// The kill tests re-run the test binary as a child that writes a snapshot
// (or merges one) and SIGKILLs itself at one step.
const killEnv = "VOLT_SNAPSHOT_KILL_AT"

func TestMain(m *testing.M) {
	if step := os.Getenv(killEnv); step != "" {
		os.Exit(killedChild(step))
	}
	os.Exit(m.Run())
}

func killedChild(step string) int {
	dir, mode := os.Getenv("VOLT_SNAPSHOT_DIR"), os.Getenv("VOLT_SNAPSHOT_MODE")
	die := func(s string) {
		if s == step {
			unix.Kill(os.Getpid(), unix.SIGKILL)
		}
	}
	var err error
	if mode == "merge" {
		err = Merge(MergeParams{
			BaseState: filepath.Join(dir, "base", "vm.state"), BaseMem: filepath.Join(dir, "base", "vm.mem"),
			DiffState: filepath.Join(dir, "diff", "vm.state"), DiffMem: filepath.Join(dir, "diff", "vm.mem"),
			AfterStep: die,
		})
	} else {
		m, merr := memory.New(memory.Config{Size: testPages * memory.PageSize})
		if merr != nil {
			fmt.Fprintln(os.Stderr, merr)
			return 1
		}
		m.WriteUint8(5*memory.PageSize, 0x55) // the new snapshot's content
		_, err = Create(CreateParams{StatePath: filepath.Join(dir, "vm.state"), MemPath: filepath.Join(dir, "vm.mem"), State: stateFor(m), Memory: m,
			AfterStep: func(s CreateStep) { die(string(s)) }})
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func runKilled(t *testing.T, mode, dir, step string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), killEnv+"="+step, "VOLT_SNAPSHOT_DIR="+dir, "VOLT_SNAPSHOT_MODE="+mode)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("child at %s: %v (want SIGKILL): %s", step, err, out)
	}
}

// TestCreateKilledAtEveryStepLeavesTheOldPairOrTheNewOrNone kills a writer
// after each step of Create over an existing snapshot: the directory must
// then load as the old snapshot or the new one, or be refused, never as a
// mix; and the next create must succeed and leave no temporary file.
func TestCreateKilledAtEveryStepLeavesTheOldPairOrTheNewOrNone(t *testing.T) {
	for _, step := range CreateSteps {
		t.Run(string(step), func(t *testing.T) {
			dir := t.TempDir()
			create(t, dir, guestMemory(t, map[int]byte{7: 0x77})) // the old snapshot
			runKilled(t, "create", dir, string(step))
			got, err := load(dir)
			isOld := err == nil && got[7*memory.PageSize+1] == 0x77 && got[5*memory.PageSize] == 0
			isNew := err == nil && got[7*memory.PageSize+1] == 0 && got[5*memory.PageSize] == 0x55
			switch step {
			case StepMemoryWritten, StepStateWritten:
				if !isOld {
					t.Fatalf("killed before any rename, the old snapshot must load: %v", err)
				}
			case StepMemoryRenamed:
				if !errors.Is(err, ErrWrongMemory) {
					t.Fatalf("killed between the renames: load = %v, want ErrWrongMemory", err)
				}
			default:
				if !isNew {
					t.Fatalf("killed after both renames, the new snapshot must load: %v", err)
				}
			}
			create(t, dir, guestMemory(t, nil))
			entries, _ := os.ReadDir(dir)
			var names []string
			for _, e := range entries {
				names = append(names, e.Name())
			}
			if !slices.Equal(names, []string{"vm.mem", "vm.state"}) {
				t.Errorf("after the next create the directory holds %v", names)
			}
		})
	}
}

// diffPair makes base/ (a full snapshot) and diff/ (a diff against it) in
// dir, the diff changing pages 3 (zeroed) and 9.
func diffPair(t *testing.T, dir string) (baseID, diffID MemoryID) {
	t.Helper()
	os.MkdirAll(filepath.Join(dir, "base"), 0o755)
	os.MkdirAll(filepath.Join(dir, "diff"), 0o755)
	m := guestMemory(t, map[int]byte{3: 1, 4: 4})
	baseID = create(t, filepath.Join(dir, "base"), m)
	m.WriteUint8(3*memory.PageSize+1, 0) // the guest zeroed page 3
	m.WriteUint8(9*memory.PageSize+1, 2)
	st := stateFor(m)
	st.Memory.Diff, st.Memory.BaseID = true, baseID
	st.Memory.DirtyBitmap = []uint64{1<<3 | 1<<9}
	diffID, err := Create(CreateParams{StatePath: filepath.Join(dir, "diff", "vm.state"), MemPath: filepath.Join(dir, "diff", "vm.mem"), State: st, Memory: m})
	if err != nil {
		t.Fatal(err)
	}
	return baseID, diffID
}

func mergeIn(dir string) error {
	return Merge(MergeParams{
		BaseState: filepath.Join(dir, "base", "vm.state"), BaseMem: filepath.Join(dir, "base", "vm.mem"),
		DiffState: filepath.Join(dir, "diff", "vm.state"), DiffMem: filepath.Join(dir, "diff", "vm.mem"),
	})
}

func checkMerged(t *testing.T, dir string) {
	t.Helper()
	got, err := load(filepath.Join(dir, "base"))
	if err != nil {
		t.Fatalf("merged base does not load: %v", err)
	}
	if got[3*memory.PageSize+1] != 0 || got[4*memory.PageSize+1] != 4 || got[9*memory.PageSize+1] != 2 {
		t.Fatal("merge did not apply the diff's pages (including the zeroed one) over the base's")
	}
}

func TestMergeAppliesADiffOntoItsBaseOnly(t *testing.T) {
	dir := t.TempDir()
	_, diffID := diffPair(t, dir)
	if _, err := load(filepath.Join(dir, "diff")); err == nil || !strings.Contains(err.Error(), "holds a diff snapshot") {
		t.Fatalf("a diff loaded on its own: %v", err)
	}
	// Another VM's snapshot of the same size is not the diff's base.
	other := t.TempDir()
	os.MkdirAll(filepath.Join(other, "base"), 0o755)
	create(t, filepath.Join(other, "base"), guestMemory(t, map[int]byte{1: 1}))
	err := Merge(MergeParams{
		BaseState: filepath.Join(other, "base", "vm.state"), BaseMem: filepath.Join(other, "base", "vm.mem"),
		DiffState: filepath.Join(dir, "diff", "vm.state"), DiffMem: filepath.Join(dir, "diff", "vm.mem"),
	})
	if err == nil || !strings.Contains(err.Error(), "not its base") {
		t.Fatalf("merge onto another snapshot: %v, want a refusal", err)
	}
	if err := mergeIn(dir); err != nil {
		t.Fatal(err)
	}
	checkMerged(t, dir)
	st, _ := ReadStateFile(filepath.Join(dir, "base", "vm.state"))
	if st.Memory.Diff || st.Memory.ID != diffID || !st.Memory.BaseID.IsZero() {
		t.Errorf("merged state: diff %v, ID %s (want %s), base %s", st.Memory.Diff, st.Memory.ID, diffID, st.Memory.BaseID)
	}
	if err := mergeIn(dir); err == nil {
		t.Error("the same diff merged twice")
	}
}

func TestMergeKilledAtEveryStepIsFinishedByRunningItAgain(t *testing.T) {
	for _, step := range MergeSteps {
		t.Run(step, func(t *testing.T) {
			dir := t.TempDir()
			diffPair(t, dir)
			runKilled(t, "merge", dir, step)
			if _, err := load(filepath.Join(dir, "base")); err == nil {
				t.Fatal("a half-merged base loads")
			}
			if err := mergeIn(dir); err != nil {
				t.Fatalf("merge again: %v", err)
			}
			checkMerged(t, dir)
		})
	}
}

func FuzzDecodeTrailer(f *testing.F) {
	good := Trailer{Kind: FullMemory, Size: 1 << 20, ID: MemoryID{1}}.encode()
	f.Add(good)
	f.Add(Trailer{Kind: DiffMemory, Merging: true, Size: 4096, ID: MemoryID{2}, MergeFrom: MemoryID{3}}.encode())
	f.Add(bytes.Repeat([]byte{0}, TrailerSize))
	f.Fuzz(func(t *testing.T, b []byte) {
		tr, err := DecodeTrailer(b)
		if err != nil {
			return
		}
		if tr.ID.IsZero() || tr.Size%memory.PageSize != 0 || (tr.Kind != FullMemory && tr.Kind != DiffMemory) {
			t.Fatalf("accepted an invalid trailer %+v", tr)
		}
		if !bytes.Equal(tr.encode(), b) {
			t.Fatal("trailer does not round-trip")
		}
	})
}

// FuzzDiffBitmap writes and merges diffs with arbitrary dirty bitmaps (a
// state file's bitmap is untrusted, and its length is checked only against
// the memory size): the merge must apply exactly the dirty pages and never
// touch a page outside memory.
func FuzzDiffBitmap(f *testing.F) {
	f.Add([]byte{0xff}, []byte{1, 2, 3})
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0x80}, []byte{9})
	f.Fuzz(func(t *testing.T, bits []byte, fill []byte) {
		words := (testPages + 63) / 64
		dirty := make([]uint64, words)
		for i, b := range bits {
			if i/8 < words {
				dirty[i/8] |= uint64(b) << (8 * (i % 8))
			}
		}
		dir := t.TempDir()
		base := guestMemory(t, nil)
		for p := range testPages {
			base.WriteUint8(memory.GuestAddr(p*memory.PageSize), 0xB0)
		}
		baseMem := filepath.Join(dir, "base.mem")
		bf, _ := os.Create(baseMem)
		if err := writeFullMemory(bf, base); err != nil {
			t.Fatal(err)
		}
		diff := guestMemory(t, nil)
		for p := range testPages {
			if len(fill) > 0 {
				diff.WriteUint8(memory.GuestAddr(p*memory.PageSize), fill[p%len(fill)])
			}
		}
		diffMem := filepath.Join(dir, "diff.mem")
		df, _ := os.Create(diffMem)
		if err := writeDiffMemory(df, diff, dirty); err != nil {
			t.Fatal(err)
		}
		if err := copyDirtyPages(bf, df, dirty, base.Size()); err != nil {
			t.Fatal(err)
		}
		// A bitmap of the wrong length is refused, not indexed.
		if copyDirtyPages(bf, df, dirty[:0], base.Size()) == nil || writeDiffMemory(df, diff, append(dirty, 1)) == nil {
			t.Fatal("a bitmap of the wrong length was accepted")
		}
		bf.Close()
		df.Close()
		got, _ := os.ReadFile(baseMem)
		for p := range testPages {
			want := byte(0xB0)
			if dirty[p/64]&(1<<(p%64)) != 0 {
				want = diff.Mapping()[p*memory.PageSize]
			}
			if got[p*memory.PageSize] != want {
				t.Fatalf("page %d holds %#x after the merge, want %#x", p, got[p*memory.PageSize], want)
			}
		}
		if len(got) != testPages*memory.PageSize {
			t.Fatalf("the merge changed the base's size to %d", len(got))
		}
	})
}
