package sandbox

import (
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

// The rule tables. They were found by running volt-vmm under
// `strace -f` (boot of the probe, pause, snapshot, resume, power-off, and a
// restore; see docs/security.md) and by reading the device code the strace
// run did not reach yet, and they are checked by the interpreter tests and
// the victim processes in this package.
//
// They describe a VM that is already built: filters go on after the VM was
// created or restored and before the guest runs its first instruction, so
// nothing here can open /dev/kvm, create a VM, a vCPU or a memory slot,
// set a vCPU's registers, exec, fork, mount, or change credentials.

// goThreadFlags are the clone(2) flags of the Go runtime's new threads
// (runtime.newosproc; its assembly adds CLONE_SETTLS on amd64, as strace
// shows); any other clone is a fork or a new namespace and is refused.
const goThreadFlags = unix.CLONE_VM | unix.CLONE_FS | unix.CLONE_FILES | unix.CLONE_SIGHAND |
	unix.CLONE_SYSVSEM | unix.CLONE_THREAD | unix.CLONE_SETTLS

// goRuntime is what the Go runtime may do on any thread, whatever the
// goroutine locked to it: sleep and wake (futex, nanosleep, sched_yield),
// signals for preemption and vCPU kicks (tgkill to our own threads only,
// rt_sigreturn, rt_sigprocmask, sigaltstack at thread start and end), heap
// growth and scavenging (mmap without PROT_EXEC, munmap, madvise), the
// netpoller's wake-up write and the non-blocking netpoll of whichever
// thread restarts the world after a stop (runtime.GC, or a goroutine's
// own GC assist finishing a cycle: any thread that allocates), crash
// output, and the thread's or process's exit.
var goRuntime = Table{
	{Syscall: "futex"},
	{Syscall: "nanosleep"},
	{Syscall: "sched_yield"},
	{Syscall: "gettid"},
	{Syscall: "getpid"},
	{Syscall: "tgkill", Matches: []Match{{{Arg: 0, Op: Eq, Value: SelfPID}}}, Names: []string{"own threads"}},
	{Syscall: "rt_sigreturn"},
	{Syscall: "rt_sigprocmask"},
	{Syscall: "sigaltstack"},
	{Syscall: "mmap", Matches: []Match{{{Arg: 2, Op: NoBits, Value: unix.PROT_EXEC}}}, Names: []string{"not executable"}},
	{Syscall: "munmap"},
	{Syscall: "madvise"},
	{Syscall: "write"},
	{Syscall: "epoll_pwait", Matches: []Match{{{Arg: 3, Op: Eq, Value: 0}}}, Names: []string{"timeout 0 (no wait)"}},
	{Syscall: "clock_gettime"},
	{Syscall: "restart_syscall"},
	{Syscall: "exit"},
	{Syscall: "exit_group"},
}

// vmmOnly is what the rest of the process does once the VM runs: thread
// filters stacked on this one (seccomp), Go's
// scheduler threads (clone of threads only, the netpoller, GOMAXPROCS
// updates from the cgroup files), the API server (accept on its Unix
// socket, requests, responses, removing the socket at exit), snapshots
// (O_TMPFILE files linked and renamed into place, page map reads, syncs,
// the temporary-file sweep), console input, the devices' workers and
// vsock's host sockets (AF_UNIX only), and the KVM requests of a running
// VM.
func vmmOnly() Table {
	return Table{
		// ApplyThread installs a thread's filter under this one: a filter
		// without flags (no TSYNC, no listener), which can only take rights
		// away from the calling thread.
		{Syscall: "seccomp", Matches: []Match{{{Arg: 0, Op: Eq, Value: unix.SECCOMP_SET_MODE_FILTER}, {Arg: 1, Op: Eq, Value: 0}}}, Names: []string{"a thread's own filter"}},
		{Syscall: "clone", Matches: []Match{{{Arg: 0, Op: Eq, Value: goThreadFlags}}}, Names: []string{"threads only"}},
		{Syscall: "rt_sigaction"},
		{Syscall: "sched_getaffinity"},
		{Syscall: "getrandom"},
		{Syscall: "epoll_pwait"},
		{Syscall: "epoll_ctl"},
		{Syscall: "read"},
		{Syscall: "writev"},
		{Syscall: "pread64"},
		{Syscall: "pwrite64"},
		{Syscall: "preadv"},
		{Syscall: "pwritev"},
		{Syscall: "openat"},
		{Syscall: "close"},
		{Syscall: "newfstatat"},
		// Snapshots into a CAS store make its directories, mark chunks
		// read-only, start their write-back early and stat what they
		// wrote; a snapshot of a restored VM seeks its memory file's data
		// runs (SEEK_DATA, SEEK_HOLE). Found by strace of those flows.
		{Syscall: "fstat"},
		{Syscall: "mkdirat"},
		{Syscall: "fchmod"},
		{Syscall: "sync_file_range"},
		{Syscall: "lseek"},
		{Syscall: "getdents64"},
		{Syscall: "fcntl"},
		{Syscall: "flock"},
		{Syscall: "fsync"},
		{Syscall: "fdatasync"},
		{Syscall: "ftruncate"},
		{Syscall: "fallocate"},
		{Syscall: "linkat"},
		{Syscall: "renameat"},
		{Syscall: "unlinkat"},
		{Syscall: "accept4"},
		{Syscall: "getsockname"},
		argIn("socket", 0, unix.AF_UNIX),
		{Syscall: "connect"},
		{Syscall: "sendmsg"},
		{Syscall: "recvfrom"},
		{Syscall: "shutdown"},
		ioctls(append(append(append([]Ioctl(nil), kvmVCPUIoctls...), kvmVMIoctls...), tunIoctls...)...),
	}
}

// vcpuOnly is what a vCPU thread adds to the runtime's needs: KVM_RUN and
// the state reads, devices' reactions to the guest's port and MMIO
// accesses (interrupts through KVM_IRQ_LINE or an irqfd write, the TAP's
// offloads on virtio-net activation, closing a device's connections on its
// reset), and kicking the other vCPUs (tgkill,
// in goRuntime).
func vcpuOnly() Table {
	return Table{
		ioctls(append(append([]Ioctl(nil), kvmVCPUIoctls...), tunIoctls...)...),
		{Syscall: "close"},
	}
}

// apiOnly is a thread of the API server (vmm/api/microhttp): the accept
// loop (accept4, which sets non-blocking and close-on-exec itself, then
// the poller's registration and the local address) or one connection's
// (reads; writes and the poller's waits are the runtime's; its poller
// registration removed and the descriptor closed at the end). The
// requests themselves are carried out by an ordinary goroutine it hands
// them to, under RoleVMM. Checked with strace -f of a confined volt-vmm
// under a 10 s load of fresh and keep-alive connections, bodies of 40 KiB,
// malformed requests, pause and resume, with GOGC=2: after its filter a
// thread made only these calls and the runtime's (futex, write,
// sched_yield, epoll_pwait with timeout 0, tgkill, getpid, rt_sigreturn,
// and rt_sigprocmask, sigaltstack and exit as the thread ended).
func apiOnly() Table {
	return Table{
		{Syscall: "accept4"},
		{Syscall: "getsockname"},
		{Syscall: "epoll_ctl"},
		{Syscall: "read"},
		{Syscall: "close"},
	}
}

// blockOnly is a virtio-blk worker: requests on the backing file (vectored
// and plain, flushes, discard and write-zeroes through fallocate) and its
// queue notifications through the Go poller.
func blockOnly() Table {
	return Table{
		{Syscall: "pread64"},
		{Syscall: "pwrite64"},
		{Syscall: "preadv"},
		{Syscall: "pwritev"},
		{Syscall: "fdatasync"},
		{Syscall: "fsync"},
		{Syscall: "fallocate"},
		{Syscall: "read"},
		// A CAS volume's backend opens its base's chunks as the guest
		// first reads them, and on a flush writes its map to map.tmp,
		// renames it over map and fsyncs the directory (found by strace
		// of a probe writing and flushing a volume disk).
		{Syscall: "openat"},
		{Syscall: "close"},
		{Syscall: "fcntl"},
		{Syscall: "fstat"},
		{Syscall: "newfstatat"},
		{Syscall: "epoll_ctl"},
		{Syscall: "renameat"},
		{Syscall: "unlinkat"},
	}
}

// netOnly is a virtio-net worker: frames from and to the TAP (a vectored
// write per frame, a read per received frame), and the TAP's offloads
// when the device resets.
func netOnly() Table {
	return Table{
		{Syscall: "read"},
		{Syscall: "writev"},
		{Syscall: "epoll_ctl"},
		ioctls(tunIoctls...),
	}
}

// vsockOnly is the virtio-vsock worker: its epoll set over the host
// listener, the connections and its kick eventfd; host-initiated
// connections accepted and peeked at for CONNECT, guest-initiated ones
// dialled to uds_path_PORT (AF_UNIX only), data both ways, half-closes, and
// the check that the listener's path is still ours.
func vsockOnly() Table {
	return Table{
		{Syscall: "epoll_pwait"},
		{Syscall: "epoll_ctl"},
		{Syscall: "read"},
		{Syscall: "accept4"},
		argIn("socket", 0, unix.AF_UNIX),
		{Syscall: "connect"},
		{Syscall: "sendmsg"},
		{Syscall: "recvfrom"},
		{Syscall: "shutdown"},
		{Syscall: "close"},
		{Syscall: "newfstatat"},
	}
}

// rngOnly is the virtio-rng worker: entropy and its interrupt.
func rngOnly() Table {
	return Table{
		{Syscall: "getrandom"},
		{Syscall: "read"},
	}
}

// roleTables are each role's own rules; TableFor merges one with the
// runtime's on first use, not at package initialisation: every volt-vmm
// links this package, one that prints its version or runs without seccomp
// needs no table, and one that does needs two (merging all seven at
// initialisation took 0.12-0.33 ms and 214 allocations of every start).
var roleTables = map[Role]func() Table{
	RoleVMM:   vmmOnly,
	RoleVCPU:  vcpuOnly,
	RoleAPI:   apiOnly,
	RoleBlock: blockOnly,
	RoleNet:   netOnly,
	RoleVsock: vsockOnly,
	RoleRNG:   rngOnly,
}

var merged struct {
	mu sync.Mutex
	m  map[Role]Table
}

// TableFor returns a role's rule table.
func TableFor(r Role) (Table, error) {
	merged.mu.Lock()
	defer merged.mu.Unlock()
	if t, ok := merged.m[r]; ok {
		return t, nil
	}
	own, ok := roleTables[r]
	if !ok {
		return nil, fmt.Errorf("no rule table for role %q", r)
	}
	if merged.m == nil {
		merged.m = map[Role]Table{}
	}
	t := merge(goRuntime, own())
	merged.m[r] = t
	return t, nil
}
