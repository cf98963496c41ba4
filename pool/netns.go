package pool

import (
	"fmt"
	"os"
	"runtime"
	"strconv"

	"golang.org/x/sys/unix"
)

// Each clone of a template with a network runs in a network namespace of
// its own: the VMM is started with CLONE_NEWNET, and before the snapshot is
// loaded the pool creates, inside that namespace, a persistent TAP with the
// name the snapshot expects. The namespace lives exactly as long as the VMM
// (no bind mount, no name under /run/netns), so a VMM that dies, however it
// dies, takes its TAP with it; clones never share a TAP, a MAC or an IP on
// the host side, as in E2B's network slots, and all of it is ready before
// acquire.

// createTAPIn creates a persistent TAP named name, up, in the network
// namespace of pid; owner, unless -1, is the uid (and gid) that may attach
// to it without CAP_NET_ADMIN: a jailed VMM's.
func createTAPIn(pid int, name string, owner int) error {
	if len(name) == 0 || len(name) >= unix.IFNAMSIZ {
		return fmt.Errorf("TAP name %q: 1 to %d bytes", name, unix.IFNAMSIZ-1)
	}
	target, err := os.Open("/proc/" + strconv.Itoa(pid) + "/ns/net")
	if err != nil {
		return fmt.Errorf("netns of VMM %d: %w", pid, err)
	}
	defer target.Close()
	errc := make(chan error, 1)
	// A thread that entered another namespace must never run other
	// goroutines: the work happens on a locked thread, which is given
	// back only if it returned to the daemon's namespace.
	go func() {
		runtime.LockOSThread()
		home, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("own netns: %w", err)
			return
		}
		defer home.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns of VMM %d: %w", pid, err)
			return
		}
		err = makeTAP(name, owner)
		if serr := unix.Setns(int(home.Fd()), unix.CLONE_NEWNET); serr != nil {
			// Keep the thread locked: it exits with the goroutine.
			errc <- fmt.Errorf("return to own netns: %w", serr)
			return
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	return <-errc
}

// makeTAP creates the TAP in the calling thread's namespace, marks it
// persistent (it outlives this fd, until its namespace goes) and sets it up.
func makeTAP(name string, owner int) error {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open /dev/net/tun: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return fmt.Errorf("TAP %q: %w", name, err)
	}
	// Flags as a virtio-net backend opens it: TAP, no packet info, with
	// the virtio-net header.
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		return fmt.Errorf("TUNSETIFF %s: %w", name, err)
	}
	if owner >= 0 {
		if err := unix.IoctlSetInt(fd, unix.TUNSETOWNER, owner); err != nil {
			return fmt.Errorf("TUNSETOWNER %s %d: %w", name, owner, err)
		}
		if err := unix.IoctlSetInt(fd, unix.TUNSETGROUP, owner); err != nil {
			return fmt.Errorf("TUNSETGROUP %s %d: %w", name, owner, err)
		}
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 1); err != nil {
		return fmt.Errorf("TUNSETPERSIST %s: %w", name, err)
	}
	s, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(s)
	up, _ := unix.NewIfreq(name)
	if err := unix.IoctlIfreq(s, unix.SIOCGIFFLAGS, up); err != nil {
		return fmt.Errorf("SIOCGIFFLAGS %s: %w", name, err)
	}
	up.SetUint16(up.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(s, unix.SIOCSIFFLAGS, up); err != nil {
		return fmt.Errorf("set %s up: %w", name, err)
	}
	return nil
}
