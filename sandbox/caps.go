package sandbox

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
	"kernel.org/pub/linux/libs/security/libcap/cap"
	"kernel.org/pub/linux/libs/security/libcap/psx"
)

// DropCapabilities leaves every thread of the process with empty
// effective, permitted, inheritable and ambient sets, and sets
// no_new_privs on every thread unless the calling thread has it already
// (SetNoNewPrivs, a TSYNC and an exec give it to all threads at once, and
// threads inherit it from the thread that creates them): ClearCapabilities,
// then EnsureNoNewPrivs. Capabilities are per thread in Linux; libcap's psx
// applies each change to every thread of the Go runtime, one
// stop-the-world round per system call.
//
// It leaves the bounding set alone. With no_new_privs set and the
// permitted set empty, no exec can gain a capability whatever the bounding
// set holds (the kernel intersects the new permitted set with the old,
// empty one), and emptying it costs a round per capability: 40 rounds,
// 150-170 ms on the shared development machine, where one round took ~4 ms.
// volt-jailer empties it (DropBoundingSet) before the VMM starts.
func DropCapabilities() error {
	if err := ClearCapabilities(); err != nil {
		return err
	}
	if err := EnsureNoNewPrivs(); err != nil {
		return err
	}
	if !noNewPrivs() {
		return errors.New("no_new_privs not set after setting it")
	}
	return nil
}

// ClearCapabilities is DropCapabilities without no_new_privs: one round
// (capset) when the process holds a capability, none otherwise. A VMM
// calls it between Landlock and its process filter, whose TSYNC then sets
// no_new_privs on every thread for nothing (EnsureNoNewPrivs after it
// costs no round).
func ClearCapabilities() error {
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
	return checkNoCapabilities()
}

// EnsureNoNewPrivs leaves no_new_privs set on every thread, in a round
// only when it has to:
//   - once the process filter is installed (ApplyProcess, at any level
//     but LevelOff), nothing: its TSYNC copied the installing thread's
//     no_new_privs to every thread, and prctl is no longer allowed. The
//     caller must have run ApplyProcess with its goroutine locked to its
//     thread (runtime.LockOSThread), so that the prctl and the install
//     ran on one thread, or with no_new_privs set already;
//   - when the calling thread has it, nothing: the process's threads got
//     it together (a round, a TSYNC, or inherited across exec from
//     volt-jailer), and threads created later copy it;
//   - otherwise one round (SetNoNewPrivs).
func EnsureNoNewPrivs() error {
	process.mu.Lock()
	filtered := process.applied && process.opts.Level != LevelOff
	process.mu.Unlock()
	if filtered || noNewPrivs() {
		return nil
	}
	return SetNoNewPrivs()
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
	amb, err := unix.PrctlRetInt(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_IS_SET, uintptr(cap.SETPCAP), 0, 0)
	if err == nil && amb != 0 {
		return fmt.Errorf("ambient capabilities still set")
	}
	return nil
}
