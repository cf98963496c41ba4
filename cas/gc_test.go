package cas

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

func TestGCKeepsWhatRefsAndLeasesReach(t *testing.T) {
	const c = 16 * kib
	ctx := context.Background()
	s := newStore(t)
	shared := randomBytes(100, 4*c)
	importBytes(t, s, "keep", append(append([]byte{}, shared...), randomBytes(101, 2*c)...), c)
	drop := importBytes(t, s, "drop", append(append([]byte{}, shared...), randomBytes(102, 3*c)...), c)
	leased := importBytes(t, s, "leased", randomBytes(103, 2*c), c)
	must(t, s.RemoveRef("drop"))
	must(t, s.RemoveRef("leased"))
	lease, err := s.Lease(ctx, LeaseOptions{}, leased.Digest)
	must(t, err)

	dry, err := s.GC(ctx, GCOptions{DryRun: true})
	must(t, err)
	if dry.ChunksRemoved != 3 || dry.ManifestsRemoved != 1 || len(chunkFiles(t, s)) != 11 {
		t.Errorf("dry run: %+v, %d chunk files left", dry, len(chunkFiles(t, s)))
	}
	res, err := s.GC(ctx, GCOptions{})
	must(t, err)
	if res.ChunksRemoved != 3 || res.BytesRemoved != 3*c || res.ManifestsRemoved != 1 || res.LiveLeases != 1 || res.ChunksKept != 8 {
		t.Errorf("gc: %+v", res)
	}
	if _, err := s.ReadManifest(ctx, drop.Digest); !errors.Is(err, ErrNotFound) {
		t.Errorf("unreferenced manifest survived: %v", err)
	}
	if _, err := exportBytes(t, s, "keep"); err != nil {
		t.Error(err)
	}
	if err := WriteObject(ctx, s, leased.Manifest, "leased", new(bytes.Buffer), nil); err != nil {
		t.Errorf("leased object lost: %v", err)
	}
	must(t, lease.Release())
	res, err = s.GC(ctx, GCOptions{})
	must(t, err)
	if res.ChunksRemoved != 2 || res.LiveLeases != 0 {
		t.Errorf("after release: %+v", res)
	}
	mustVerify(t, s)
}

func TestExpiredLeaseProtectsNothing(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	r := importBytes(t, s, "x", randomBytes(110, 3*MinChunkSize), MinChunkSize)
	must(t, s.RemoveRef("x"))
	l, err := s.Lease(ctx, LeaseOptions{Expires: time.Now().Add(-time.Second)}, r.Digest)
	must(t, err)
	defer l.Release()
	res, err := s.GC(ctx, GCOptions{})
	must(t, err)
	if res.ExpiredLeases != 1 || res.ChunksRemoved != 3 {
		t.Errorf("gc with an expired lease: %+v", res)
	}
	infos, err := s.Leases()
	must(t, err)
	if len(infos) != 1 || !infos[0].Alive || !infos[0].Expired {
		t.Errorf("leases: %+v", infos)
	}
}

func TestLeaseOfAKilledProcessStopsProtecting(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	r := importBytes(t, s, "x", randomBytes(120, 5*MinChunkSize), MinChunkSize)
	must(t, s.RemoveRef("x"))
	c := startChild(t, "lease", "VOLT_CAS_STORE="+s.Dir(), "VOLT_CAS_MANIFEST="+r.Digest.String())
	c.expect(t, "ready")

	res, err := s.GC(ctx, GCOptions{})
	must(t, err)
	if res.LiveLeases != 1 || res.ChunksRemoved != 0 {
		t.Fatalf("gc while the holder lives: %+v", res)
	}
	c.kill9(t)
	res, err = s.GC(ctx, GCOptions{})
	must(t, err)
	if res.DeadLeases != 1 || res.LiveLeases != 0 || res.ChunksRemoved != 5 || res.ManifestsRemoved != 1 {
		t.Errorf("gc after the holder was killed: %+v", res)
	}
	if infos, _ := s.Leases(); len(infos) != 0 {
		t.Errorf("dead lease file left: %+v", infos)
	}
}

func TestDamagedLeaseFiles(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	importBytes(t, s, "x", randomBytes(130, MinChunkSize), MinChunkSize)
	// A damaged lease nobody holds is dead: removed.
	dead := filepath.Join(s.Dir(), leasesDir, "deadbeef")
	must(t, os.WriteFile(dead, []byte("garbage"), 0o444))
	res, err := s.GC(ctx, GCOptions{})
	must(t, err)
	if res.DeadLeases != 1 {
		t.Errorf("gc: %+v", res)
	}
	// A damaged lease someone holds: GC cannot know what it protects.
	live := filepath.Join(s.Dir(), leasesDir, "cafe")
	must(t, os.WriteFile(live, []byte("garbage"), 0o444))
	f, err := os.Open(live)
	must(t, err)
	defer f.Close()
	if ok, err := tryFlock(f); !ok || err != nil {
		t.Fatal(ok, err)
	}
	if _, err := s.GC(ctx, GCOptions{}); !errors.Is(err, ErrCorrupt) {
		t.Errorf("gc with a damaged live lease: %v", err)
	}
}

// TestGCRacingImports runs imports, exports, ref removals and GCs at once,
// many times, through separate Store handles (separate lock descriptions,
// as separate processes would have). Every import must be exportable the
// moment it returns, whatever GC does.
func TestGCRacingImports(t *testing.T) {
	const c = 16 * kib
	iterations := 150
	if testing.Short() {
		iterations = 30
	}
	dir := filepath.Join(t.TempDir(), "store")
	open := func() *Store {
		s, err := Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	importer, collector, reader := open(), open(), open()
	base := randomBytes(140, 8*c)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	var wg sync.WaitGroup
	errs := make(chan error, 8)
	gcs := 0
	wg.Add(2)
	go func() { // collector
		defer wg.Done()
		for ctx.Err() == nil {
			if _, err := collector.GC(ctx, GCOptions{}); err != nil && ctx.Err() == nil {
				errs <- fmt.Errorf("gc: %w", err)
				return
			}
			gcs++
		}
	}()
	go func() { // reader: exports whatever refs exist
		defer wg.Done()
		for ctx.Err() == nil {
			refs, err := reader.Refs()
			if err != nil {
				errs <- err
				return
			}
			for _, r := range refs {
				var b bytes.Buffer
				err := reader.Export(ctx, r.Name, &b, nil)
				if err != nil && !errors.Is(err, ErrNotFound) && ctx.Err() == nil {
					// ErrNotFound: the ref was removed before the export
					// took the lock. Anything else is a GC/read race.
					errs <- fmt.Errorf("export %s: %w", r.Name, err)
					return
				}
			}
		}
	}()
	for i := range iterations {
		data := append(append([]byte{}, base...), randomBytes(uint64(1000+i), 3*c)...)
		if i%3 == 0 {
			data = append([]byte{}, base...) // identical to a previous one
		}
		name := fmt.Sprintf("img-%d", i)
		importBytes(t, importer, name, data, c)
		got, err := exportBytes(t, importer, name)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("iteration %d: export right after import: %v", i, err)
		}
		if i >= 2 {
			must(t, importer.RemoveRef(fmt.Sprintf("img-%d", i-2)))
		}
		select {
		case err := <-errs:
			t.Fatal(err)
		default:
		}
	}
	cancel()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Logf("%d imports raced %d GCs", iterations, gcs)
	mustVerify(t, importer)
	if _, err := importer.GC(context.Background(), GCOptions{}); err != nil {
		t.Fatal(err)
	}
	u, err := importer.Usage(context.Background())
	must(t, err)
	if u.UnreferencedBytes != 0 || u.StoredBytes != u.ReferencedBytes {
		t.Errorf("after the final gc: %+v", u)
	}
}

func TestGCLeavesStrayFilesInRefsAlone(t *testing.T) {
	s := newStore(t)
	importBytes(t, s, "x", randomBytes(160, MinChunkSize), MinChunkSize)
	stray := filepath.Join(s.Dir(), refsDir, ".x.swp")
	must(t, os.WriteFile(stray, []byte("editor junk"), 0o644))
	res, err := s.GC(context.Background(), GCOptions{})
	must(t, err)
	if len(res.Warnings) != 1 || res.ChunksRemoved != 0 {
		t.Errorf("gc: %+v", res)
	}
	if _, err := os.Stat(stray); err != nil {
		t.Errorf("gc removed a file it does not own: %v", err)
	}
	rep, err := s.Verify(context.Background(), VerifyOptions{})
	must(t, err)
	if rep.OK() {
		t.Error("verify did not report the stray file")
	}
}
