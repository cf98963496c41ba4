package pool

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/voltvmm/volt/cas"
	"github.com/voltvmm/volt/guest/agent"
	pc "github.com/voltvmm/volt/pool/client"
	"github.com/voltvmm/volt/vmm/api/types"
)

// casPool serves a pool whose templates live in a fresh CAS store.
func casPool(t *testing.T, cfg Config) (*served, *cas.Store) {
	t.Helper()
	snapTool, _ := tools(t)
	cfg.StoreDir = filepath.Join(shortDir(t), "cas")
	cfg.SnapshotTool = snapTool
	s := serve(t, cfg)
	st, err := cas.OpenExisting(cfg.StoreDir)
	if err != nil {
		t.Fatal(err)
	}
	return s, st
}

// templateChunks returns the chunk files of template name's memory, read
// through its ref.
func templateChunks(t *testing.T, s *served, st *cas.Store, name string) (cas.Digest, []string) {
	t.Helper()
	ref := s.pool.cfg.Store.(*CASStore).Ref(name)
	d, m, err := st.Resolve(context.Background(), ref)
	if err != nil {
		t.Fatalf("template %s's ref %s: %v", name, ref, err)
	}
	var files []string
	for _, c := range m.Chunks {
		if !c.IsZero() {
			files = append(files, st.ChunkPath(c))
		}
	}
	if len(files) == 0 {
		t.Fatalf("template %s's memory manifest has no data chunk", name)
	}
	return d, files
}

// mapsChunks reports whether process pid maps a chunk file of the store.
func mapsChunks(t *testing.T, pid int, st *cas.Store) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/maps")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Contains(string(b), filepath.Join(st.Dir(), "chunks")+"/")
}

func agentTemplate(t *testing.T, c *pc.Client, name string, warm int) pc.Template {
	t.Helper()
	if !probeHasAgent(t) {
		t.Skip("skipping: the probe guest built here has no vsock agent (probe.agent)")
	}
	_, kernel, _ := fixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	tpl, err := c.CreateTemplate(ctx, pc.TemplateSpec{Name: name, Kernel: kernel, Cmdline: "console=ttyS0 reboot=k panic=1 probe.agent",
		MemoryMiB: 64, Vsock: true, Warm: warm})
	if err != nil {
		t.Fatalf("create template %s: %v", name, err)
	}
	return tpl
}

func runEcho(t *testing.T, l pc.Lease, word string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := pc.RunOn(ctx, l, agent.Request{Args: []string{"echo", word}}, nil)
	if err != nil || !res.Success() || strings.TrimSpace(string(res.Stdout)) != word {
		t.Fatalf("echo %s in lease %s (%s): %+v %q %v", word, l.ID, l.Path, res.Status, res.Stdout, err)
	}
}

// A template in the CAS: its state file alone is on disk, its memory is a
// manifest named by the pool's ref, and every clone, warm or cold, maps
// its chunks and answers through the agent. Two ways in: the confined
// template VMM writing into the store itself, whose default ref the pool
// takes over (the default), and its memory file imported
// (SnapshotViaFile, as for a jailed template).
func TestCASTemplateClonesMapItsChunksWarmAndCold(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"straight-into-the-store", Config{}},
		{"imported", Config{SnapshotViaFile: true}},
	} {
		t.Run(tc.name, func(t *testing.T) { testCASTemplate(t, tc.cfg) })
	}
}

func testCASTemplate(t *testing.T, cfg Config) {
	s, st := casPool(t, cfg)
	ctx := context.Background()
	tpl := agentTemplate(t, s.client, "cas", 2)
	if tpl.MemBytes != 64<<20 {
		t.Errorf("template memory %d bytes, want 64 MiB", tpl.MemBytes)
	}
	snapDir := filepath.Join(s.state, "templates", "cas", "snapshot")
	if _, err := os.Stat(filepath.Join(snapDir, types.SnapshotStateFile)); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(snapDir, types.SnapshotMemFile)); !os.IsNotExist(err) {
		t.Errorf("a CAS template has a memory file: %v", err)
	}
	si, err := s.pool.tool.info(ctx, filepath.Join(snapDir, types.SnapshotStateFile))
	if err != nil {
		t.Fatal(err)
	}
	d, _ := templateChunks(t, s, st, "cas")
	if si.Manifest != d {
		t.Errorf("the state names manifest %s, the ref %s", si.Manifest, d)
	}
	refs, err := st.Refs()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range refs {
		if strings.HasPrefix(r.Name, "snapshot-mem-") {
			t.Errorf("the VMM's default ref %s is left beside the template's", r.Name)
		}
	}
	s.waitWarm(t, "cas", 2)
	for _, pid := range warmPIDs(s, "cas") {
		if !mapsChunks(t, pid, st) {
			t.Errorf("warm VMM %d maps no chunk file of the store", pid)
		}
	}
	warm, err := s.client.Acquire(ctx, "cas", time.Minute)
	if err != nil || warm.Path != pc.PathWarm {
		t.Fatalf("warm acquire: %+v %v", warm, err)
	}
	runEcho(t, warm, "warm")
	if _, err := s.client.SetWarm(ctx, "cas", 0); err != nil {
		t.Fatal(err)
	}
	cold, err := s.client.Acquire(ctx, "cas", time.Minute)
	if err != nil || cold.Path != pc.PathCold {
		t.Fatalf("cold acquire: %+v %v", cold, err)
	}
	runEcho(t, cold, "cold")
	if !mapsChunks(t, cold.PID, st) {
		t.Errorf("cold VMM %d maps no chunk file", cold.PID)
	}
	for _, l := range []pc.Lease{warm, cold} {
		if err := s.client.Release(ctx, l.ID); err != nil {
			t.Error(err)
		}
	}
}

// Removing a template drops its ref: a clone leased meanwhile keeps
// working and keeps its chunks through its lease; once it is released a
// GC reclaims them.
func TestCASTemplateRemovedWhileLeasedKeepsTheCloneAndThenFreesItsChunks(t *testing.T) {
	s, st := casPool(t, Config{})
	ctx := context.Background()
	agentTemplate(t, s.client, "gone", 1)
	s.waitWarm(t, "gone", 1)
	_, chunks := templateChunks(t, s, st, "gone")
	l, err := s.client.Acquire(ctx, "gone", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.client.RemoveTemplate(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Ref(s.pool.cfg.Store.(*CASStore).Ref("gone")); err == nil {
		t.Error("the removed template's ref is still there")
	}
	res, err := st.GC(ctx, cas.GCOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.LiveLeases == 0 {
		t.Errorf("GC while the clone runs saw no live lease: %+v", res)
	}
	for _, c := range chunks {
		if _, err := os.Stat(c); err != nil {
			t.Errorf("GC took chunk %s of a running clone: %v", filepath.Base(c), err)
		}
	}
	runEcho(t, l, "still")
	if err := s.client.Release(ctx, l.ID); err != nil {
		t.Fatal(err)
	}
	// Reaped, not just a zombie: a killed VMM's leader turns zombie while
	// its other threads still exit, holding the lease's flock.
	waitFor(t, "the released clone to be reaped", func() bool { return reaped(l.PID) })
	res, err = st.GC(ctx, cas.GCOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range chunks {
		if _, err := os.Stat(c); !os.IsNotExist(err) {
			t.Errorf("chunk %s survived the GC after the release: %v (GC %+v)", filepath.Base(c), err, res)
		}
	}
	if res.ChunksRemoved < len(chunks) {
		t.Errorf("GC removed %d chunks, the template had %d", res.ChunksRemoved, len(chunks))
	}
}

// template create --from-snapshot in a CAS pool imports the flat snapshot
// (a copy: the caller's directory is left as it was) and its clones
// restore from the store.
func TestFlatSnapshotIsImportedIntoTheCAS(t *testing.T) {
	if !probeHasAgent(t) {
		t.Skip("skipping: the probe guest built here has no vsock agent (probe.agent)")
	}
	flat := vsockSnapshot(t, "console=ttyS0 reboot=k panic=1 probe.agent")
	before, err := os.Stat(filepath.Join(flat, types.SnapshotMemFile))
	if err != nil {
		t.Fatal(err)
	}
	s, st := casPool(t, Config{})
	ctx := context.Background()
	if _, err := s.client.CreateTemplate(ctx, pc.TemplateSpec{Name: "imported", FromSnapshot: flat, Vsock: true, Warm: 1}); err != nil {
		t.Fatal(err)
	}
	after, err := os.Stat(filepath.Join(flat, types.SnapshotMemFile))
	if err != nil || after.Size() != before.Size() || !after.ModTime().Equal(before.ModTime()) {
		t.Errorf("the caller's snapshot changed: %v", err)
	}
	templateChunks(t, s, st, "imported")
	if _, err := os.Stat(filepath.Join(s.state, "templates", "imported", "snapshot", types.SnapshotMemFile)); !os.IsNotExist(err) {
		t.Errorf("the imported template kept a memory file: %v", err)
	}
	s.waitWarm(t, "imported", 1)
	l, err := s.client.Acquire(ctx, "imported", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	runEcho(t, l, "imported")
	if err := s.client.Release(ctx, l.ID); err != nil {
		t.Fatal(err)
	}
}

// A daemon restarted over the same state directory and store finds its
// CAS templates again and removes refs of its own that no template has.
func TestCASRefsOfNoTemplateArePrunedOnOpen(t *testing.T) {
	s, st := casPool(t, Config{})
	s.probeTemplate(t, "kept", 0)
	cs := s.pool.cfg.Store.(*CASStore)
	d, _ := templateChunks(t, s, st, "kept")
	ss, err := st.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	orphan := cs.Ref("orphan")
	other := "voltpool:0123456789abcdef:orphan" // another pool's
	for _, r := range []string{orphan, other} {
		if err := ss.SetRef(r, d); err != nil {
			t.Fatal(err)
		}
	}
	ss.Close()
	cfg := s.pool.cfg
	if err := s.stop(); err != nil {
		t.Fatal(err)
	}
	cfg.Store = nil
	s2 := serve(t, Config{StateDir: cfg.StateDir, StoreDir: cfg.StoreDir, SnapshotTool: cfg.SnapshotTool})
	if ts, err := s2.client.Templates(context.Background()); err != nil || len(ts) != 1 || ts[0].Name != "kept" {
		t.Fatalf("templates after restart: %+v %v", ts, err)
	}
	if _, err := st.Ref(orphan); err == nil {
		t.Error("this pool's orphan ref survived the restart")
	}
	if _, err := st.Ref(other); err != nil {
		t.Errorf("another pool's ref was removed: %v", err)
	}
	if _, err := st.Ref(cs.Ref("kept")); err != nil {
		t.Errorf("the template's ref: %v", err)
	}
}
