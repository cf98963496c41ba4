package vmm_test

import (
	"context"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/voltvmm/volt/vmm"
	"github.com/voltvmm/volt/vmm/snapshot"
)

// TestRestoreFailingInEitherBranchLeaksNothing breaks a two-vCPU snapshot
// where each of the restore's parallel branches fails (KVM refuses the
// second vCPU's multiprocessing state; the entropy device is not where its
// slot is), and in both at once: the
// restore must fail with the step's own error, and leave no goroutine and
// no file descriptor behind; the unbroken snapshot then restores and runs.
func TestRestoreFailingInEitherBranchLeaksNothing(t *testing.T) {
	state, mem, _ := snapshotProbe(t, vmm.Config{CPUs: 2, MemorySize: 32 << 20, Entropy: &vmm.EntropyConfig{}}, 1)
	good, err := snapshot.ReadStateFile(state)
	if err != nil {
		t.Fatal(err)
	}
	if good.Machine.CPUs != 2 || len(good.Devices.Virtio) != 1 {
		t.Fatalf("the snapshot has %d vCPUs and %d virtio devices, want 2 and 1", good.Machine.CPUs, len(good.Devices.Virtio))
	}
	broken := func(t *testing.T, vcpu, device bool) string {
		st, err := snapshot.ReadStateFile(state)
		if err != nil {
			t.Fatal(err)
		}
		if vcpu {
			st.VCPUs[1].MPState = 0xff // no such state: KVM_SET_MP_STATE refuses it
		}
		if device {
			st.Devices.Virtio[0].Base += 0x1000 // checked once memory is in place
		}
		p := t.TempDir() + "/vm.state"
		if err := snapshot.WriteStateFile(p, st); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name         string
		vcpu, device bool
		want         []string // the error says one of these
	}{
		{"a vCPU's state", true, false, []string{"restore vCPU 1: KVM_SET_MP_STATE"}},
		{"a device's place", false, true, []string{"is not in slot 0"}},
		{"both", true, true, []string{"restore vCPU 1: KVM_SET_MP_STATE", "is not in slot 0"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := broken(t, tt.vcpu, tt.device)
			goroutines, fds := runtime.NumGoroutine(), openFDs(t)
			vm, err := vmm.Restore(context.Background(), vmm.RestoreConfig{StatePath: p, MemPath: mem})
			if err == nil {
				vm.Close()
				t.Fatal("restore succeeded")
			}
			said := false
			for _, w := range tt.want {
				said = said || strings.Contains(err.Error(), w)
			}
			if !said {
				t.Errorf("error %q says none of %q", err, tt.want)
			}
			// Goroutines of the test framework and the finished probe
			// may still be winding down: wait for the count to settle.
			deadline := time.Now().Add(2 * time.Second)
			for runtime.NumGoroutine() > goroutines && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			if n := runtime.NumGoroutine(); n > goroutines {
				buf := make([]byte, 1<<16)
				t.Errorf("%d goroutines after the failed restore, %d before:\n%s", n, goroutines, buf[:runtime.Stack(buf, true)])
			}
			if n := openFDs(t); n > fds {
				t.Errorf("%d open descriptors after the failed restore, %d before", n, fds)
			}
		})
	}
	s := restoreProbe(t, state, mem)
	s.send("echo after")
	s.expect("after")
	s.send("poweroff")
	if r := s.wait(); r.Reason != vmm.StopPowerOff {
		t.Fatalf("the unbroken snapshot's restore ended with %s (%v), want a power-off", r.Reason, r.Err)
	}
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}
