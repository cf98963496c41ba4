package kvm

import (
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// This file and run_unsafe.go hold every use of unsafe in Volt: passing
// pointers to the kernel's ABI structs and guest memory addresses.

// ioctl passes a pointer argument. It takes unsafe.Pointer, not uintptr, and
// converts only inside the Syscall call so that the object stays alive and is
// not moved (stack growth) while the kernel uses it. EINTR is retried except
// for KVM_RUN, whose EINTR means "kicked".
func ioctl(fd int, req uintptr, arg unsafe.Pointer) (uintptr, error) {
	for {
		r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg))
		if errno == unix.EINTR && req != kvmRun {
			continue
		}
		if errno != 0 {
			return r, errno
		}
		return r, nil
	}
}

// ioctlValue passes a plain integer argument.
func ioctlValue(fd int, req uintptr, arg uintptr) (uintptr, error) {
	for {
		r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, arg)
		if errno == unix.EINTR && req != kvmRun {
			continue
		}
		if errno != 0 {
			return r, errno
		}
		return r, nil
	}
}

func ioctlPtr[T any](fd int, req uintptr, v *T) error {
	_, err := ioctl(fd, req, unsafe.Pointer(v))
	return err
}

func hostAddr(b []byte) uint64 {
	if len(b) == 0 {
		return 0
	}
	return uint64(uintptr(unsafe.Pointer(&b[0])))
}

// cpuidBuffer lays out struct kvm_cpuid2 followed by its entries.
func cpuidIoctl(fd int, req uintptr, entries []CPUIDEntry, max int) ([]CPUIDEntry, error) {
	type header struct {
		Nent uint32
		_    uint32
	}
	n := max
	if entries != nil {
		n = len(entries)
	}
	hdr := int(unsafe.Sizeof(header{}))
	esz := int(unsafe.Sizeof(CPUIDEntry{}))
	buf := make([]byte, hdr+n*esz)
	h := (*header)(unsafe.Pointer(&buf[0]))
	h.Nent = uint32(n)
	ents := unsafe.Slice((*CPUIDEntry)(unsafe.Pointer(&buf[hdr])), n)
	copy(ents, entries)
	if _, err := ioctl(fd, req, unsafe.Pointer(&buf[0])); err != nil {
		return nil, err
	}
	if int(h.Nent) > n {
		return nil, fmt.Errorf("kernel returned %d CPUID entries, buffer holds %d", h.Nent, n)
	}
	out := make([]CPUIDEntry, h.Nent)
	copy(out, ents[:h.Nent])
	return out, nil
}

// msrIoctl runs KVM_GET_MSRS or KVM_SET_MSRS over struct kvm_msrs and
// returns how many entries the kernel processed.
func msrIoctl(fd int, req uintptr, msrs []MSR) (int, error) {
	type header struct {
		N uint32
		_ uint32
	}
	if len(msrs) == 0 {
		return 0, nil
	}
	hdr := int(unsafe.Sizeof(header{}))
	esz := int(unsafe.Sizeof(MSR{}))
	buf := make([]byte, hdr+len(msrs)*esz)
	h := (*header)(unsafe.Pointer(&buf[0]))
	h.N = uint32(len(msrs))
	ents := unsafe.Slice((*MSR)(unsafe.Pointer(&buf[hdr])), len(msrs))
	copy(ents, msrs)
	r, err := ioctl(fd, req, unsafe.Pointer(&buf[0]))
	if err != nil {
		return 0, err
	}
	copy(msrs, ents)
	return int(r), nil
}

func msrIndexList(fd int) ([]uint32, error) {
	for n := 256; n <= 1<<16; n *= 4 {
		buf := make([]uint32, 1+n)
		buf[0] = uint32(n)
		_, err := ioctl(fd, kvmGetMSRIndexList, unsafe.Pointer(&buf[0]))
		if err == unix.E2BIG {
			continue
		}
		if err != nil {
			return nil, err
		}
		return append([]uint32(nil), buf[1:1+buf[0]]...), nil
	}
	return nil, fmt.Errorf("MSR index list too long")
}

func dirtyLogIoctl(fd int, slot uint32, bitmap []uint64) error {
	if len(bitmap) == 0 {
		return fmt.Errorf("empty dirty bitmap")
	}
	// The bitmap is referenced by address inside the struct, so it must not
	// move: pin it for the duration of the call.
	var pin runtime.Pinner
	pin.Pin(&bitmap[0])
	defer pin.Unpin()
	d := dirtyLog{Slot: slot, Bitmap: uint64(uintptr(unsafe.Pointer(&bitmap[0])))}
	_, err := ioctl(fd, kvmGetDirtyLog, unsafe.Pointer(&d))
	return err
}
