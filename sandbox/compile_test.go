package sandbox

import (
	"encoding/binary"
	"fmt"
	"testing"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

const (
	auditArchX86_64 = 0xc000003e
	auditArchI386   = 0x40000003
	x32Bit          = 0x40000000

	retKillProcess = unix.SECCOMP_RET_KILL_PROCESS
	retTrap        = unix.SECCOMP_RET_TRAP
	retAllow       = unix.SECCOMP_RET_ALLOW
	retErrnoENOSYS = unix.SECCOMP_RET_ERRNO | uint32(unix.ENOSYS)
)

const testPID = 4242

// seccompData lays out struct seccomp_data (nr, arch,
// instruction_pointer, args[6]) for x/net/bpf's interpreter. The kernel
// loads each 32-bit word in the CPU's order (little-endian here: an
// argument's low half first), while the interpreter reads words in network
// order, so every word is stored big-endian at its little-endian place.
func seccompData(nr, arch uint32, args ...uint64) []byte {
	b := make([]byte, 64)
	binary.BigEndian.PutUint32(b[0:], nr)
	binary.BigEndian.PutUint32(b[4:], arch)
	ip := uint64(0x401000)
	binary.BigEndian.PutUint32(b[8:], uint32(ip))
	binary.BigEndian.PutUint32(b[12:], uint32(ip>>32))
	for i, a := range args {
		binary.BigEndian.PutUint32(b[16+8*i:], uint32(a))
		binary.BigEndian.PutUint32(b[20+8*i:], uint32(a>>32))
	}
	return b
}

// runFilter runs a compiled filter in x/net/bpf's interpreter, as the
// kernel would on one system call.
func runFilter(t *testing.T, prog []bpf.Instruction, data []byte) uint32 {
	t.Helper()
	vm, err := bpf.NewVM(prog)
	if err != nil {
		t.Fatalf("load the filter into the interpreter: %v", err)
	}
	out, err := vm.Run(data)
	if err != nil {
		t.Fatalf("run the filter: %v", err)
	}
	return uint32(out)
}

func compiled(t *testing.T, r Role, o Options) []bpf.Instruction {
	t.Helper()
	prog, err := Compile(r, o, testPID)
	if err != nil {
		t.Fatal(err)
	}
	return prog
}

func nr(t *testing.T, name string) uint32 {
	t.Helper()
	n, ok := SyscallNumber(name)
	if !ok {
		t.Fatalf("no system call %q", name)
	}
	return uint32(n)
}

// satisfying returns arguments that satisfy match m.
func satisfying(m Match) []uint64 {
	args := make([]uint64, 6)
	for _, c := range m {
		v := c.Value
		if v == SelfPID {
			v = testPID
		}
		switch c.Op {
		case Eq, Le:
			args[c.Arg] = v
		case NoBits:
			args[c.Arg] = 0
		}
	}
	return args
}

// violating returns arguments that break every match of r (nil if the
// test cannot build them: the matches constrain different arguments).
func violating(r Rule) []uint64 {
	args := make([]uint64, 6)
	arg := -1
	for _, m := range r.Matches {
		if len(m) != 1 || (arg >= 0 && m[0].Arg != arg) {
			return nil
		}
		arg = m[0].Arg
	}
	c := r.Matches[0][0]
	switch c.Op {
	case NoBits:
		args[arg] = c.Value
	default:
		// One above the largest value any match takes.
		var top uint64
		for _, m := range r.Matches {
			v := m[0].Value
			if v == SelfPID {
				v = testPID
			}
			top = max(top, v)
		}
		args[arg] = top + 1
	}
	return args
}

// TestEveryRoleAllowsExactlyItsTable runs every x86-64 system call number
// through every role's filter: a call in the table is allowed (with
// arguments that satisfy its conditions, and killed with arguments that
// break them), every other call kills the process.
func TestEveryRoleAllowsExactlyItsTable(t *testing.T) {
	for _, r := range Roles() {
		t.Run(string(r), func(t *testing.T) {
			table, err := TableFor(r)
			if err != nil {
				t.Fatal(err)
			}
			prog := compiled(t, r, DefaultOptions)
			for n := 0; n < 500; n++ {
				name := SyscallName(n)
				rule, inTable := table.Rule(name)
				if !inTable {
					if got := runFilter(t, prog, seccompData(uint32(n), auditArchX86_64)); got != retKillProcess {
						t.Errorf("%s (%d) is not in the table but the filter returns %#x, want kill", name, n, got)
					}
					continue
				}
				if len(rule.Matches) == 0 {
					if got := runFilter(t, prog, seccompData(uint32(n), auditArchX86_64, 1, 2, 3, 4, 5, 6)); got != retAllow {
						t.Errorf("%s: filter returns %#x, want allow", name, got)
					}
					continue
				}
				for i, m := range rule.Matches {
					if got := runFilter(t, prog, seccompData(uint32(n), auditArchX86_64, satisfying(m)...)); got != retAllow {
						t.Errorf("%s with match %d %v: filter returns %#x, want allow", name, i, m, got)
					}
				}
				if bad := violating(rule); bad != nil {
					if got := runFilter(t, prog, seccompData(uint32(n), auditArchX86_64, bad...)); got != retKillProcess {
						t.Errorf("%s with arguments %#x that break every condition: filter returns %#x, want kill", name, bad, got)
					}
				}
			}
		})
	}
}

// vector is one system call and what a role's filter must answer.
type vector struct {
	syscall string
	args    []uint64
	want    uint32
}

func TestRoleVectors(t *testing.T) {
	const pidOther = testPID + 1
	fork := uint64(unix.SIGCHLD)
	tables := map[Role][]vector{
		RoleVMM: {
			{"ioctl", []uint64{5, uint64(kvmRun.Number)}, retAllow},
			{"ioctl", []uint64{5, uint64(kvmGetDirtyLog.Number)}, retAllow},
			{"ioctl", []uint64{5, uint64(tunSetOffload.Number)}, retAllow},
			{"ioctl", []uint64{5, uint64(kvmCreateVM.Number)}, retKillProcess},
			{"ioctl", []uint64{5, uint64(kvmCreateVCPU.Number)}, retKillProcess},
			{"ioctl", []uint64{5, uint64(kvmSetUserMemoryRegion.Number)}, retKillProcess},
			{"ioctl", []uint64{5, uint64(kvmSetRegs.Number)}, retKillProcess},
			{"ioctl", []uint64{5, uint64(tunSetIff.Number)}, retKillProcess},
			{"ioctl", []uint64{0, uint64(terminalGetAttrs.Number)}, retKillProcess},
			// The request with garbage above bit 31: the kernel would use
			// the low half; the filter refuses rather than guess.
			{"ioctl", []uint64{5, 1<<32 | uint64(kvmRun.Number)}, retKillProcess},
			{"mmap", []uint64{0, 4096, unix.PROT_READ | unix.PROT_WRITE, unix.MAP_PRIVATE | unix.MAP_ANONYMOUS}, retAllow},
			{"mmap", []uint64{0, 4096, unix.PROT_READ | unix.PROT_EXEC, unix.MAP_PRIVATE | unix.MAP_ANONYMOUS}, retKillProcess},
			{"mprotect", []uint64{0, 4096, unix.PROT_READ | unix.PROT_EXEC}, retKillProcess},
			{"socket", []uint64{unix.AF_UNIX, unix.SOCK_STREAM}, retAllow},
			{"socket", []uint64{unix.AF_INET, unix.SOCK_STREAM}, retKillProcess},
			{"socket", []uint64{unix.AF_NETLINK, unix.SOCK_RAW}, retKillProcess},
			{"socket", []uint64{unix.AF_VSOCK, unix.SOCK_STREAM}, retKillProcess},
			{"clone", []uint64{goThreadFlags}, retAllow},
			{"clone", []uint64{fork}, retKillProcess},
			{"clone", []uint64{goThreadFlags | unix.CLONE_NEWUSER}, retKillProcess},
			{"clone3", nil, retKillProcess},
			{"tgkill", []uint64{testPID, 7, uint64(unix.SIGURG)}, retAllow},
			{"tgkill", []uint64{pidOther, 7, uint64(unix.SIGKILL)}, retKillProcess},
			{"kill", []uint64{pidOther, uint64(unix.SIGKILL)}, retKillProcess},
			{"execve", nil, retKillProcess},
			{"execveat", nil, retKillProcess},
			{"fork", nil, retKillProcess},
			{"vfork", nil, retKillProcess},
			{"ptrace", nil, retKillProcess},
			{"mount", nil, retKillProcess},
			{"umount2", nil, retKillProcess},
			{"pivot_root", nil, retKillProcess},
			{"chroot", nil, retKillProcess},
			{"unshare", nil, retKillProcess},
			{"setns", nil, retKillProcess},
			{"setuid", nil, retKillProcess},
			{"setresuid", nil, retKillProcess},
			{"capset", nil, retKillProcess},
			{"prctl", nil, retKillProcess},
			{"seccomp", []uint64{unix.SECCOMP_SET_MODE_FILTER, 0}, retAllow},
			{"seccomp", []uint64{unix.SECCOMP_SET_MODE_FILTER, unix.SECCOMP_FILTER_FLAG_TSYNC}, retKillProcess},
			{"seccomp", []uint64{unix.SECCOMP_SET_MODE_FILTER, unix.SECCOMP_FILTER_FLAG_NEW_LISTENER}, retKillProcess},
			{"seccomp", []uint64{unix.SECCOMP_SET_MODE_STRICT, 0}, retKillProcess},
			{"bpf", nil, retKillProcess},
			{"perf_event_open", nil, retKillProcess},
			{"init_module", nil, retKillProcess},
			{"keyctl", nil, retKillProcess},
			{"process_vm_writev", nil, retKillProcess},
			{"open_by_handle_at", nil, retKillProcess},
			{"bind", nil, retKillProcess},
			{"listen", nil, retKillProcess},
			{"mknodat", nil, retKillProcess},
			{"chmod", nil, retKillProcess},
			{"io_uring_setup", nil, retKillProcess},
			{"userfaultfd", nil, retKillProcess},
			{"landlock_restrict_self", nil, retKillProcess},
			{"openat", nil, retAllow},
			{"renameat", nil, retAllow},
			{"accept4", nil, retAllow},
		},
		RoleVCPU: {
			{"ioctl", []uint64{9, uint64(kvmRun.Number)}, retAllow},
			{"ioctl", []uint64{9, uint64(kvmIRQLine.Number)}, retAllow},
			{"ioctl", []uint64{9, uint64(kvmGetXSave.Number)}, retAllow},
			{"ioctl", []uint64{9, uint64(tunSetOffload.Number)}, retAllow},
			{"ioctl", []uint64{9, uint64(kvmGetDirtyLog.Number)}, retKillProcess},
			{"ioctl", []uint64{9, uint64(kvmSetMSRs.Number)}, retKillProcess},
			{"ioctl", []uint64{9, uint64(kvmSetCPUID2.Number)}, retKillProcess},
			{"ioctl", []uint64{9, uint64(kvmIRQFD.Number)}, retKillProcess},
			{"write", []uint64{1}, retAllow},
			{"tgkill", []uint64{testPID, 8, uint64(unix.SIGURG)}, retAllow},
			{"tgkill", []uint64{pidOther, 8, uint64(unix.SIGURG)}, retKillProcess},
			{"mmap", []uint64{0, 4096, unix.PROT_READ | unix.PROT_WRITE | unix.PROT_EXEC}, retKillProcess},
			{"openat", nil, retKillProcess},
			{"socket", []uint64{unix.AF_UNIX}, retKillProcess},
			{"clone", []uint64{goThreadFlags}, retKillProcess},
			{"read", nil, retKillProcess},
			{"epoll_pwait", []uint64{3, 0, 128, 0}, retAllow},
			{"epoll_pwait", []uint64{3, 0, 128, 10}, retKillProcess},
			{"epoll_pwait", []uint64{3, 0, 128, ^uint64(0)}, retKillProcess},
			{"seccomp", []uint64{unix.SECCOMP_SET_MODE_FILTER, 0}, retKillProcess},
		},
		RoleAPI: {
			{"accept4", nil, retAllow},
			{"read", nil, retAllow},
			{"write", nil, retAllow},
			{"ioctl", []uint64{3, uint64(kvmRun.Number)}, retKillProcess},
			{"openat", nil, retKillProcess},
			{"socket", []uint64{unix.AF_UNIX}, retKillProcess},
			{"connect", nil, retKillProcess},
			{"clone", []uint64{goThreadFlags}, retKillProcess},
		},
		RoleBlock: {
			{"pread64", nil, retAllow},
			{"pwritev", nil, retAllow},
			{"fdatasync", nil, retAllow},
			{"fallocate", nil, retAllow},
			{"openat", nil, retAllow}, // a CAS volume's chunks
			{"renameat", nil, retAllow},
			{"ioctl", []uint64{3, uint64(kvmRun.Number)}, retKillProcess},
			{"accept4", nil, retKillProcess},
			{"socket", []uint64{unix.AF_UNIX}, retKillProcess},
			{"connect", nil, retKillProcess},
			{"linkat", nil, retKillProcess},
		},
		RoleNet: {
			{"read", nil, retAllow},
			{"writev", nil, retAllow},
			{"ioctl", []uint64{3, uint64(tunSetOffload.Number)}, retAllow},
			{"ioctl", []uint64{3, uint64(tunSetIff.Number)}, retKillProcess},
			{"ioctl", []uint64{3, uint64(kvmRun.Number)}, retKillProcess},
			{"socket", []uint64{unix.AF_INET}, retKillProcess},
			{"pwrite64", nil, retKillProcess},
		},
		RoleVsock: {
			{"epoll_pwait", []uint64{3, 0, 128, ^uint64(0)}, retAllow},
			{"socket", []uint64{unix.AF_UNIX, unix.SOCK_STREAM}, retAllow},
			{"socket", []uint64{unix.AF_INET, unix.SOCK_STREAM}, retKillProcess},
			{"connect", nil, retAllow},
			{"bind", nil, retKillProcess},
			{"ioctl", []uint64{3, uint64(kvmRun.Number)}, retKillProcess},
			{"openat", nil, retKillProcess},
		},
		RoleRNG: {
			{"getrandom", nil, retAllow},
			{"openat", nil, retKillProcess},
			{"ioctl", []uint64{3, uint64(kvmRun.Number)}, retKillProcess},
		},
	}
	for _, r := range Roles() {
		vs, ok := tables[r]
		if !ok {
			t.Errorf("role %s has no test vectors", r)
			continue
		}
		t.Run(string(r), func(t *testing.T) {
			prog := compiled(t, r, DefaultOptions)
			for _, v := range vs {
				got := runFilter(t, prog, seccompData(nr(t, v.syscall), auditArchX86_64, v.args...))
				if got != v.want {
					t.Errorf("%s(%#x) = %#x, want %#x", v.syscall, v.args, got, v.want)
				}
			}
		})
	}
}

// TestOtherABIsAreRefused: a 32-bit (int 0x80) call is matched against its
// own numbering by the kernel, so a filter written for x86-64 numbers must
// refuse other architectures outright, and x32 numbers too.
func TestOtherABIsAreRefused(t *testing.T) {
	for _, r := range Roles() {
		prog := compiled(t, r, DefaultOptions)
		// 3 is close on i386 but read... on neither: any number would do.
		if got := runFilter(t, prog, seccompData(3, auditArchI386)); got != retKillProcess {
			t.Errorf("%s: an i386 call returns %#x, want kill", r, got)
		}
		if got := runFilter(t, prog, seccompData(x32Bit|nr(t, "write"), auditArchX86_64)); got != retErrnoENOSYS {
			t.Errorf("%s: an x32 write returns %#x, want ENOSYS", r, got)
		}
	}
}

func TestLevelsAndActions(t *testing.T) {
	execNr := nr(t, "execve")
	exec := seccompData(execNr, auditArchX86_64)
	if got := runFilter(t, compiled(t, RoleVMM, Options{Level: LevelArgs, Action: ActionTrap}), exec); got != retTrap {
		t.Errorf("trap action: execve returns %#x, want SECCOMP_RET_TRAP", got)
	}
	// Level 1 checks numbers only: an executable mapping passes, an
	// unknown call still dies.
	l1 := compiled(t, RoleVMM, Options{Level: LevelSyscalls})
	if got := runFilter(t, l1, seccompData(nr(t, "mmap"), auditArchX86_64, 0, 4096, unix.PROT_EXEC)); got != retAllow {
		t.Errorf("level 1: mmap with PROT_EXEC returns %#x, want allow (no argument checks)", got)
	}
	if got := runFilter(t, l1, exec); got != retKillProcess {
		t.Errorf("level 1: execve returns %#x, want kill", got)
	}
	if _, err := Compile(RoleVMM, Options{Level: LevelOff}, 1); err == nil {
		t.Error("Compile at level 0 succeeded; there is no filter to compile")
	}
}

// TestThreadTablesAreWithinTheProcessTable: a thread filter stacks on the
// process filter, so anything it allows that the process filter refuses
// would kill the process anyway; such a rule is a mistake in the tables.
func TestThreadTablesAreWithinTheProcessTable(t *testing.T) {
	vmm, _ := TableFor(RoleVMM)
	for _, r := range ThreadRoles() {
		table, _ := TableFor(r)
		for _, rule := range table {
			base, ok := vmm.Rule(rule.Syscall)
			if !ok {
				t.Errorf("%s allows %s, which the process filter refuses", r, rule.Syscall)
				continue
			}
			if len(base.Matches) == 0 {
				continue
			}
			if len(rule.Matches) == 0 {
				t.Errorf("%s allows %s with any arguments, the process filter only some", r, rule.Syscall)
				continue
			}
			for _, m := range rule.Matches {
				if !containsMatch(base.Matches, m) {
					t.Errorf("%s allows %s with %v, which the process filter refuses", r, rule.Syscall, m)
				}
			}
		}
	}
}

func TestTablesAreValid(t *testing.T) {
	for _, r := range Roles() {
		table, err := TableFor(r)
		if err != nil {
			t.Fatal(err)
		}
		if err := table.Validate(); err != nil {
			t.Errorf("%s: %v", r, err)
		}
	}
	bad := Table{{Syscall: "no_such_call"}, {Syscall: "read"}, {Syscall: "read"},
		{Syscall: "ioctl", Matches: []Match{{}}}, {Syscall: "mmap", Matches: []Match{{{Arg: 6}}}}}
	err := bad.Validate()
	if err == nil {
		t.Fatal("a table with an unknown call, a duplicate, an empty match and argument 6 is valid")
	}
	for _, want := range []string{"no_such_call", "read listed twice", "empty match", "argument 6"} {
		if !contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func contains(s, sub string) bool {
	return len(sub) == 0 || len(s) >= len(sub) && (s[:len(sub)] == sub || contains(s[1:], sub))
}

// TestIoctlNumbersMatchTheKernelHeaders checks the encoding against values
// published in <linux/kvm.h> users (strace's decoder tables, QEMU).
func TestIoctlNumbersMatchTheKernelHeaders(t *testing.T) {
	for _, c := range []struct {
		q    Ioctl
		want uint32
	}{
		{kvmRun, 0xae80},
		{kvmCreateVM, 0xae01},
		{kvmCreateVCPU, 0xae41},
		{kvmSetUserMemoryRegion, 0x4020ae46},
		{kvmIRQLine, 0x4008ae61},
		{kvmGetRegs, 0x8090ae81},
		{kvmSetRegs, 0x4090ae82},
		{kvmGetSregs, 0x8138ae83},
		{kvmGetMSRs, 0xc008ae88},
		{kvmGetLAPIC, 0x8400ae8e},
		{kvmGetXSave, 0x9000aea4},
		{kvmGetIRQChip, 0xc208ae62},
		{kvmGetClock, 0x8030ae7c},
		{kvmIOEventFD, 0x4040ae79},
		{kvmIRQFD, 0x4020ae76},
		{kvmGetDirtyLog, 0x4010ae42},
		{kvmKVMClockCtrl, 0xaead},
	} {
		if c.q.Number != c.want {
			t.Errorf("%s = %#x, want %#x", c.q.Name, c.q.Number, c.want)
		}
	}
}

// TestSyscallCountsStayWithinBudget keeps the tables from growing. The
// budgets are Firecracker's counts (distinct system calls in its x86_64
// musl filters, resources/seccomp/x86_64-unknown-linux-musl.json: vmm 50,
// api 31, vcpu 27), except that the process filter may have one more:
// seccomp itself, restricted to a thread installing its own flagless
// filter, which Go needs because the base filter must be on every thread
// (TSYNC) before a thread can narrow its own. Firecracker's threads each
// install their one filter and need no such call. The process filter has
// five more still, for what Firecracker does not do in its VMM: snapshots
// written into a CAS store (mkdirat for its fan-out directories, fchmod of
// read-only chunks, sync_file_range to start their write-back, fstat) and
// the data runs of a restored VM's memory file (lseek SEEK_DATA/SEEK_HOLE).
func TestSyscallCountsStayWithinBudget(t *testing.T) {
	budget := []struct {
		role        Role
		firecracker int
		max         int
	}{{RoleVMM, 50, 56}, {RoleAPI, 31, 30}, {RoleVCPU, 27, 26}}
	for _, b := range budget {
		table, _ := TableFor(b.role)
		n := len(table.Syscalls())
		t.Logf("%-5s volt %d, firecracker %d", b.role, n, b.firecracker)
		if n > b.max {
			t.Errorf("%s allows %d system calls, more than its budget of %d (Firecracker: %d)", b.role, n, b.max, b.firecracker)
		}
	}
}

func ExampleCompile() {
	prog, err := Compile(RoleRNG, DefaultOptions, 1)
	if err != nil {
		panic(err)
	}
	fmt.Println(len(prog) > 0)
	// Output: true
}
