package pool

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pc "github.com/voltvmm/volt/pool/client"
)

// Under systemd's protocols without systemd: the API socket is passed as
// fd 3 (LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES=api) and readiness and
// shutdown are announced on NOTIFY_SOCKET.
func TestSocketActivationAndNotify(t *testing.T) {
	vmm, _, voltpool := fixture(t)
	dir := shortDir(t)
	sockPath := filepath.Join(dir, "activated.sock")
	ln, err := net.Listen("unix", sockPath)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	lf, err := ln.(*net.UnixListener).File()
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	defer lf.Close()
	notifyPath := filepath.Join(dir, "notify.sock")
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer notify.Close()

	// LISTEN_PID must be the daemon's own pid: sh sets it to its $$ and
	// execs, as systemd does after its fork.
	own := filepath.Join(dir, "own.sock") // must stay unused
	cmd := exec.Command("/bin/sh", "-c", `LISTEN_PID=$$ exec "$0" serve --socket "$1" --state-dir "$2" --vmm "$3" --drain-timeout 0s`,
		voltpool, own, filepath.Join(dir, "s"), vmm)
	cmd.Env = append(os.Environ(), "LISTEN_FDS=1", "LISTEN_FDNAMES=api", "NOTIFY_SOCKET="+notifyPath)
	cmd.ExtraFiles = []*os.File{lf}
	out, _ := os.Create(filepath.Join(dir, "daemon.log"))
	defer out.Close()
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	readMsg := func(want string) {
		t.Helper()
		notify.SetReadDeadline(time.Now().Add(15 * time.Second))
		buf := make([]byte, 4096)
		n, err := notify.Read(buf)
		if err != nil || !strings.Contains(string(buf[:n]), want) {
			log, _ := os.ReadFile(out.Name())
			t.Fatalf("notify: %q %v, want %s (daemon log: %s)", buf[:n], err, want, log)
		}
	}
	readMsg("READY=1")
	c := pc.New(sockPath)
	if _, err := c.Status(context.Background()); err != nil {
		t.Fatalf("the activated socket: %v", err)
	}
	if _, err := os.Stat(own); !os.IsNotExist(err) {
		t.Errorf("the daemon made its own socket despite the activated one: %v", err)
	}
	c.Close()
	t0 := time.Now()
	cmd.Process.Signal(os.Interrupt)
	readMsg("STOPPING=1")
	defer func() { t.Logf("shutdown took %v", time.Since(t0)) }()
	if err := cmd.Wait(); err != nil {
		t.Errorf("daemon exit: %v", err)
	}
	// systemd owns the activated socket: it is left in place.
	if _, err := os.Stat(sockPath); err != nil {
		t.Errorf("activated socket removed: %v", err)
	}
}
