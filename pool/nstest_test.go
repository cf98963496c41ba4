package pool

import (
	"context"
	"net"
	"os"
	"runtime"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

type netConn = net.Conn

func dialUnix(ctx context.Context, path string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "unix", path)
}

func itoa(n int) string { return strconv.Itoa(n) }

// tapIn reports whether the network namespace of pid has an interface
// named name that is a TAP (has /sys/class/net/NAME/tun_flags there).
func tapIn(t *testing.T, pid int, name string) bool {
	t.Helper()
	target, err := os.Open("/proc/" + itoa(pid) + "/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	found := make(chan bool, 1)
	go func() {
		runtime.LockOSThread()
		home, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			found <- false
			return
		}
		defer home.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			found <- false
			return
		}
		ifc, err := net.InterfaceByName(name)
		ok := err == nil && ifc.Flags&net.FlagUp != 0
		if unix.Setns(int(home.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		found <- ok
	}()
	return <-found
}
