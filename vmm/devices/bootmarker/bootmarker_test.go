package bootmarker

import (
	"testing"
	"time"

	"github.com/voltvmm/volt/guest/marker"
)

func TestRecordsStagesInOrder(t *testing.T) {
	var seen []marker.Stage
	d := New(time.Now(), WithNotify(func(e Event) { seen = append(seen, e.Stage) }))
	for _, s := range []marker.Stage{marker.KernelEntry, marker.PID1, marker.Ready} {
		d.Write(0, []byte{byte(s)})
	}
	ev := d.Events()
	if len(ev) != 3 || ev[1].Stage != marker.PID1 || len(seen) != 3 {
		t.Fatalf("events %v, notified %v", ev, seen)
	}
	if ev[0].At.After(ev[2].At) {
		t.Fatal("timestamps not monotonic")
	}
	if _, ok := d.First(marker.PID1); !ok {
		t.Fatal("First(PID1) not found")
	}
	if _, ok := d.First(marker.Shutdown); ok {
		t.Fatal("First(Shutdown) found but never written")
	}
}

func TestLogIsBounded(t *testing.T) {
	d := New(time.Now())
	for range MaxEvents + 5 {
		d.Write(0, []byte{0x60})
	}
	if len(d.Events()) != MaxEvents || d.State().Dropped != 5 {
		t.Fatalf("events %d dropped %d", len(d.Events()), d.State().Dropped)
	}
	// A shutdown announced after the log filled up still counts.
	if d.Seen(marker.Shutdown) {
		t.Fatal("Seen(Shutdown) before it was written")
	}
	d.Write(0, []byte{byte(marker.Shutdown)})
	d.Write(0, []byte{0xff})
	if !d.Seen(marker.Shutdown) || !d.Seen(0xff) || d.Seen(marker.KernelPanic) {
		t.Fatal("Seen does not follow the writes past the log's bound")
	}
}

func TestStateRoundTrip(t *testing.T) {
	origin := time.Now()
	d := New(origin)
	d.Write(0, []byte{0x60})
	e := New(origin)
	e.Restore(d.State())
	if got := e.Events(); len(got) != 1 || got[0].Stage != marker.PID1 || !got[0].At.Equal(d.Events()[0].At) {
		t.Fatalf("restored %v", got)
	}
	e.Restore(State{Stages: []uint8{1, 2, 3}, Offsets: []time.Duration{1}})
	if len(e.Events()) != 1 {
		t.Fatal("mismatched state not truncated")
	}
}

func TestDelayStallsTheWriter(t *testing.T) {
	d := New(time.Now(), WithDelay(20*time.Millisecond))
	start := time.Now()
	d.Write(0, []byte{0x60})
	if time.Since(start) < 20*time.Millisecond {
		t.Fatal("injected delay not applied")
	}
}
