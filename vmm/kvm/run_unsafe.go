package kvm

import (
	"sync/atomic"
	"unsafe"
)

// storeByte writes one byte of the shared kvm_run page atomically with
// respect to other Go threads: it replaces the aligned 32-bit word holding
// the byte. Only kvm_run's first word (request_interrupt_window,
// immediate_exit, padding) is written this way, and Volt never sets
// request_interrupt_window, so the read-modify-write loses nothing.
func storeByte(page []byte, off int, v uint8) {
	word := (*uint32)(unsafe.Pointer(&page[off&^3]))
	shift := uint(off&3) * 8
	for {
		old := atomic.LoadUint32(word)
		nw := old&^(0xff<<shift) | uint32(v)<<shift
		if atomic.CompareAndSwapUint32(word, old, nw) {
			return
		}
	}
}
