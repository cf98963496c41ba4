package cas

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

func newStore(t testing.TB) *Store {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "store"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// randomBytes returns n reproducible pseudo-random bytes.
func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for k := 0; k < 8; k++ {
			b[i+k] = byte(v >> (8 * k))
		}
	}
	for i := n &^ 7; i < n; i++ {
		b[i] = byte(r.Uint32())
	}
	return b
}

func writeFile(t testing.TB, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// importBytes imports data under ref name and returns the result.
func importBytes(t testing.TB, s *Store, name string, data []byte, chunk int64) *ImportResult {
	t.Helper()
	ctx := context.Background()
	ss, err := s.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer ss.Close()
	res, err := ss.Import(ctx, bytes.NewReader(data), ImportOptions{ChunkSize: chunk})
	if err != nil {
		t.Fatal(err)
	}
	if err := ss.SetRef(name, res.Digest); err != nil {
		t.Fatal(err)
	}
	return res
}

func exportBytes(t testing.TB, s *Store, name string) ([]byte, error) {
	t.Helper()
	var b bytes.Buffer
	err := s.Export(context.Background(), name, &b, nil)
	return b.Bytes(), err
}

// chunkFiles lists every file under chunks/.
func chunkFiles(t testing.TB, s *Store) []string {
	t.Helper()
	var out []string
	err := filepath.Walk(filepath.Join(s.Dir(), chunksDir), func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if !info.IsDir() {
			out = append(out, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func ingestFiles(t testing.TB, s *Store) []string {
	t.Helper()
	names, err := readDirNames(filepath.Join(s.Dir(), ingestDir))
	if err != nil {
		t.Fatal(err)
	}
	return names
}

func mustVerify(t testing.TB, s *Store, names ...string) {
	t.Helper()
	rep, err := s.Verify(context.Background(), VerifyOptions{Names: names})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range rep.Problems {
		t.Errorf("verify: %s", p)
	}
}
