package vmm

import (
	"strings"
	"time"

	"github.com/voltvmm/volt/vmm/kvm"
)

// Metrics is a point-in-time view of one VM for the metrics file. Field
// names follow Firecracker's snake_case metric groups so that collectors
// written for it find familiar keys.
type Metrics struct {
	VCPUs         int              `json:"vcpu_count"`
	MemoryBytes   uint64           `json:"memory_bytes"`
	HugePages     bool             `json:"huge_pages"`
	Started       bool             `json:"started"`
	Paused        bool             `json:"paused"`
	Stopped       bool             `json:"stopped"`
	StopReason    string           `json:"stop_reason,omitempty"`
	UART          UARTMetrics      `json:"uart"`
	BootTimeline  map[string]int64 `json:"boot_timeline_us"`
	BootMarkers   int              `json:"boot_marker_count"`
	UptimeMicros  int64            `json:"uptime_us"`
	GuestEntryAge int64            `json:"since_guest_entry_us,omitempty"`
	// Exits counts the vCPU exits that reached the VMM, by KVM exit
	// reason (kvm_io, kvm_mmio, …); exits KVM handles in the kernel are
	// not seen here.
	Exits map[string]uint64 `json:"vcpu_exits"`
}

// UARTMetrics counts serial console traffic the host could not deliver.
type UARTMetrics struct {
	// LostInputBytes is host input dropped because the guest did not
	// drain the receive FIFO.
	LostInputBytes uint64 `json:"lost_input_bytes"`
}

// Metrics gathers the VM's metrics. It takes only short locks and is safe
// to call from any goroutine while the vCPUs run.
func (v *VM) Metrics() Metrics {
	now := time.Now()
	m := Metrics{
		VCPUs:        v.cfg.CPUs,
		MemoryBytes:  v.cfg.MemorySize,
		HugePages:    v.cfg.HugePages,
		BootTimeline: map[string]int64{},
		BootMarkers:  len(v.markers.Events()),
		UptimeMicros: now.Sub(v.cfg.Origin).Microseconds(),
	}
	m.Exits = map[string]uint64{}
	for r := range v.exits {
		if n := v.exits[r].Load(); n > 0 {
			m.Exits[strings.ToLower(strings.TrimPrefix(kvm.ExitReason(r).String(), "KVM_EXIT_"))] = n
		}
	}
	if v.uart != nil {
		m.UART.LostInputBytes = v.uart.Lost()
	}
	for _, s := range v.BootStages() {
		m.BootTimeline[s.Name] = s.At.Microseconds()
	}
	v.mu.Lock()
	m.Started = v.started
	m.Paused = v.pause
	m.Stopped = v.stopping.Load()
	if m.Stopped {
		m.StopReason = string(v.result.Reason)
	}
	entry := v.timeline.GuestEntry
	v.mu.Unlock()
	if !entry.IsZero() {
		m.GuestEntryAge = now.Sub(entry).Microseconds()
	}
	return m
}

// Started reports whether Run has begun: from then on Pause and Resume
// apply. Callers that start Run on another goroutine wait for it before
// accepting pause requests.
func (v *VM) Started() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.started
}
