package vmm_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/voltvmm/volt/cas"
	"github.com/voltvmm/volt/cas/volume"
	"github.com/voltvmm/volt/guest/probe"
	"github.com/voltvmm/volt/vmm"
	"github.com/voltvmm/volt/vmm/cpu"
	"github.com/voltvmm/volt/vmm/kvm"
	"github.com/voltvmm/volt/vmm/memory"
	"github.com/voltvmm/volt/vmm/snapshot"
)

// snapshotProbe boots the probe, touches pages, pauses and snapshots it,
// and returns the snapshot paths and the checksum the guest reported.
func snapshotProbe(t testing.TB, cfg vmm.Config, pages int) (state, mem, sum string) {
	t.Helper()
	s := startProbe(t, cfg)
	s.expect(probe.ReadyLine)
	s.send(fmt.Sprintf("touch %d", pages))
	sum = strings.TrimPrefix(s.expect(fmt.Sprintf("touched %d sum=", pages)), "touched")
	if err := s.vm.Pause(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	state, mem = filepath.Join(dir, "vm.state"), filepath.Join(dir, "vm.mem")
	if err := s.vm.CreateSnapshot(context.Background(), vmm.SnapshotParams{StatePath: state, MemPath: mem}); err != nil {
		t.Fatalf("CreateSnapshot: %v", err)
	}
	s.vm.Stop()
	return state, mem, sum
}

// restoreProbe restores a snapshot and returns a session on it.
func restoreProbe(t *testing.T, state, mem string) *session {
	t.Helper()
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	vm, err := vmm.Restore(context.Background(), vmm.RestoreConfig{StatePath: state, MemPath: mem, Resume: true, Console: outW, ConsoleInput: inR})
	if err != nil {
		t.Fatalf("Restore: %v", err)
	}
	return attach(t, vm, inW, outR, outW)
}

func TestSnapshotRestoresIntoTwentyClones(t *testing.T) {
	state, mem, sum := snapshotProbe(t, vmm.Config{CPUs: 2, MemorySize: 128 << 20}, 300)
	fi, err := os.Stat(mem)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != 128<<20+snapshot.TrailerSize {
		t.Fatalf("memory file is %d bytes, want RAM (%d) and its trailer", fi.Size(), 128<<20)
	}
	const clones = 20
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		gens = map[string]bool{}
	)
	for i := range clones {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := restoreProbe(t, state, mem)
			s.send("sum 300")
			if got := strings.TrimPrefix(s.expect("sum 300 sum="), "sum 300"); got != strings.TrimPrefix(sum, " 300") {
				t.Errorf("clone %d: sum%s, want touched%s", i, got, sum)
			}
			s.send(fmt.Sprintf("echo clone %d", i))
			s.expect(fmt.Sprintf("clone %d", i))
			s.send("gen")
			gen := s.expect("gen ")
			mu.Lock()
			gens[gen] = true
			mu.Unlock()
			s.send("poweroff")
			if r := s.wait(); r.Reason != vmm.StopPowerOff {
				t.Errorf("clone %d stopped with %s: %v", i, r.Reason, r.Err)
			}
		}()
	}
	wg.Wait()
	if len(gens) != clones {
		t.Errorf("%d distinct generation IDs among %d clones: %v", len(gens), clones, gens)
	}
}

func TestDiffSnapshotMergesOntoBase(t *testing.T) {
	s := startProbe(t, vmm.Config{MemorySize: 64 << 20, TrackDirtyPages: true})
	s.expect(probe.ReadyLine)
	s.send("touch 50")
	s.expect("touched 50")
	if err := s.vm.Pause(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	base := vmm.SnapshotParams{StatePath: filepath.Join(dir, "base.state"), MemPath: filepath.Join(dir, "base.mem")}
	if err := s.vm.CreateSnapshot(context.Background(), base); err != nil {
		t.Fatal(err)
	}
	if err := s.vm.Resume(); err != nil {
		t.Fatal(err)
	}
	// Touching more pages changes the checksum of the first 50 too (the
	// pattern depends on the page count), so the diff carries real changes.
	s.send("touch 80")
	want := strings.TrimPrefix(s.expect("touched 80 sum="), "touched 80")
	if err := s.vm.Pause(); err != nil {
		t.Fatal(err)
	}
	diff := vmm.SnapshotParams{StatePath: filepath.Join(dir, "diff.state"), MemPath: filepath.Join(dir, "diff.mem"), Type: vmm.SnapshotDiff}
	if err := s.vm.CreateSnapshot(context.Background(), diff); err != nil {
		t.Fatal(err)
	}
	s.vm.Stop()

	if _, err := vmm.Restore(context.Background(), vmm.RestoreConfig{StatePath: diff.StatePath, MemPath: diff.MemPath}); err == nil || !strings.Contains(err.Error(), "must be merged onto its base") {
		t.Fatalf("a diff snapshot restored on its own: %v", err)
	}
	dst, err := snapshot.ReadStateFile(diff.StatePath)
	if err != nil {
		t.Fatal(err)
	}
	dirty := 0
	for _, w := range dst.Memory.DirtyBitmap {
		for ; w != 0; w &= w - 1 {
			dirty++
		}
	}
	if dirty < 80 || dirty > 2000 {
		t.Errorf("diff holds %d dirty pages, expected the ~80 touched plus a few of the probe's own", dirty)
	}
	if err := snapshot.Merge(snapshot.MergeParams{BaseState: base.StatePath, BaseMem: base.MemPath, DiffState: diff.StatePath, DiffMem: diff.MemPath}); err != nil {
		t.Fatal(err)
	}
	c := restoreProbe(t, base.StatePath, base.MemPath)
	c.send("sum 80")
	if got := strings.TrimPrefix(c.expect("sum 80 sum="), "sum 80"); got != want {
		t.Fatalf("merged snapshot sum%s, want%s", got, want)
	}
	c.send("poweroff")
	c.wait()
}

func TestDiffSnapshotNeedsABase(t *testing.T) {
	s := startProbe(t, vmm.Config{MemorySize: 32 << 20, TrackDirtyPages: true})
	s.expect(probe.ReadyLine)
	if err := s.vm.Pause(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	err := s.vm.CreateSnapshot(context.Background(), vmm.SnapshotParams{StatePath: filepath.Join(dir, "s"), MemPath: filepath.Join(dir, "m"), Type: vmm.SnapshotDiff})
	if err == nil || !strings.Contains(err.Error(), "needs a base") {
		t.Fatalf("diff right after boot: %v, want a refusal", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("a refused snapshot left %v", entries)
	}
}

func TestRestoreRejectsBadSnapshots(t *testing.T) {
	state, mem, _ := snapshotProbe(t, vmm.Config{MemorySize: 32 << 20}, 10)
	good, err := os.ReadFile(state)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	flip := append([]byte(nil), good...)
	flip[len(flip)-10] ^= 0x20
	otherMajor := append([]byte(nil), good...)
	otherMajor[8] = 9
	badMagic := append([]byte("NOTASNAP"), good[8:]...)
	memBytes, err := os.ReadFile(mem)
	if err != nil {
		t.Fatal(err)
	}
	_, otherMem, _ := snapshotProbe(t, vmm.Config{MemorySize: 32 << 20}, 10)
	short := write("short.mem", memBytes[:len(memBytes)/2])
	long := write("long.mem", append(memBytes, make([]byte, 4096)...))

	tests := []struct {
		name        string
		state, mem  string
		wantErr     error
		wantMessage string
	}{
		{"wrong magic", write("magic.state", badMagic), mem, snapshot.ErrNotSnapshot, "bad magic"},
		{"other major version", write("major.state", otherMajor), mem, snapshot.ErrVersion, "version"},
		{"bad checksum", write("flip.state", flip), mem, snapshot.ErrChecksum, "checksum"},
		{"truncated state", write("trunc.state", good[:len(good)/2]), mem, snapshot.ErrTruncated, "truncated"},
		{"empty state", write("empty.state", nil), mem, snapshot.ErrTruncated, "truncated"},
		{"missing state", filepath.Join(dir, "none.state"), mem, os.ErrNotExist, "no such file"},
		{"missing memory file", state, filepath.Join(dir, "none.mem"), os.ErrNotExist, "no such file"},
		{"truncated memory file", state, short, snapshot.ErrNotMemoryFile, "no trailer"},
		{"memory file with bytes after its trailer", state, long, snapshot.ErrNotMemoryFile, "no trailer"},
		{"another snapshot's memory file", state, otherMem, snapshot.ErrWrongMemory, "not a pair"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vm, err := vmm.Restore(context.Background(), vmm.RestoreConfig{StatePath: tt.state, MemPath: tt.mem})
			if err == nil {
				vm.Close()
				t.Fatal("restore succeeded")
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("error %v is not %v", err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantMessage) {
				t.Errorf("error %q does not say %q", err, tt.wantMessage)
			}
		})
	}
}

func TestRestoreRefusesCPUFeaturesTheHostLacks(t *testing.T) {
	state, mem, _ := snapshotProbe(t, vmm.Config{MemorySize: 32 << 20}, 1)
	st, err := snapshot.ReadStateFile(state)
	if err != nil {
		t.Fatal(err)
	}
	sys, err := kvm.Open()
	if err != nil {
		t.Fatal(err)
	}
	supported, err := sys.SupportedCPUID()
	sys.Close()
	if err != nil {
		t.Fatal(err)
	}
	// Pick a feature this host's KVM cannot offer and claim the snapshot's
	// CPU had it, as a snapshot from a newer host would.
	var name string
	for _, n := range []string{"avx512f", "amx_tile", "la57", "avx512vbmi", "movdir64b", "serialize", "sha_ni", "waitpkg"} {
		f, ok := cpu.Features[n]
		if !ok {
			continue
		}
		probeLeaves := []kvm.CPUIDEntry{{Function: f.Leaf, Index: f.Subleaf, Flags: kvm.CPUIDFlagSignificantIndex}}
		setFeature(probeLeaves, f)
		if len(cpu.MissingFeatures(probeLeaves, supported)) == 1 {
			name = n
			for i := range st.VCPUs {
				setFeature(st.VCPUs[i].CPUID, f)
			}
			break
		}
	}
	if name == "" {
		t.Skip("this host's KVM supports every candidate feature; nothing to test the refusal with")
	}
	if err := snapshot.WriteStateFile(state, st); err != nil {
		t.Fatal(err)
	}
	_, err = vmm.Restore(context.Background(), vmm.RestoreConfig{StatePath: state, MemPath: mem})
	if err == nil || !strings.Contains(err.Error(), name) {
		t.Fatalf("restore with %s claimed: %v", name, err)
	}
}

func setFeature(leaves []kvm.CPUIDEntry, f cpu.Feature) {
	for i := range leaves {
		e := &leaves[i]
		if e.Function != f.Leaf || e.Index != f.Subleaf {
			continue
		}
		switch f.Reg {
		case cpu.EAX:
			e.EAX |= 1 << f.Bit
		case cpu.EBX:
			e.EBX |= 1 << f.Bit
		case cpu.ECX:
			e.ECX |= 1 << f.Bit
		case cpu.EDX:
			e.EDX |= 1 << f.Bit
		}
	}
}

func TestRestoredTimelineHoldsOnlyThisProcess(t *testing.T) {
	state, mem, _ := snapshotProbe(t, vmm.Config{MemorySize: 32 << 20}, 1)
	c := restoreProbe(t, state, mem)
	c.send("poweroff")
	c.wait()
	for _, st := range c.vm.BootStages() {
		switch st.Name {
		case "kernel-entry", "kernel-long-mode", "kernel-devices", "pid1", "ready", "kernel-loaded":
			t.Errorf("restored VM reports boot stage %s at %v: that belongs to the original boot", st.Name, st.At)
		}
	}
}

// A VM restored from a snapshot takes diffs against that snapshot.
func TestDiffAfterRestoreMergesOntoTheRestoredSnapshot(t *testing.T) {
	state, mem, _ := snapshotProbe(t, vmm.Config{MemorySize: 32 << 20}, 10)
	track := true
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	vm, err := vmm.Restore(context.Background(), vmm.RestoreConfig{StatePath: state, MemPath: mem, Resume: true, Console: outW, ConsoleInput: inR, TrackDirtyPages: &track})
	if err != nil {
		t.Fatal(err)
	}
	s := attach(t, vm, inW, outR, outW)
	s.send("touch 40")
	want := strings.TrimPrefix(s.expect("touched 40 sum="), "touched 40")
	if err := vm.Pause(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	diff := vmm.SnapshotParams{StatePath: filepath.Join(dir, "vm.state"), MemPath: filepath.Join(dir, "vm.mem"), Type: vmm.SnapshotDiff}
	if err := vm.CreateSnapshot(context.Background(), diff); err != nil {
		t.Fatal(err)
	}
	vm.Stop()
	if err := snapshot.Merge(snapshot.MergeParams{BaseState: state, BaseMem: mem, DiffState: diff.StatePath, DiffMem: diff.MemPath}); err != nil {
		t.Fatal(err)
	}
	c := restoreProbe(t, state, mem)
	c.send("sum 40")
	if got := strings.TrimPrefix(c.expect("sum 40 sum="), "sum 40"); got != want {
		t.Fatalf("merged snapshot sum%s, want%s", got, want)
	}
	c.send("poweroff")
	c.wait()
}

// TestVirtioDevicesSurviveASnapshot gives the probe a disk, a vsock device
// and an entropy device (the probe does not drive them) and checks that a
// snapshot records them in their slots, a restore puts them back with the
// vsock socket moved as vsock_override asks, and the kernel was told where
// they are.
func TestVirtioDevicesSurviveASnapshot(t *testing.T) {
	dir := t.TempDir()
	disk, root := filepath.Join(dir, "disk.img"), filepath.Join(dir, "root.img")
	for _, p := range []string{disk, root} {
		if err := os.WriteFile(p, make([]byte, 1<<20), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cfg := vmm.Config{
		MemorySize: 32 << 20,
		Drives:     []vmm.DriveConfig{{ID: "data", Path: disk}, {ID: "rootfs", Path: root, ReadOnly: true, Root: true}},
		Vsock:      &vmm.VsockConfig{GuestCID: 3, UDSPath: filepath.Join(dir, "v.sock")},
		Entropy:    &vmm.EntropyConfig{},
	}
	state, mem, _ := snapshotProbe(t, cfg, 1)
	st, err := snapshot.ReadStateFile(state)
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, d := range st.Devices.Virtio {
		kinds = append(kinds, d.Kind+":"+d.Name)
	}
	if got := strings.Join(kinds, " "); got != "block:virtio-block0 block:virtio-block1 vsock:virtio-vsock0 entropy:virtio-entropy0" {
		t.Errorf("devices in the snapshot: %s", got)
	}
	if d := st.Devices.Virtio[0].Drive; d == nil || d.ID != "rootfs" || !d.Root {
		t.Errorf("the root disk is not in the first slot: %+v", d)
	}
	for _, want := range []string{"virtio_mmio.device=4K@0xd0000000:5", "virtio_mmio.device=4K@0xd0003000:9", "root=/dev/vda ro"} {
		if !strings.Contains(st.Machine.Cmdline, want) {
			t.Errorf("kernel command line %q lacks %q", st.Machine.Cmdline, want)
		}
	}
	if _, err := os.Stat(cfg.Vsock.UDSPath); !os.IsNotExist(err) {
		t.Errorf("the stopped VM left its vsock socket behind: %v", err)
	}
	moved := filepath.Join(dir, "clone.sock")
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	vm, err := vmm.Restore(context.Background(), vmm.RestoreConfig{StatePath: state, MemPath: mem, Resume: true, Console: outW, ConsoleInput: inR,
		Overrides: vmm.VirtioOverrides{VsockUDSPath: moved}})
	if err != nil {
		t.Fatal(err)
	}
	s := attach(t, vm, inW, outR, outW)
	if fi, err := os.Stat(moved); err != nil || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("restored vsock socket at %s: %v", moved, err)
	}
	s.send("echo restored with devices")
	s.expect("restored with devices")
	s.send("poweroff")
	if r := s.wait(); r.Reason != vmm.StopPowerOff {
		t.Fatalf("stopped with %s: %v", r.Reason, r.Err)
	}
}

// TestSnapshotInTheCASRestoresFromChunks snapshots the probe's memory into a
// CAS store and restores clones with every chunk mapped from the store.
func TestSnapshotInTheCASRestoresFromChunks(t *testing.T) {
	s := startProbe(t, vmm.Config{MemorySize: 64 << 20})
	s.expect(probe.ReadyLine)
	s.send("touch 300")
	sum := strings.TrimPrefix(s.expect("touched 300 sum="), "touched 300")
	if err := s.vm.Pause(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	store := filepath.Join(dir, "cas")
	state := filepath.Join(dir, "vm.state")
	if err := s.vm.CreateSnapshot(context.Background(), vmm.SnapshotParams{StatePath: state, CASStore: store, CASChunkSize: 256 << 10}); err != nil {
		t.Fatal(err)
	}
	s.vm.Stop()
	if _, err := os.Stat(filepath.Join(dir, "vm.mem")); !os.IsNotExist(err) {
		t.Errorf("a CAS snapshot wrote a memory file: %v", err)
	}
	if _, err := vmm.Restore(context.Background(), vmm.RestoreConfig{StatePath: state, MemPath: filepath.Join(dir, "vm.mem")}); !errors.Is(err, snapshot.ErrNoStore) {
		t.Errorf("restore without the store: %v, want ErrNoStore", err)
	}
	for i := range 2 {
		inR, inW := io.Pipe()
		outR, outW := io.Pipe()
		vm, err := vmm.Restore(context.Background(), vmm.RestoreConfig{StatePath: state, CASStore: store, Resume: true, Console: outW, ConsoleInput: inR})
		if err != nil {
			t.Fatal(err)
		}
		if vm.Memory().Backing() != memory.ChunkMapped {
			t.Fatalf("clone %d: memory backing %s", i, vm.Memory().Backing())
		}
		c := attach(t, vm, inW, outR, outW)
		c.send("sum 300")
		if got := strings.TrimPrefix(c.expect("sum 300 sum="), "sum 300"); got != sum {
			t.Fatalf("clone %d: sum%s, want%s", i, got, sum)
		}
		c.send("poweroff")
		c.wait()
	}
}

// TestCASVolumeDiskSurvivesASnapshot gives the probe a root disk that is a
// CAS volume: the VM holds the volume (a second user is refused) while it
// runs, and a restore opens it again.
func TestCASVolumeDiskSurvivesASnapshot(t *testing.T) {
	dir := t.TempDir()
	storeDir := filepath.Join(dir, "cas")
	store, err := cas.Open(storeDir)
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "disk.img")
	os.WriteFile(img, bytes.Repeat([]byte{0x5a}, 4<<20), 0o644)
	ss, err := store.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	res, err := ss.ImportFile(context.Background(), img, cas.ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := ss.SetRef("disk", res.Digest); err != nil {
		t.Fatal(err)
	}
	ss.Close()
	vol := filepath.Join(dir, "vol")
	if err := volume.Create(context.Background(), store, vol, res.Digest, volume.Options{}); err != nil {
		t.Fatal(err)
	}
	cfg := vmm.Config{MemorySize: 32 << 20, Drives: []vmm.DriveConfig{{ID: "rootfs", Volume: vol, CASStore: storeDir, Root: true}}}
	s := startProbe(t, cfg)
	s.expect(probe.ReadyLine)
	if _, err := volume.Open(context.Background(), store, vol); !errors.Is(err, volume.ErrInUse) {
		t.Errorf("opening the running VM's volume a second time: %v, want ErrInUse", err)
	}
	if err := s.vm.Pause(); err != nil {
		t.Fatal(err)
	}
	snap := t.TempDir()
	p := vmm.SnapshotParams{StatePath: filepath.Join(snap, "vm.state"), MemPath: filepath.Join(snap, "vm.mem")}
	if err := s.vm.CreateSnapshot(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	s.vm.Stop()
	st, err := snapshot.ReadStateFile(p.StatePath)
	if err != nil {
		t.Fatal(err)
	}
	if d := st.Devices.Virtio[0].Drive; d == nil || d.Volume != vol || d.CASStore != storeDir {
		t.Fatalf("the snapshot does not record the volume: %+v", d)
	}
	c := restoreProbe(t, p.StatePath, p.MemPath)
	c.send("echo restored on a CAS volume")
	c.expect("restored on a CAS volume")
	c.send("poweroff")
	c.wait()
}
