package voltinit

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// The VMM's generation-ID device (vmm/devices/genid): 16 bytes at these
// ports that change whenever the VM is restored from a snapshot.
const (
	GenIDPort = 0x0f00
	GenIDSize = 16
	// GenIDInterval is how often init looks at the generation ID unless
	// volt.genid_interval says otherwise. The guest agent also looks
	// before it answers each connection, so a request to a restored clone
	// never meets the RNG state it shares with its siblings; the poll
	// bounds how long anything else in the guest may (measured costs:
	// guest/README.md).
	GenIDInterval = 100 * time.Millisecond
)

// GenerationWatcher notices when the VM has been cloned from a snapshot and
// makes the guest's state unique again: today that is the kernel RNG, which
// every clone of one memory image would otherwise continue identically.
// Its methods are safe for concurrent use: the poll and the agent's
// connections check it side by side.
type GenerationWatcher struct {
	Read   func() ([GenIDSize]byte, error)
	Reseed func(id []byte) error
	Logf   func(format string, args ...any)

	mu      sync.Mutex
	last    [GenIDSize]byte
	started bool
}

// ErrNoBaseline is returned by Check before Baseline succeeded.
var ErrNoBaseline = errors.New("generation ID: no baseline (device unavailable)")

// Baseline reads the ID the guest starts with: a VM that boots normally has
// nothing to reseed. Until it succeeds, Check does nothing.
func (w *GenerationWatcher) Baseline() error {
	id, err := w.Read()
	if err != nil {
		return err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.last, w.started = id, true
	return nil
}

// Check reads the ID once and reseeds if it differs from the last one seen,
// logging the change. A failed reseed leaves the last ID in place, so the
// next check tries again.
func (w *GenerationWatcher) Check() (changed bool, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.started {
		return false, ErrNoBaseline
	}
	id, err := w.Read()
	if err != nil {
		return false, err
	}
	if bytes.Equal(id[:], w.last[:]) {
		return false, nil
	}
	if err := w.Reseed(id[:]); err != nil {
		return false, fmt.Errorf("reseed RNG: %w", err)
	}
	w.last = id
	w.Logf("generation changed to %s (restored from a snapshot): RNG reseeded", hex.EncodeToString(id[:]))
	return true, nil
}

// Ticker is what Poll waits on.
type Ticker interface {
	// Each calls fn once per period until the ticker is closed.
	Each(fn func()) error
}

// Poll checks the ID at every tick until the ticker is closed. A failing
// check is logged once, not on every tick, until a check succeeds again.
func (w *GenerationWatcher) Poll(tick Ticker) {
	var failing string
	tick.Each(func() {
		_, err := w.Check()
		switch {
		case err == nil:
			failing = ""
		case err.Error() != failing:
			failing = err.Error()
			w.Logf("generation ID: %v", err)
		}
	})
}

// GenIDPorts reads the generation ID from the VMM's ports.
//
// Port access is per thread (ioperm), and ioperm is dear where ring 0 is
// emulated: the kernel scans its whole 64 Kib bitmap for the highest port in
// use, thousands of emulated instructions, each time. So each thread asks
// once, and permitted remembers which threads have: gettid is one cheap
// system call. A thread ID names the same thread for as long as that thread
// lives, and Go ends a thread only when a goroutine exits while locked to
// it, which no goroutine of volt-init does, so an entry never outlives its
// thread. (Threads created later by cloning a permitted one inherit the
// permission; they are simply asked again.)
type GenIDPorts struct {
	mu        sync.Mutex
	permitted map[int]bool
}

// Read reads the 16 bytes. An all-ones value means no device answered
// (ports of an empty bus read 0xff).
func (p *GenIDPorts) Read() ([GenIDSize]byte, error) {
	var id [GenIDSize]byte
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := p.permit(unix.Gettid()); err != nil {
		return id, err
	}
	for i := 0; i < GenIDSize; i += 4 {
		v := inl(uint16(GenIDPort + i))
		id[i], id[i+1], id[i+2], id[i+3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
	}
	if bytes.Equal(id[:], bytes.Repeat([]byte{0xff}, GenIDSize)) {
		return id, fmt.Errorf("no generation-ID device at port %#x", GenIDPort)
	}
	return id, nil
}

// permit makes sure thread tid, the caller's (locked), may use the ports.
func (p *GenIDPorts) permit(tid int) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.permitted[tid] {
		return nil
	}
	if err := unix.Ioperm(GenIDPort, GenIDSize, 1); err != nil {
		return fmt.Errorf("ioperm %#x: %w", GenIDPort, err)
	}
	if p.permitted == nil {
		p.permitted = map[int]bool{}
	}
	p.permitted[tid] = true
	return nil
}

// rndReseedCRNG is RNDRESEEDCRNG, _IO('R', 0x07), from <linux/random.h>.
const rndReseedCRNG = 0x5207

// ReseedKernelRNG mixes id into the kernel's input pool (a write to
// /dev/urandom mixes without crediting entropy: the ID is unique, not secret
// from the host) and forces the CRNG to reseed from the pool, so that two
// clones' random streams diverge at once rather than at the next scheduled
// reseed.
func ReseedKernelRNG(id []byte) error {
	f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.Write(id); err != nil {
		return fmt.Errorf("mix into the input pool: %w", err)
	}
	if err := unix.IoctlSetInt(int(f.Fd()), rndReseedCRNG, 0); err != nil {
		return fmt.Errorf("RNDRESEEDCRNG: %w", err)
	}
	return nil
}
