package vmm_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/voltvmm/volt/guest/probe"
	"github.com/voltvmm/volt/vmm"
)

// BenchmarkFirstTouch times a guest writing pages it never touched before:
// in a fresh VM, right after a snapshot, and right after the VMM read every
// page of guest memory, which is what writing a snapshot used to do. Reading
// an untouched anonymous page maps the shared zero page; the guest's first
// write then is a copy-on-write that also invalidates KVM's mapping of the
// page, and first touches after such a snapshot ran twice as slow. A
// snapshot must cost the guest nothing afterwards. Each iteration boots a
// 2 GiB probe; only the guest's touch is timed. 20000 pages (80 MiB): with
// 100000, one touch took over the 30 s a console line may take on the
// loaded development machine, where a first touch cost 50-300 µs.
func BenchmarkFirstTouch(b *testing.B) {
	const pages = 20000
	for _, arm := range []string{"fresh", "after-snapshot", "after-reading-every-page"} {
		b.Run(arm, func(b *testing.B) {
			var total time.Duration
			for range b.N {
				b.StopTimer()
				s := startProbe(b, vmm.Config{MemorySize: 2 << 30})
				s.expect(probe.ReadyLine)
				if arm != "fresh" {
					if err := s.vm.Pause(); err != nil {
						b.Fatal(err)
					}
					if arm == "after-snapshot" {
						dir := b.TempDir()
						p := vmm.SnapshotParams{StatePath: filepath.Join(dir, "vm.state"), MemPath: filepath.Join(dir, "vm.mem")}
						if err := s.vm.CreateSnapshot(context.Background(), p); err != nil {
							b.Fatal(err)
						}
					} else {
						var sum byte
						m := s.vm.Memory().Mapping()
						for off := 0; off < len(m); off += 4096 {
							sum |= m[off]
						}
						_ = sum
					}
					if err := s.vm.Resume(); err != nil {
						b.Fatal(err)
					}
				}
				start := time.Now()
				b.StartTimer()
				s.send(fmt.Sprintf("touch %d", pages))
				s.expect(fmt.Sprintf("touched %d", pages))
				b.StopTimer()
				total += time.Since(start)
				s.vm.Stop()
			}
			b.ReportMetric(float64(total.Nanoseconds())/float64(b.N)/pages, "ns/page")
		})
	}
}
