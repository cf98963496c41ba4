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

// BenchmarkFirstTouch times a guest writing pages it never touched before,
// in a fresh VM and in one that was just snapshotted: a snapshot must not
// make the guest's later first touches slower (it once did, 2x, because
// writing the memory file read every page and so mapped the zero page
// everywhere). Each iteration boots a 2 GiB probe; only the touch is timed.
func BenchmarkFirstTouch(b *testing.B) {
	const pages = 100000
	for _, snap := range []bool{false, true} {
		name := "fresh"
		if snap {
			name = "after-snapshot"
		}
		b.Run(name, func(b *testing.B) {
			for range b.N {
				b.StopTimer()
				s := startProbe(b, vmm.Config{MemorySize: 2 << 30})
				s.expect(probe.ReadyLine)
				if snap {
					if err := s.vm.Pause(); err != nil {
						b.Fatal(err)
					}
					dir := b.TempDir()
					p := vmm.SnapshotParams{StatePath: filepath.Join(dir, "vm.state"), MemPath: filepath.Join(dir, "vm.mem")}
					if err := s.vm.CreateSnapshot(context.Background(), p); err != nil {
						b.Fatal(err)
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
				b.ReportMetric(float64(time.Since(start).Nanoseconds())/pages, "ns/page")
				s.vm.Stop()
			}
		})
	}
}
