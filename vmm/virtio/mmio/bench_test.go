package mmio_test

import (
	"testing"

	"github.com/voltvmm/volt/vmm/virtio/virtiotest"
)

// BenchmarkNotifyRoundTrip is the transport's share of a request's latency
// on the ioeventfd path: a signal on the queue's eventfd (what KVM does on
// the guest's QueueNotify write), the forwarder goroutine, the device's
// worker (an echo of 8 bytes), the used-buffer interrupt, and the driver
// side woken by the trigger. BenchmarkNotifyRoundTrip/mmio-write is the
// same through a QueueNotify register write (the path without ioeventfd).
func BenchmarkNotifyRoundTrip(b *testing.B) {
	for _, path := range []string{"eventfd", "mmio-write"} {
		b.Run(path, func(b *testing.B) {
			bn := newBench(b)
			bn.probe(^uint64(0))
			bn.setupQueues()
			efds, err := bn.tr.NotifyEventFDs()
			if err != nil {
				b.Fatal(err)
			}
			r := bn.rings[0]
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := r.Add(virtiotest.Segments{Readable: [][]byte{[]byte("12345678")}, Writable: []uint32{8}}); err != nil {
					b.Fatal(err)
				}
				if path == "eventfd" {
					efds[0].Signal()
				} else {
					bn.write(queueNotify, 0)
				}
				for {
					if _, ok, _ := r.PopUsedEntry(); ok {
						break
					}
					<-bn.irq.C
				}
				r.ResetHeap()
			}
		})
	}
}
