package cas

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"testing"
)

// TestKill9DuringImport kills a real importing process at chosen points and
// checks that no partial chunk is ever visible under a digest name, that the
// store still verifies, that the dead writer's temp files are cleaned by
// the next session, and that importing again gives the right object.
func TestKill9DuringImport(t *testing.T) {
	const chunk = 64 * kib
	tests := []struct {
		name      string
		point     hookPoint
		n         int
		wantRef   bool // the import had finished naming its object
		wantDebri bool // temp files must be left behind by the kill
	}{
		{"first chunk written, not linked", hookChunkWritten, 1, false, true},
		{"fifth chunk written, not linked", hookChunkWritten, 5, false, true},
		{"three chunks linked", hookChunkStored, 3, false, false},
		{"all chunks linked, manifest stored, no ref", hookManifestStored, 1, false, false},
		{"ref written", hookRefStored, 1, true, false},
	}
	data := makeObject(90, 24*chunk+123, zeroRange{4 * chunk, 2 * chunk})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStore(t)
			in := writeFile(t, t.TempDir(), "in", data)
			c := startChild(t, "import",
				"VOLT_CAS_STORE="+s.Dir(), "VOLT_CAS_FILE="+in, "VOLT_CAS_REF=img",
				fmt.Sprintf("VOLT_CAS_CHUNK=%d", chunk),
				fmt.Sprintf("VOLT_CAS_HOOK=%d", tt.point), fmt.Sprintf("VOLT_CAS_HOOK_N=%d", tt.n))
			c.expect(t, "ready")
			c.kill9(t)

			debris := ingestFiles(t, s)
			if tt.wantDebri && len(debris) == 0 {
				t.Error("the kill left no temp file, so this case tests nothing")
			}
			// Every file under a digest name holds exactly that content.
			rep, err := s.Verify(context.Background(), VerifyOptions{})
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range rep.Problems {
				t.Errorf("after kill -9: %s", p)
			}
			_, err = s.Ref("img")
			if tt.wantRef != (err == nil) {
				t.Errorf("ref after the kill: %v, want present=%v", err, tt.wantRef)
			}
			if !tt.wantRef && !errors.Is(err, ErrNotFound) {
				t.Errorf("ref: %v, want ErrNotFound", err)
			}

			// The next session removes the dead writer's temp files.
			ss, err := s.Begin(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			ss.Close()
			if left := ingestFiles(t, s); len(left) != 0 {
				t.Errorf("temp files of the killed import remain after the next session: %v", left)
			}
			if !tt.wantRef {
				// GC removes what the dead import stored without naming it.
				if _, err := s.GC(context.Background(), GCOptions{}); err != nil {
					t.Fatal(err)
				}
				if files := chunkFiles(t, s); len(files) != 0 {
					t.Errorf("gc left %d chunk files of the killed import", len(files))
				}
				importBytes(t, s, "img", data, chunk)
			}
			got, err := exportBytes(t, s, "img")
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("export after recovery: %v (identical %v)", err, bytes.Equal(got, data))
			}
			mustVerify(t, s)
		})
	}
}

// TestTwoProcessesImportTheSameData runs two importing processes over the
// same data at once, with GCs running in between.
func TestTwoProcessesImportTheSameData(t *testing.T) {
	const chunk = 64 * kib
	s := newStore(t)
	data := randomBytes(91, 40*chunk)
	in := writeFile(t, t.TempDir(), "in", data)
	for round := range 3 {
		var kids []*child
		for k := range 2 {
			kids = append(kids, startChild(t, "import",
				"VOLT_CAS_STORE="+s.Dir(), "VOLT_CAS_FILE="+in, fmt.Sprintf("VOLT_CAS_REF=img-%d", k),
				fmt.Sprintf("VOLT_CAS_CHUNK=%d", chunk)))
		}
		for range 3 {
			if _, err := s.GC(context.Background(), GCOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		for _, k := range kids {
			k.expect(t, "done")
			k.wait(t)
		}
		for k := range 2 {
			got, err := exportBytes(t, s, fmt.Sprintf("img-%d", k))
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("round %d: export img-%d: %v", round, k, err)
			}
		}
		mustVerify(t, s)
		if n := len(chunkFiles(t, s)); n != 40 {
			t.Errorf("round %d: %d chunk files, want 40 (one copy of each)", round, n)
		}
		for k := range 2 {
			must(t, s.RemoveRef(fmt.Sprintf("img-%d", k)))
		}
	}
	if _, err := os.Stat(s.Dir()); err != nil {
		t.Fatal(err)
	}
}
