package voltinit

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"os"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// The VMM's generation-ID device (vmm/devices/genid): 16 bytes at these
// ports that change whenever the VM is restored from a snapshot.
const (
	GenIDPort = 0x0f00
	GenIDSize = 16
	// GenIDInterval is how often init looks at the generation ID. A check
	// costs four port reads (four VM exits, a few microseconds each), so
	// polling ten times a second costs well under 0.1 % of a vCPU, and a
	// restored clone has a fresh RNG within 100 ms.
	GenIDInterval = 100 * time.Millisecond
)

// GenerationWatcher notices when the VM has been cloned from a snapshot and
// makes the guest's state unique again: today that is the kernel RNG, which
// every clone of one memory image would otherwise continue identically.
type GenerationWatcher struct {
	Read     func() ([GenIDSize]byte, error)
	Reseed   func(id []byte) error
	Interval time.Duration
	Logf     func(format string, args ...any)
}

// Run polls until stop is closed. The first value read is the baseline: a
// VM that boots normally has nothing to reseed.
func (w *GenerationWatcher) Run(stop <-chan struct{}) {
	last, err := w.Read()
	if err != nil {
		w.Logf("generation ID unavailable, clone detection off: %v", err)
		return
	}
	t := time.NewTicker(w.Interval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		if changed, err := w.Check(&last); err != nil {
			w.Logf("generation ID: %v", err)
		} else if changed {
			w.Logf("generation changed to %s (restored from a snapshot): RNG reseeded", hex.EncodeToString(last[:]))
		}
	}
}

// Check reads the ID once and reseeds if it differs from *last.
func (w *GenerationWatcher) Check(last *[GenIDSize]byte) (bool, error) {
	id, err := w.Read()
	if err != nil {
		return false, err
	}
	if bytes.Equal(id[:], last[:]) {
		return false, nil
	}
	if err := w.Reseed(id[:]); err != nil {
		return false, fmt.Errorf("reseed RNG: %w", err)
	}
	*last = id
	return true, nil
}

// ReadGenerationID reads the ID from the VMM's ports. An all-ones value
// means no device answered (ports of an empty bus read 0xff).
func ReadGenerationID() ([GenIDSize]byte, error) {
	var id [GenIDSize]byte
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := unix.Ioperm(GenIDPort, GenIDSize, 1); err != nil {
		return id, fmt.Errorf("ioperm %#x: %w", GenIDPort, err)
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
