package pool

import (
	"context"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

type netConn = net.Conn

func dialUnix(ctx context.Context, path string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "unix", path)
}

func itoa(n int) string { return strconv.Itoa(n) }

// holdsTAP reports whether process pid has a /dev/net/tun fd attached to
// the interface name (the kernel's fdinfo of a tun file has "iff: NAME").
func holdsTAP(pid int, name string) bool {
	dir := "/proc/" + itoa(pid)
	fds, err := os.ReadDir(dir + "/fd")
	if err != nil {
		return false
	}
	for _, fd := range fds {
		if l, err := os.Readlink(dir + "/fd/" + fd.Name()); err != nil || l != "/dev/net/tun" {
			continue
		}
		b, err := os.ReadFile(dir + "/fdinfo/" + fd.Name())
		if err == nil && strings.Contains(string(b), "iff:\t"+name+"\n") {
			return true
		}
	}
	return false
}

// tapIn reports whether the network namespace of pid has an interface
// named name that is up.
func tapIn(t *testing.T, pid int, name string) bool {
	return tapFlags(t, pid, name)&net.FlagUp != 0
}

// tapFlags returns the flags of interface name in the network namespace of
// pid (0 if there is none). A TAP is FlagRunning while a process holds it
// open (its carrier).
func tapFlags(t *testing.T, pid int, name string) net.Flags {
	t.Helper()
	target, err := os.Open("/proc/" + itoa(pid) + "/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	found := make(chan net.Flags, 1)
	go func() {
		runtime.LockOSThread()
		home, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			found <- 0
			return
		}
		defer home.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			found <- 0
			return
		}
		var flags net.Flags
		if ifc, err := net.InterfaceByName(name); err == nil {
			flags = ifc.Flags
		}
		if unix.Setns(int(home.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		found <- flags
	}()
	return <-found
}
