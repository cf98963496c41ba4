package cas

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// Import throughput against its limit, BLAKE3 over the same bytes. Run on
// a file of your choice with VOLT_CAS_BENCH_FILE=PATH (README.md uses a
// 1 GiB file); without it, a 256 MiB random file is made.
//
//	go test -run '^$' -bench 'Hash|Import' -count 5 ./cas

func benchFile(b *testing.B) string {
	if p := os.Getenv("VOLT_CAS_BENCH_FILE"); p != "" {
		return p
	}
	p := filepath.Join(b.TempDir(), "random")
	if err := os.WriteFile(p, randomBytes(1, 256<<20), 0o644); err != nil {
		b.Fatal(err)
	}
	return p
}

var benchChunkSizes = []int64{2 << 20, 256 << 10, 64 << 10}

// BenchmarkHashChunk is BLAKE3 on one in-memory chunk, on one core.
func BenchmarkHashChunk(b *testing.B) {
	for _, cs := range benchChunkSizes {
		b.Run(fmt.Sprintf("chunk=%dKiB", cs>>10), func(b *testing.B) {
			buf := randomBytes(2, int(cs))
			b.SetBytes(cs)
			for b.Loop() {
				Sum(buf)
			}
		})
	}
}

// BenchmarkHashFile reads the file chunk by chunk from the page cache and
// hashes each chunk with as many goroutines as the import uses: the fastest
// an import could be, with no writes at all.
func BenchmarkHashFile(b *testing.B) {
	path := benchFile(b)
	st, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	warm(b, path)
	for _, cs := range benchChunkSizes {
		b.Run(fmt.Sprintf("chunk=%dKiB", cs>>10), func(b *testing.B) {
			b.SetBytes(st.Size())
			for b.Loop() {
				hashFile(b, path, cs)
			}
		})
	}
}

func hashFile(b *testing.B, path string, cs int64) {
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	work := make(chan []byte, 4)
	free := make(chan []byte, 4)
	for range 4 {
		free <- make([]byte, cs)
	}
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := range work {
				if !isZeroes(p) {
					Sum(p)
				}
				free <- p[:cap(p)]
			}
		}()
	}
	for {
		p := <-free
		n, err := io.ReadFull(f, p)
		if n > 0 {
			work <- p[:n]
		}
		if err != nil {
			break
		}
	}
	close(work)
	wg.Wait()
}

func warm(b *testing.B, path string) {
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	io.Copy(io.Discard, f)
	f.Close()
}

// BenchmarkImportFile imports the file into an empty store each time, with
// every chunk written, fsynced and linked.
func BenchmarkImportFile(b *testing.B) {
	path := benchFile(b)
	st, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	warm(b, path)
	for _, cs := range benchChunkSizes {
		b.Run(fmt.Sprintf("chunk=%dKiB", cs>>10), func(b *testing.B) {
			b.SetBytes(st.Size())
			for i := 0; b.Loop(); i++ {
				b.StopTimer()
				dir := filepath.Join(b.TempDir(), fmt.Sprint(i))
				s, err := Open(dir)
				if err != nil {
					b.Fatal(err)
				}
				unix.Sync()
				b.StartTimer()
				ss, err := s.Begin(context.Background())
				if err != nil {
					b.Fatal(err)
				}
				if _, err := ss.ImportFile(context.Background(), path, ImportOptions{ChunkSize: cs}); err != nil {
					b.Fatal(err)
				}
				ss.Close()
				b.StopTimer()
				// Freeing the store's blocks is file-system work that would
				// otherwise run during the next import.
				os.RemoveAll(dir)
				unix.Sync()
				b.StartTimer()
			}
		})
	}
}

// BenchmarkChunkFile is the VMM's restore-time cost per chunk: open and
// verify a chunk file that is in the page cache.
func BenchmarkChunkFile(b *testing.B) {
	for _, cs := range benchChunkSizes {
		b.Run(fmt.Sprintf("chunk=%dKiB", cs>>10), func(b *testing.B) {
			s := newStore(b)
			ss, _ := s.Begin(context.Background())
			d, _, err := ss.PutChunk(randomBytes(3, int(cs)))
			ss.Close()
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(cs)
			for b.Loop() {
				f, err := s.ChunkFile(context.Background(), d, cs)
				if err != nil {
					b.Fatal(err)
				}
				f.Close()
			}
		})
	}
}
