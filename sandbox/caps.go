package sandbox

import (
	"fmt"

	"golang.org/x/sys/unix"
	"kernel.org/pub/linux/libs/security/libcap/cap"
	"kernel.org/pub/linux/libs/security/libcap/psx"
)

// DropCapabilities leaves every thread of the process with empty
// effective, permitted, inheritable and ambient sets, and sets
// no_new_privs on every thread unless the calling thread has it already
// (Landlock and SetNoNewPrivs set it on all threads at once). Capabilities
// are per thread in Linux; libcap's psx applies each change to every
// thread of the Go runtime, one stop-the-world round per system call.
//
// It leaves the bounding set alone. With no_new_privs set and the
// permitted set empty, no exec can gain a capability whatever the bounding
// set holds (the kernel intersects the new permitted set with the old,
// empty one), and emptying it costs a round per capability: 40 rounds,
// 150-170 ms on the shared development machine, where one round took ~4 ms.
// volt-jailer empties it (DropBoundingSet) before the VMM starts.
func DropCapabilities() error {
	if err := cap.ResetAmbient(); err != nil {
		return fmt.Errorf("clear the ambient capabilities: %w", err)
	}
	// A process started without capabilities (volt-jailer's, any
	// unprivileged user's) has nothing to clear: its threads were all
	// created with the sets of this one, so no round is needed.
	if empty, err := cap.GetProc().Cf(cap.NewSet()); err != nil || empty != 0 {
		if err := cap.NewSet().SetProc(); err != nil {
			return fmt.Errorf("clear the effective, permitted and inheritable capabilities: %w", err)
		}
	}
	if n, err := unix.PrctlRetInt(unix.PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0); err != nil || n != 1 {
		if err := SetNoNewPrivs(); err != nil {
			return err
		}
	}
	return checkNoCapabilities()
}

// DropBoundingSet empties the bounding set and the ambient set on every
// thread, leaving the effective and permitted sets alone: what volt-jailer
// does before it changes to the VM's uid (which needs CAP_SETUID still,
// and then clears the effective and permitted sets itself).
func DropBoundingSet() error {
	var bound []cap.Value
	for v := cap.Value(0); v < cap.MaxBits(); v++ {
		if on, err := cap.GetBound(v); err == nil && on {
			bound = append(bound, v)
		}
	}
	if len(bound) > 0 {
		if err := cap.DropBound(bound...); err != nil {
			return fmt.Errorf("drop %d capabilities from the bounding set: %w (needs CAP_SETPCAP)", len(bound), err)
		}
	}
	if err := cap.ResetAmbient(); err != nil {
		return fmt.Errorf("clear the ambient capabilities: %w", err)
	}
	return nil
}

// SetNoNewPrivs sets no_new_privs on every thread (prctl wants arguments
// 3 to 5 zero, so all six are given).
func SetNoNewPrivs() error {
	if _, _, errno := psx.Syscall6(unix.SYS_PRCTL, unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0, 0); errno != 0 {
		return fmt.Errorf("set no_new_privs: %w", errno)
	}
	return nil
}

// checkNoCapabilities reads the calling thread's sets back: a failure here
// means the kernel did not do what was asked, never to be reported as
// success.
func checkNoCapabilities() error {
	c, err := cap.GetProc().Cf(cap.NewSet())
	if err != nil {
		return fmt.Errorf("read the capabilities back: %w", err)
	}
	if c != 0 {
		return fmt.Errorf("capabilities still held after dropping them (%s)", cap.GetProc())
	}
	if n, err := unix.PrctlRetInt(unix.PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0); err != nil || n != 1 {
		return fmt.Errorf("no_new_privs not set (%d, %v)", n, err)
	}
	amb, err := unix.PrctlRetInt(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_IS_SET, uintptr(cap.SETPCAP), 0, 0)
	if err == nil && amb != 0 {
		return fmt.Errorf("ambient capabilities still set")
	}
	return nil
}
