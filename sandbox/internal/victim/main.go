// Command victim is the process that sandbox's tests confine and then
// make misbehave, as gVisor's seccomp tests do: it installs the process
// filter and, for a thread role, that role's filter on a locked goroutine,
// does the work the role is there for with the Go runtime busy around it
// (garbage collection, timers, goroutines, preemption), and then either
// exits 0 ("live") or makes one forbidden call on the confined thread
// ("die", and "trap" with the trapping action), which must kill it with
// SIGSYS. It is built without cgo, as volt-vmm is: with cgo, threads come
// from glibc's pthread_create (clone3, rseq, set_robust_list), which no
// filter of volt-vmm allows.
//
//	victim ROLE live|die|trap DIR
//	victim landlock - DIR   (Landlock: tries accesses inside and outside)
//	victim caps - DIR       (drops every capability, prints /proc status)
package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/voltvmm/volt/sandbox"
)

// kvmRun is KVM_RUN (_IO(0xAE, 0x80)).
const kvmRun = 0xae80

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: victim ROLE live|die|trap DIR")
		os.Exit(2)
	}
	os.Setenv("VOLT_SANDBOX_DIR", os.Args[3])
	switch os.Args[1] {
	case "landlock":
		os.Exit(landlockMain(os.Args[3]))
	case "caps":
		os.Exit(capsMain())
	}
	os.Exit(run(os.Args[1], os.Args[2]))
}

// The victims: the test binary re-executed with VOLT_SANDBOX_VICTIM set
// runs victimMain instead of the tests. It installs the process filter,
// and for a thread role that role's filter on a locked goroutine, does the
// work the role is there for (with the Go runtime busy around it: garbage
// collection, timers, goroutines, preemption), and then either exits 0
// ("live") or makes one forbidden call on the confined thread ("die").

// forbidden is, per role, one call its filter must refuse, chosen to show
// an argument check where the role has one.
var forbidden = map[sandbox.Role]struct {
	what string
	call func() error
}{
	sandbox.RoleVMM: {"socket(AF_INET)", func() error {
		_, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
		return err
	}},
	sandbox.RoleVCPU: {"openat", func() error {
		_, err := os.Open("/etc/hostname")
		return err
	}},
	sandbox.RoleAPI: {"ioctl(KVM_RUN)", func() error {
		_, _, e := unix.Syscall(unix.SYS_IOCTL, 0, kvmRun, 0)
		return e
	}},
	sandbox.RoleBlock: {"connect", func() error {
		return unix.Connect(-1, &unix.SockaddrUnix{Name: "/nonexistent"})
	}},
	sandbox.RoleNet: {"ioctl(TUNSETIFF)", func() error {
		_, _, e := unix.Syscall(unix.SYS_IOCTL, 0, unix.TUNSETIFF, 0)
		return e
	}},
	sandbox.RoleVsock: {"bind", func() error {
		return unix.Bind(-1, &unix.SockaddrUnix{Name: "/nonexistent"})
	}},
	sandbox.RoleRNG: {"openat", func() error {
		_, err := os.Open("/etc/hostname")
		return err
	}},
}

func run(role, mode string) int {
	r, err := sandbox.ParseRole(role)
	if err != nil {
		fmt.Fprintln(os.Stderr, "victim:", err)
		return 90
	}
	dir := os.Getenv("VOLT_SANDBOX_DIR")
	// What only the process may do, set up before the filters: a Unix
	// listener (bind and listen are not allowed later) and a file.
	ln, err := net.Listen("unix", filepath.Join(dir, "api.sock"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "victim: listen:", err)
		return 91
	}
	defer ln.Close()
	host, err := net.Listen("unix", filepath.Join(dir, "vsock.sock_52"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "victim: listen:", err)
		return 91
	}
	defer host.Close()
	disk, err := os.OpenFile(filepath.Join(dir, "disk"), os.O_RDWR, 0)
	if err != nil {
		fmt.Fprintln(os.Stderr, "victim: open the disk:", err)
		return 91
	}
	defer disk.Close()
	opts := sandbox.DefaultOptions
	if mode == "trap" {
		opts.Action = sandbox.ActionTrap
	}
	if err := sandbox.ApplyProcess(sandbox.RoleVMM, opts); err != nil {
		fmt.Fprintln(os.Stderr, "victim:", err)
		return 92
	}
	stopBusy := busyRuntime()
	defer stopBusy()
	if err := processWork(dir, ln); err != nil {
		fmt.Fprintln(os.Stderr, "victim: process work under the vmm filter:", err)
		return 93
	}
	if r == sandbox.RoleVMM {
		if mode != "live" {
			err := forbidden[r].call()
			fmt.Fprintf(os.Stderr, "victim: %s returned %v instead of killing the process\n", forbidden[r].what, err)
			return 94
		}
		fmt.Println("victim: ok")
		return 0
	}
	done := make(chan error, 1)
	go func() {
		if err := sandbox.ApplyThread(r); err != nil {
			done <- err
			return
		}
		if err := threadWork(r, dir, disk, ln); err != nil {
			done <- fmt.Errorf("%s work on its own thread: %w", r, err)
			return
		}
		if mode != "live" {
			err := forbidden[r].call()
			done <- fmt.Errorf("%s returned %v instead of killing the process", forbidden[r].what, err)
			return
		}
		done <- nil
	}()
	if err := <-done; err != nil {
		fmt.Fprintln(os.Stderr, "victim:", err)
		return 95
	}
	// The narrow filter stayed on its thread: the rest of the process may
	// still do what it forbids.
	if err := processWork(dir, ln); err != nil {
		fmt.Fprintln(os.Stderr, "victim: process work after the thread filter:", err)
		return 96
	}
	fmt.Println("victim: ok")
	return 0
}

// busyRuntime keeps the Go runtime doing what it does in a VMM: garbage
// collection, timers, goroutines handing work over, and preemption.
func busyRuntime() (stop func()) {
	quit := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.NewTicker(time.Millisecond)
			defer t.Stop()
			var keep [][]byte
			for {
				select {
				case <-quit:
					return
				case <-t.C:
					keep = append(keep, make([]byte, 64<<10))
					if len(keep) > 64 {
						keep = nil
						runtime.GC()
					}
				}
			}
		}()
	}
	return func() { close(quit); wg.Wait() }
}

// processWork is a VMM's work off the locked threads: a snapshot-like file
// written, synced, renamed and removed; an API request through the Unix
// socket; a thread created.
func processWork(dir string, ln net.Listener) error {
	tmp := filepath.Join(dir, "state.tmp")
	if err := os.WriteFile(tmp, []byte("state"), 0o600); err != nil {
		return err
	}
	f, err := os.OpenFile(tmp, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	f.Close()
	if err := os.Rename(tmp, filepath.Join(dir, "state")); err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(dir, "state")); err != nil {
		return err
	}
	accepted := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			accepted <- err
			return
		}
		defer c.Close()
		buf := make([]byte, 4)
		_, err = c.Read(buf)
		if err == nil {
			_, err = c.Write(buf)
		}
		accepted <- err
	}()
	// The client side as vsock's muxer dials: a raw AF_UNIX socket.
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: ln.Addr().String()}); err != nil {
		return err
	}
	if _, err := unix.Write(fd, []byte("ping")); err != nil {
		return err
	}
	if _, err := unix.Read(fd, make([]byte, 4)); err != nil {
		return err
	}
	if err := <-accepted; err != nil {
		return err
	}
	// A locked goroutine makes the runtime start another thread.
	locked := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		close(locked)
	}()
	<-locked
	return nil
}

// threadWork is what each role's thread does in volt-vmm, with the calls
// the role is there for.
func threadWork(r sandbox.Role, dir string, disk *os.File, ln net.Listener) error {
	// Every role: allocation, a timer, a goroutine started and waited for
	// (its thread comes from Go's template thread, not this one), a signal
	// to our own thread.
	buf := make([][]byte, 0, 64)
	for i := 0; i < 64; i++ {
		buf = append(buf, make([]byte, 128<<10))
	}
	runtime.GC()
	time.Sleep(2 * time.Millisecond)
	ch := make(chan int)
	go func() { ch <- len(buf) }()
	<-ch
	if err := unix.Tgkill(os.Getpid(), unix.Gettid(), unix.SIGURG); err != nil {
		return fmt.Errorf("tgkill self: %w", err)
	}
	switch r {
	case sandbox.RoleVCPU:
		if _, err := fmt.Fprintln(os.Stdout, "victim: vcpu console line"); err != nil {
			return err
		}
		// KVM_RUN on a descriptor that is not a vCPU: the filter lets
		// the request through, the kernel refuses it (ENOTTY).
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, 1, kvmRun, 0); e != unix.ENOTTY && e != unix.EINVAL {
			return fmt.Errorf("ioctl(KVM_RUN) on stdout: %v, want ENOTTY", e)
		}
	case sandbox.RoleBlock:
		// The backing file is opened when the device is built, before
		// any filter; the worker only does I/O on it.
		f := disk
		if _, err := f.WriteAt([]byte("sector"), 512); err != nil {
			return err
		}
		if _, err := f.ReadAt(make([]byte, 6), 512); err != nil {
			return err
		}
		if _, err := unix.Pwritev(int(f.Fd()), [][]byte{[]byte("a"), []byte("b")}, 1024); err != nil {
			return err
		}
		if err := unix.Fdatasync(int(f.Fd())); err != nil {
			return err
		}
		if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, 4096); err != nil {
			return err
		}
	case sandbox.RoleAPI:
		return apiWork(dir, ln)
	case sandbox.RoleNet, sandbox.RoleRNG:
		if r == sandbox.RoleRNG {
			if _, err := unix.Getrandom(make([]byte, 32), 0); err != nil {
				return err
			}
		}
		if _, err := unix.Write(1, []byte("victim: frame\n")); err != nil {
			return err
		}
	case sandbox.RoleVsock:
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		// A guest-initiated connection: dialled to a host listener
		// (made before the filters; nobody accepts, the backlog holds it).
		if err := unix.Connect(fd, &unix.SockaddrUnix{Name: filepath.Join(dir, "vsock.sock_52")}); err != nil {
			return err
		}
	}
	return nil
}

// apiWork is what volt-vmm's API threads do (vmm/api/microhttp): accept
// a connection on the listener made before the filters, read a request
// under a deadline, hand the work it asks for (here a file written and
// removed, which this thread may not do) to an ordinary goroutine and wait
// for it, write the answer, close; a log line on stderr.
func apiWork(dir string, ln net.Listener) error {
	answered := make(chan error, 1)
	go func() { // the client, on the process's threads, dialling as processWork does
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			answered <- err
			return
		}
		defer unix.Close(fd)
		if err := unix.Connect(fd, &unix.SockaddrUnix{Name: ln.Addr().String()}); err != nil {
			answered <- err
			return
		}
		if _, err := unix.Write(fd, []byte("PUT /x")); err != nil {
			answered <- err
			return
		}
		_, err = unix.Read(fd, make([]byte, 2))
		answered <- err
	}()
	c, err := ln.Accept()
	if err != nil {
		return fmt.Errorf("accept: %w", err)
	}
	if err := c.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		return err
	}
	req := make([]byte, 6)
	if _, err := io.ReadFull(c, req); err != nil {
		return fmt.Errorf("read the request: %w", err)
	}
	work := make(chan error, 1)
	go func() {
		p := filepath.Join(dir, "api-work")
		err := os.WriteFile(p, req, 0o600)
		if err == nil {
			err = os.Remove(p)
		}
		work <- err
	}()
	if err := <-work; err != nil {
		return fmt.Errorf("the request's work, off the api thread: %w", err)
	}
	if _, err := c.Write([]byte("ok")); err != nil {
		return fmt.Errorf("write the answer: %w", err)
	}
	if err := c.Close(); err != nil {
		return err
	}
	if _, err := fmt.Fprintf(os.Stderr, "victim: api request %q answered at %s\n", req, time.Now().Format(time.RFC3339Nano)); err != nil {
		return err
	}
	return <-answered
}

// landlockMain confines the process to Paths as a VMM would (a read-only
// kernel, a writable drive, a snapshot directory) and then tries each kind
// of access, printing one line per attempt for the test to check.
func landlockMain(dir string) int {
	kernel := filepath.Join(dir, "kernel")
	drive := filepath.Join(dir, "drive")
	snap := filepath.Join(dir, "snap")
	outside := filepath.Join(dir, "outside")
	st, err := sandbox.Landlock(sandbox.Paths{ReadOnly: []string{kernel}, ReadWrite: []string{drive}, Dirs: []string{snap}})
	if err != nil {
		fmt.Println("landlock error:", err)
		return 1
	}
	fmt.Println(st)
	try := func(what string, err error) {
		if err != nil {
			fmt.Printf("%s: denied: %v\n", what, err)
		} else {
			fmt.Printf("%s: allowed\n", what)
		}
	}
	_, err = os.ReadFile(kernel)
	try("read kernel", err)
	try("write kernel", os.WriteFile(kernel, []byte("x"), 0))
	f, err := os.OpenFile(drive, os.O_RDWR, 0)
	if err == nil {
		_, err = f.WriteAt([]byte("y"), 0)
		f.Close()
	}
	try("write drive", err)
	try("create in snapshot dir", os.WriteFile(filepath.Join(snap, "vm.state"), []byte("s"), 0o600))
	try("rename in snapshot dir", os.Rename(filepath.Join(snap, "vm.state"), filepath.Join(snap, "vm.state2")))
	_, err = os.ReadFile(outside)
	try("read outside", err)
	try("create outside", os.WriteFile(filepath.Join(dir, "new"), []byte("n"), 0o600))
	_, err = os.ReadFile("/etc/hostname")
	try("read /etc/hostname", err)
	return 0
}

// capsMain drops every capability and prints the process's status lines.
func capsMain() int {
	if err := sandbox.DropCapabilities(); err != nil {
		fmt.Println("drop error:", err)
		return 1
	}
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		fmt.Println("status:", err)
		return 1
	}
	os.Stdout.Write(b)
	// Every thread, not only this one.
	tasks, _ := filepath.Glob("/proc/self/task/*/status")
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err == nil {
			for _, line := range strings.Split(string(b), "\n") {
				if strings.HasPrefix(line, "CapEff:") || strings.HasPrefix(line, "CapPrm:") || strings.HasPrefix(line, "NoNewPrivs:") {
					fmt.Println("task", filepath.Base(filepath.Dir(t)), line)
				}
			}
		}
	}
	// A program it execs gains nothing, although the bounding set is
	// left full and the uid may be 0: no_new_privs caps the new
	// permitted set at the old, empty one.
	child, err := exec.Command("/bin/grep", "-E", "^Cap(Inh|Prm|Eff|Amb):", "/proc/self/status").Output()
	if err != nil {
		fmt.Println("exec:", err)
		return 1
	}
	for _, line := range strings.Split(strings.TrimSpace(string(child)), "\n") {
		fmt.Println("child", line)
	}
	return 0
}
