package voltinit

import (
	"runtime"
	"sync/atomic"

	"github.com/voltvmm/volt/guest/marker"
)

// PortMarker writes boot markers to the debug port. Markers are best-effort:
// without permission (not root, not x86, a seccomp filter) it stays silent,
// since a VM without a tracer must boot the same way.
//
// ioperm grants the port to one thread only, and goroutines move between
// threads, so each write pins its goroutine and asks again; after the first
// grant the call is cheap, and there are four markers per boot.
type PortMarker struct {
	denied atomic.Bool
}

// Mark writes s to the marker port.
func (p *PortMarker) Mark(s marker.Stage) {
	if p.denied.Load() {
		return
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := portAccess(marker.Port); err != nil {
		p.denied.Store(true)
		return
	}
	outb(marker.Port, uint8(s))
}
