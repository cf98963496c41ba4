package volume

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// The overlay's granularity: 4 KiB blocks against whole-chunk
// copy-on-write (block = chunk = 2 MiB), on a 256 MiB random base, for the
// guest's typical small scattered writes.
//
//	go test -run '^$' -bench Volume -count 5 ./cas/volume

const (
	benchSize   = 256 << 20
	benchChunk  = 2 << 20
	benchWrites = 2000 // 4 KiB writes at random 4 KiB-aligned offsets: ~8 MiB
)

var (
	benchOnce    sync.Once
	benchFixture *fixture
	benchDir     string // removed by TestMain
)

// sharedFixture imports the base once for all benchmarks of the run.
func sharedFixture(b *testing.B) *fixture {
	benchOnce.Do(func() {
		var err error
		if benchDir, err = os.MkdirTemp("", "volume-bench-"); err != nil {
			b.Fatal(err)
		}
		benchFixture = newFixtureIn(b, benchDir, randomBytes(1, benchSize), benchChunk)
	})
	return benchFixture
}

var benchBlocks = []int64{4 << 10, 64 << 10, benchChunk}

func randomWrites(b *testing.B, v *Volume, seed uint64) {
	r := rand.New(rand.NewPCG(seed, 2))
	p := randomBytes(seed, 4096)
	for range benchWrites {
		off := r.Int64N(benchSize/4096) * 4096
		if _, err := v.WriteAt(p, off); err != nil {
			b.Fatal(err)
		}
	}
	if err := v.Flush(); err != nil {
		b.Fatal(err)
	}
}

func benchVolume(b *testing.B, f *fixture, bs int64) (*Volume, string) {
	dir := filepath.Join(b.TempDir(), "vol")
	if err := Create(context.Background(), f.store, dir, f.base, Options{BlockSize: bs}); err != nil {
		b.Fatal(err)
	}
	v, err := Open(context.Background(), f.store, dir)
	if err != nil {
		b.Fatal(err)
	}
	return v, dir
}

// BenchmarkVolumeRandomWrites: one op = 2000 scattered 4 KiB writes to a
// fresh volume, then a flush. Reports the overlay's disk use.
func BenchmarkVolumeRandomWrites(b *testing.B) {
	f := sharedFixture(b)
	for _, bs := range benchBlocks {
		b.Run(fmt.Sprintf("block=%dKiB", bs>>10), func(b *testing.B) {
			var disk int64
			for i := 0; b.Loop(); i++ {
				b.StopTimer()
				v, dir := benchVolume(b, f, bs)
				b.StartTimer()
				randomWrites(b, v, uint64(i))
				b.StopTimer()
				disk = overlayDisk(b, dir)
				v.Close()
				b.StartTimer()
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*benchWrites), "ns/write")
			b.ReportMetric(float64(disk)/(1<<20), "overlay-MiB")
		})
	}
}

// BenchmarkVolumeCommit: one op = committing a volume after the writes.
func BenchmarkVolumeCommit(b *testing.B) {
	f := sharedFixture(b)
	for _, bs := range benchBlocks {
		b.Run(fmt.Sprintf("block=%dKiB", bs>>10), func(b *testing.B) {
			for i := 0; b.Loop(); i++ {
				b.StopTimer()
				v, _ := benchVolume(b, f, bs)
				randomWrites(b, v, uint64(i))
				b.StartTimer()
				if _, err := v.Commit(context.Background(), "bench"); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				v.Close()
				b.StartTimer()
			}
		})
	}
}

// BenchmarkVolumeSequentialRead: reading the whole volume in 128 KiB
// requests after the scattered writes (base and overlay interleaved).
func BenchmarkVolumeSequentialRead(b *testing.B) {
	f := sharedFixture(b)
	for _, bs := range benchBlocks {
		b.Run(fmt.Sprintf("block=%dKiB", bs>>10), func(b *testing.B) {
			v, _ := benchVolume(b, f, bs)
			defer v.Close()
			randomWrites(b, v, 7)
			p := make([]byte, 128<<10)
			b.SetBytes(benchSize)
			for b.Loop() {
				for off := int64(0); off < benchSize; off += int64(len(p)) {
					if _, err := v.ReadAt(p, off); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}
