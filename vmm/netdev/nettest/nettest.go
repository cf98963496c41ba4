// Package nettest gives tests a network namespace of their own, so that TAPs,
// bridges and macvtaps can be made and torn down without touching the host's
// interfaces. It needs root, /dev/net/tun and iproute2; tests skip with the
// reason when one is missing.
package nettest

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// NS is a named network namespace (reachable with `ip -n NAME`) that is
// deleted when the test ends.
type NS struct {
	Name string
	tb   testing.TB
}

// New makes a namespace for tb, or skips tb with the reason it cannot.
func New(tb testing.TB) *NS {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("network namespace tests need root")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		tb.Skipf("no TAP support: %v", err)
	}
	if _, err := exec.LookPath("ip"); err != nil {
		tb.Skip("network namespace tests need iproute2 (ip)")
	}
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		tb.Fatal(err)
	}
	ns := &NS{Name: "volt-test-" + hex.EncodeToString(b[:]), tb: tb}
	if out, err := exec.Command("ip", "netns", "add", ns.Name).CombinedOutput(); err != nil {
		tb.Fatalf("ip netns add %s: %v: %s", ns.Name, err, out)
	}
	tb.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns.Name).CombinedOutput(); err != nil {
			tb.Errorf("ip netns del %s: %v: %s", ns.Name, err, out)
		}
	})
	ns.IP("link", "set", "lo", "up")
	return ns
}

// IP runs `ip -n NAME args...` and fails the test on error.
func (ns *NS) IP(args ...string) string {
	ns.tb.Helper()
	out, err := exec.Command("ip", append([]string{"-n", ns.Name}, args...)...).CombinedOutput()
	if err != nil {
		ns.tb.Fatalf("ip -n %s %s: %v: %s", ns.Name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Do runs fn on an OS thread that has entered the namespace, with a private
// mount namespace and a sysfs of its own (as `ip netns exec` gives a
// process), so that /sys/class/net shows this namespace. The thread is
// never handed back to the Go scheduler: it exits with fn's goroutine.
// Descriptors fn opens (TAPs, sockets) stay in the namespace wherever they
// are used later; goroutines fn starts do not run in it.
func (ns *NS) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// Deliberately never unlocked: the runtime then ends this thread
		// instead of reusing it in the wrong namespaces.
		runtime.LockOSThread()
		if err := ns.enter(); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}()
	return <-errc
}

func (ns *NS) enter() error {
	f, err := os.Open("/run/netns/" + ns.Name)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("unshare mount namespace: %w", err)
	}
	if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("enter network namespace %s: %w", ns.Name, err)
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	if err := unix.Mount(ns.Name, "/sys", "sysfs", 0, ""); err != nil {
		return fmt.Errorf("mount sysfs: %w", err)
	}
	return nil
}
