package sandbox

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"

	seccomp "github.com/elastic/go-seccomp-bpf"
	"github.com/elastic/go-seccomp-bpf/arch"
	"golang.org/x/net/bpf"
)

// Level is how strict the seccomp filters are (volt-vmm's --seccomp-level,
// as Firecracker's was).
type Level int

const (
	// LevelOff installs no filter: for debugging only.
	LevelOff Level = 0
	// LevelSyscalls checks system call numbers only.
	LevelSyscalls Level = 1
	// LevelArgs checks numbers and arguments (ioctl requests, mmap
	// protections, socket families, clone flags, tgkill's target): the
	// default.
	LevelArgs Level = 2
)

// ParseLevel reads "0", "1" or "2".
func ParseLevel(s string) (Level, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < int(LevelOff) || n > int(LevelArgs) {
		return 0, fmt.Errorf("seccomp level %q: want 0 (no filters, debugging only), 1 (system calls) or 2 (system calls and arguments)", s)
	}
	return Level(n), nil
}

// Action is what a forbidden system call gets.
type Action int

const (
	// ActionKill kills the whole process at once with SIGSYS
	// (SECCOMP_RET_KILL_PROCESS): no handler runs, so a compromised
	// process cannot catch it. The kernel logs the system call number
	// through audit (SeccompKills reads it back).
	ActionKill Action = iota
	// ActionTrap delivers SIGSYS to the thread (SECCOMP_RET_TRAP); the Go
	// runtime then crashes with "SIGSYS: bad system call" and the
	// goroutine's stack, which names the Go function that made the call.
	// For debugging a rule table; the call is never executed either way.
	ActionTrap
)

func (a Action) String() string {
	if a == ActionTrap {
		return "trap"
	}
	return "kill"
}

// Options choose a filter's strictness and action.
type Options struct {
	Level  Level
	Action Action
}

// DefaultOptions are what volt-vmm should run with.
var DefaultOptions = Options{Level: LevelArgs, Action: ActionKill}

// policy turns a role's table into go-seccomp-bpf's policy. pid fills in
// SelfPID conditions.
func policy(r Role, o Options, pid int) (seccomp.Policy, error) {
	t, err := TableFor(r)
	if err != nil {
		return seccomp.Policy{}, err
	}
	if err := t.Validate(); err != nil {
		return seccomp.Policy{}, fmt.Errorf("role %s: %w", r, err)
	}
	def := seccomp.ActionKillProcess
	if o.Action == ActionTrap {
		def = seccomp.ActionTrap
	}
	allow := seccomp.SyscallGroup{Action: seccomp.ActionAllow}
	for _, rule := range t {
		if len(rule.Matches) == 0 || o.Level < LevelArgs {
			allow.Names = append(allow.Names, rule.Syscall)
			continue
		}
		for _, m := range rule.Matches {
			nc := seccomp.NameWithConditions{Name: rule.Syscall}
			for _, c := range m {
				v := c.Value
				if v == SelfPID {
					v = uint64(pid)
				}
				op, err := libOp(c.Op)
				if err != nil {
					return seccomp.Policy{}, fmt.Errorf("role %s: %s: %w", r, rule.Syscall, err)
				}
				nc.Conditions = append(nc.Conditions, seccomp.Condition{Argument: uint32(c.Arg), Operation: op, Value: v})
			}
			allow.NamesWithCondtions = append(allow.NamesWithCondtions, nc)
		}
	}
	return seccomp.Policy{DefaultAction: def, Syscalls: []seccomp.SyscallGroup{allow}}, nil
}

func libOp(o Op) (seccomp.Operation, error) {
	switch o {
	case Eq:
		return seccomp.Equal, nil
	case NoBits:
		return seccomp.BitsNotSet, nil
	case Le:
		return seccomp.LessOrEqual, nil
	}
	return "", fmt.Errorf("unknown operation %v", o)
}

// maxInstructions is the kernel's limit on one filter (BPF_MAXINSNS).
const maxInstructions = 4096

// Compile returns the BPF program of a role's filter, as it would be
// installed by a process whose PID is pid. A program of LevelOff is an
// error: there is nothing to compile.
func Compile(r Role, o Options, pid int) ([]bpf.Instruction, error) {
	if o.Level == LevelOff {
		return nil, fmt.Errorf("role %s: seccomp level 0 has no filter", r)
	}
	p, err := policy(r, o, pid)
	if err != nil {
		return nil, err
	}
	return assembleChecked(r, p)
}

// assembleChecked assembles a role's policy and checks that the program
// assembles to BPF and fits in one filter.
func assembleChecked(r Role, p seccomp.Policy) ([]bpf.Instruction, error) {
	prog, err := p.Assemble()
	if err != nil {
		return nil, fmt.Errorf("compile the %s filter: %w", r, err)
	}
	if len(prog) > maxInstructions {
		return nil, fmt.Errorf("the %s filter has %d instructions, more than the kernel's %d", r, len(prog), maxInstructions)
	}
	if _, err := bpf.Assemble(prog); err != nil {
		return nil, fmt.Errorf("assemble the %s filter: %w", r, err)
	}
	return prog, nil
}

// prepared holds this process's policies, one per role and options, each
// built once: by Prepare ahead of time, or else by the first ApplyProcess
// or ApplyThread that needs it. The process's PID, which fills tgkill's
// condition, never changes (a Go process does not fork without exec).
var prepared struct {
	mu sync.Mutex
	m  map[preparedKey]*preparedPolicy
}

type preparedKey struct {
	role Role
	opts Options
}

// preparedPolicy is one role's policy. Checking it (assembling it and
// counting its instructions) is kept apart: go-seccomp-bpf's LoadFilter
// assembles the policy itself and fails on a program the kernel would
// refuse, so an install checks only once it failed, to say why.
type preparedPolicy struct {
	role      Role
	once      sync.Once
	policy    seccomp.Policy
	err       error
	checkOnce sync.Once
	checkErr  error
}

// preparedFor returns role's policy for this process, building it on
// first use; concurrent callers of one role wait for one build.
func preparedFor(r Role, o Options) *preparedPolicy {
	k := preparedKey{r, o}
	prepared.mu.Lock()
	if prepared.m == nil {
		prepared.m = map[preparedKey]*preparedPolicy{}
	}
	e := prepared.m[k]
	if e == nil {
		e = &preparedPolicy{role: r}
		prepared.m[k] = e
	}
	prepared.mu.Unlock()
	e.once.Do(func() { e.policy, e.err = policy(r, o, os.Getpid()) })
	return e
}

// check assembles the policy and checks it against the kernel's limits,
// once.
func (e *preparedPolicy) check() error {
	e.checkOnce.Do(func() {
		if e.err == nil {
			_, e.checkErr = assembleChecked(e.role, e.policy)
		}
	})
	if e.err != nil {
		return e.err
	}
	return e.checkErr
}

// load installs the policy with filter's flags, explaining a failure by
// the check when the program itself is at fault.
func (e *preparedPolicy) load(f seccomp.Filter, what string) error {
	if e.err != nil {
		return e.err
	}
	f.Policy = e.policy
	if err := seccomp.LoadFilter(f); err != nil {
		if cerr := e.check(); cerr != nil {
			return cerr
		}
		return fmt.Errorf("seccomp: install the %s filter %s: %w", e.role, what, err)
	}
	return nil
}

// Prepare builds and checks the filters of roles with options o for this
// process, so that ApplyProcess and ApplyThread later only install them.
// Building and checking one takes 0.1-0.5 ms here (rule tables to a
// policy, the policy assembled and checked against the kernel's limit).
// Measured on two busy cores, a VMM that called it on a goroutine of its
// own while building the VM restored slower, not faster (the goroutine took
// a core the build needed; docs/performance.md), so volt-vmm does not; a
// caller with a core to spare may. It returns every role's error, which
// the Apply call of that role would return too. At LevelOff there is
// nothing to prepare.
func Prepare(o Options, roles ...Role) error {
	if o.Level == LevelOff {
		return nil
	}
	var errs []error
	for _, r := range roles {
		if err := preparedFor(r, o).check(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// SyscallNumber returns the x86-64 number of a system call.
func SyscallNumber(name string) (int, bool) {
	n, ok := arch.X86_64.SyscallNames[name]
	return n, ok
}

// SyscallName returns the x86-64 name of a system call number, or
// "syscall N" for a number it does not know.
func SyscallName(nr int) string {
	if n, ok := arch.X86_64.SyscallNumbers[nr]; ok {
		return n
	}
	return "syscall " + strconv.Itoa(nr)
}
