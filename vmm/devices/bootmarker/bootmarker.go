// Package bootmarker is the device behind debug port 0x80: it timestamps
// every boot-marker byte a guest writes (see guest/marker for the codes), so
// the VMM can report its own boot timeline next to what voltbench traces
// with eBPF.
package bootmarker

import (
	"sync"
	"time"

	"github.com/voltvmm/volt/guest/marker"
)

// MaxEvents bounds the log: a guest that writes port 0x80 in a loop (as
// BIOS-era code does for delays) must not grow the VMM without limit.
const MaxEvents = 1024

// Event is one marker write.
type Event struct {
	Stage marker.Stage
	// At is the monotonic time of the write; in a State it is converted to
	// an offset from the device's origin.
	At time.Time
}

// Device records marker writes.
type Device struct {
	mu      sync.Mutex
	origin  time.Time
	events  []Event
	dropped uint64
	// seen has a bit per stage ever written, kept even when the log is
	// full: whether the guest announced a shutdown or a panic decides how
	// its end is reported.
	seen   [4]uint64
	notify func(Event)
	delay  time.Duration
}

// Option configures a Device.
type Option func(*Device)

// WithNotify calls fn (on the vCPU thread) for every marker as it is written.
func WithNotify(fn func(Event)) Option { return func(d *Device) { d.notify = fn } }

// WithDelay makes every marker write stall the writing vCPU for d. It exists
// only so that tests and the CI gate can inject a real, measurable boot
// regression; it is off unless asked for.
func WithDelay(delay time.Duration) Option { return func(d *Device) { d.delay = delay } }

// New returns a device whose timeline starts at origin (e.g. process start).
func New(origin time.Time, opts ...Option) *Device {
	d := &Device{origin: origin}
	for _, o := range opts {
		o(d)
	}
	return d
}

// Read: port 0x80 reads as 0xff on PCs; nothing is recorded.
func (d *Device) Read(offset uint64, data []byte) {
	for i := range data {
		data[i] = 0xff
	}
}

// Write records data[0] as a stage.
func (d *Device) Write(offset uint64, data []byte) {
	if len(data) == 0 {
		return
	}
	if d.delay > 0 {
		time.Sleep(d.delay)
	}
	e := Event{Stage: marker.Stage(data[0]), At: time.Now()}
	d.mu.Lock()
	d.seen[e.Stage/64] |= 1 << (e.Stage % 64)
	if len(d.events) < MaxEvents {
		d.events = append(d.events, e)
	} else {
		d.dropped++
	}
	notify := d.notify
	d.mu.Unlock()
	if notify != nil {
		notify(e)
	}
}

// Origin is the time the timeline is measured from.
func (d *Device) Origin() time.Time { return d.origin }

// Events returns the recorded markers in order.
func (d *Device) Events() []Event {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]Event(nil), d.events...)
}

// First returns when stage was first written.
func (d *Device) First(stage marker.Stage) (time.Time, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, e := range d.events {
		if e.Stage == stage {
			return e.At, true
		}
	}
	return time.Time{}, false
}

// Seen reports whether the guest ever wrote stage, in this process.
func (d *Device) Seen(stage marker.Stage) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.seen[stage/64]&(1<<(stage%64)) != 0
}

// State is the device's snapshot form: stages with offsets from the origin.
type State struct {
	Stages  []uint8
	Offsets []time.Duration
	Dropped uint64
}

// State returns the recorded timeline as plain data.
func (d *Device) State() State {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := State{Dropped: d.dropped}
	for _, e := range d.events {
		s.Stages = append(s.Stages, uint8(e.Stage))
		s.Offsets = append(s.Offsets, e.At.Sub(d.origin))
	}
	return s
}

// Restore replaces the timeline. Mismatched or oversized input (a state file
// is untrusted) is truncated rather than trusted.
func (d *Device) Restore(s State) {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := min(len(s.Stages), len(s.Offsets), MaxEvents)
	d.events = d.events[:0]
	for i := range n {
		d.events = append(d.events, Event{Stage: marker.Stage(s.Stages[i]), At: d.origin.Add(s.Offsets[i])})
	}
	d.dropped = s.Dropped
}
