package pool

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// process is one VMM process, started by this daemon (cmd set) or adopted
// from a previous one. It is identified by a pidfd, so a signal can never
// reach another process that reused the pid.
//
// A jailed VMM is two processes: volt-jailer's supervisor (pid, the one
// started, waited for and reaped: it exits only after volt-vmm, having
// removed the jail's cgroups) and volt-vmm inside the jail (vmm, its
// child), the process that is signalled, reported and measured.
type process struct {
	pid   int
	start uint64 // starttime in /proc/PID/stat: tells a reused pid apart
	pidfd int
	cmd   *exec.Cmd
	// jailed: pid is volt-jailer's supervisor, and its exit status is
	// volt-vmm's (128+N for signal N).
	jailed bool

	done    chan struct{} // closed once the process has exited (and, if ours, been reaped)
	mu      sync.Mutex
	exitMsg string // how it ended, once done
	closed  bool
	vmm     *pidRef // a jailed VMM's volt-vmm, once known; guarded by mu
}

// pidRef is a process other than ours held by a pidfd.
type pidRef struct {
	pid   int
	start uint64
	fd    int
}

// openPidRef opens a pidfd on pid if it still is the process that started
// at start (0: whichever it is now, read after the pidfd is open).
func openPidRef(pid int, start uint64) (*pidRef, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil, os.ErrProcessDone
		}
		return nil, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	st, err := procStartTime(pid)
	if err != nil || (start != 0 && st != start) {
		unix.Close(fd)
		return nil, os.ErrProcessDone
	}
	return &pidRef{pid: pid, start: st, fd: fd}, nil
}

// setVMM records volt-vmm inside p's jail; false if p already ended (the
// reference is then closed).
func (p *process) setVMM(r *pidRef) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		unix.Close(r.fd)
		return false
	}
	p.vmm = r
	return true
}

// vmmPID is volt-vmm's pid: the process itself, or inside its jail (0
// while that is not known yet).
func (p *process) vmmPID() int {
	if !p.jailed {
		return p.pid
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.vmm == nil {
		return 0
	}
	return p.vmm.pid
}

// vmmStart is volt-vmm's start time (see vmmPID).
func (p *process) vmmStart() uint64 {
	if !p.jailed {
		return p.start
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.vmm == nil {
		return 0
	}
	return p.vmm.start
}

// startProcess starts argv with stdio redirected to log (stdin from
// /dev/null), in a session of its own (a signal to the daemon's terminal or
// process group does not reach the VMMs: a lease survives a daemon restart),
// and with a network namespace of its own when newNetns.
//
// With background, the process starts at the lowest CPU priority (nice 19,
// inherited from the forking thread): a refill then takes only the CPU the
// callers' VMs leave idle, instead of competing with the VM that was just
// handed out. setPriority raises it once the VMM is warm.
func startProcess(argv []string, log *os.File, newNetns, background, jailed bool) (*process, error) {
	var p *process
	var err error
	if !background {
		p, err = startProcessNow(argv, log, newNetns)
	} else {
		p, err = startBackground(argv, log, newNetns)
	}
	if p != nil {
		p.jailed = jailed
	}
	return p, err
}

func startBackground(argv []string, log *os.File, newNetns bool) (*process, error) {
	type result struct {
		p   *process
		err error
	}
	ch := make(chan result, 1)
	go func() {
		// The thread's nice value is changed for the fork and never
		// restored: it is not unlocked, so it exits with this goroutine
		// and no other goroutine ever runs at nice 19.
		runtime.LockOSThread()
		if err := unix.Setpriority(unix.PRIO_PROCESS, 0, backgroundNice); err != nil {
			ch <- result{nil, fmt.Errorf("lower the refill's priority: %w", err)}
			return
		}
		p, err := startProcessNow(argv, log, newNetns)
		ch <- result{p, err}
	}()
	r := <-ch
	return r.p, r.err
}

const backgroundNice = 19

// setPriority gives every thread of the process nice value nice (0: the
// normal priority of a VM handed to a caller). Threads created later
// inherit it from their creators.
func (p *process) setPriority(nice int) error {
	pid := p.vmmPID()
	if pid == 0 {
		return fmt.Errorf("jailed VMM of volt-jailer %d not known yet", p.pid)
	}
	tasks, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/task")
	if err != nil {
		return fmt.Errorf("threads of VMM %d: %w", pid, err)
	}
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		if err := unix.Setpriority(unix.PRIO_PROCESS, tid, nice); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("priority of VMM %d thread %d: %w", pid, tid, err)
		}
	}
	return nil
}

func startProcessNow(argv []string, log *os.File, newNetns bool) (*process, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &unix.SysProcAttr{Setsid: true}
	if newNetns {
		cmd.SysProcAttr.Cloneflags = unix.CLONE_NEWNET
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", argv[0], err)
	}
	p := &process{pid: cmd.Process.Pid, cmd: cmd, done: make(chan struct{})}
	// The child cannot be reaped before we Wait, so its pid is stable.
	fd, err := unix.PidfdOpen(p.pid, 0)
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		return nil, fmt.Errorf("pidfd_open %d: %w", p.pid, err)
	}
	p.pidfd = fd
	if p.start, err = procStartTime(p.pid); err != nil {
		p.kill()
		cmd.Wait()
		unix.Close(fd)
		return nil, err
	}
	return p, nil
}

// adoptProcess opens a pidfd on pid if it still is the process that
// started at start; it returns os.ErrProcessDone otherwise.
func adoptProcess(pid int, start uint64) (*process, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil, os.ErrProcessDone
		}
		return nil, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	// Read the start time after the pidfd is open: if it matches, the
	// pidfd refers to that process and no later reuse can fool it.
	st, err := procStartTime(pid)
	if err != nil || st != start {
		unix.Close(fd)
		return nil, os.ErrProcessDone
	}
	return &process{pid: pid, start: start, pidfd: fd, done: make(chan struct{})}, nil
}

// kill sends SIGKILL through the pidfd. A process that already exited is
// not an error. A jailed VMM's volt-vmm is killed, once known, and its
// supervisor then exits by itself after removing the jail's cgroups;
// before that the supervisor is killed, and the jail's process follows it
// (its parent-death signal is SIGKILL).
func (p *process) kill() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	fd, pid := p.pidfd, p.pid
	if p.vmm != nil {
		fd, pid = p.vmm.fd, p.vmm.pid
	}
	err := unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0)
	if err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("kill VMM %d: %w", pid, err)
	}
	return nil
}

// killSupervisor kills a jailed VMM's supervisor itself (the last resort
// when its VMM is gone and it still runs).
func (p *process) killSupervisor() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.closed {
		unix.PidfdSendSignal(p.pidfd, unix.SIGKILL, nil, 0)
	}
}

// wait blocks until the process exits, reaps it if it is ours, records how
// it ended, closes the pidfd and closes done. Exactly one goroutine calls it.
func (p *process) wait() {
	var msg string
	if p.cmd != nil {
		err := p.cmd.Wait()
		msg = exitMessage(p.cmd.ProcessState, err)
		if p.jailed {
			msg = jailedExitMessage(p.cmd.ProcessState, msg)
		}
	} else {
		// Not our child: wait for the pidfd to become readable (the
		// process exited); whoever its parent is reaps it.
		for {
			fds := []unix.PollFd{{Fd: int32(p.pidfd), Events: unix.POLLIN}}
			n, err := unix.Poll(fds, -1)
			if err == nil && n > 0 {
				break
			}
			if err != nil && !errors.Is(err, unix.EINTR) {
				msg = "poll pidfd: " + err.Error()
				break
			}
		}
		if msg == "" {
			msg = "exited (adopted: status unknown)"
		}
	}
	p.mu.Lock()
	vmm := p.vmm
	p.mu.Unlock()
	if vmm != nil {
		// A supervisor that was killed leaves volt-vmm to its
		// parent-death signal: nothing of the VM (its uid, its
		// chroot) is given back before volt-vmm is gone too.
		reapRef(vmm, 5*time.Second)
	}
	p.mu.Lock()
	p.exitMsg = msg
	p.closed = true
	unix.Close(p.pidfd)
	if p.vmm != nil {
		unix.Close(p.vmm.fd)
	}
	p.mu.Unlock()
	close(p.done)
}

// reapRef kills r and waits, up to limit, until it has exited.
func reapRef(r *pidRef, limit time.Duration) {
	deadline := time.Now().Add(limit)
	for {
		fds := []unix.PollFd{{Fd: int32(r.fd), Events: unix.POLLIN}}
		if n, err := unix.Poll(fds, 0); err == nil && n > 0 {
			return
		}
		unix.PidfdSendSignal(r.fd, unix.SIGKILL, nil, 0)
		if time.Now().After(deadline) {
			return
		}
		fds = []unix.PollFd{{Fd: int32(r.fd), Events: unix.POLLIN}}
		unix.Poll(fds, 100)
	}
}

// hasExited polls the pidfd without blocking: true once the process has
// exited (whether or not it was reaped yet).
func (p *process) hasExited() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return true
	}
	fds := []unix.PollFd{{Fd: int32(p.pidfd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 0)
	return err == nil && n > 0
}

func (p *process) exited() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exitMsg
}

// jailedExitMessage says how a jailed volt-vmm ended from its supervisor's
// status, which is volt-vmm's, or 128+N for signal N.
func jailedExitMessage(ps *os.ProcessState, msg string) string {
	if ps == nil || !ps.Exited() {
		return msg + " (volt-jailer)"
	}
	if c := ps.ExitCode(); c > 128 && c < 128+65 {
		return "signal: " + unix.Signal(c-128).String()
	}
	return msg
}

func exitMessage(ps *os.ProcessState, err error) string {
	if ps == nil {
		return fmt.Sprintf("wait: %v", err)
	}
	return ps.String() // "exit status 4", "signal: killed"
}

// procStartTime returns field 22 of /proc/PID/stat (starttime, in clock
// ticks since boot).
func procStartTime(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, fmt.Errorf("read /proc/%d/stat: %w", pid, err)
	}
	// comm (field 2) is in parentheses and may hold anything: split
	// after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no ')'", pid)
	}
	fields := strings.Fields(string(b[i+1:]))
	// fields[0] is field 3 (state); starttime is field 22.
	if len(fields) < 20 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields after comm", pid, len(fields))
	}
	v, err := strconv.ParseUint(fields[19], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("/proc/%d/stat starttime: %w", pid, err)
	}
	return v, nil
}

// strayVMMs scans /proc for volt-vmm processes whose --api-sock lies under
// dir: VMMs a previous daemon started and whose record is missing or
// unreadable (it was killed between the start and the record).
func strayVMMs(dir string) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	prefix := strings.TrimSuffix(dir, "/") + "/"
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		for i, a := range args {
			if a == "--api-sock" && i+1 < len(args) && strings.HasPrefix(args[i+1], prefix) {
				pids = append(pids, pid)
				break
			}
			if strings.HasPrefix(a, "--api-sock="+prefix) {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

// killAndWait kills an adopted or stray process and waits (bounded) until
// it is gone.
func killAndWait(p *process, limit time.Duration) error {
	if err := p.kill(); err != nil {
		return err
	}
	go p.wait()
	select {
	case <-p.done:
		return nil
	case <-time.After(limit):
		return fmt.Errorf("VMM %d still alive %v after SIGKILL", p.pid, limit)
	}
}
