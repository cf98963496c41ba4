package sandbox

import (
	"fmt"
	"sort"
	"strings"
)

// Role names a kind of thread in volt-vmm; each has its own rule table.
// RoleVMM is the base filter of the whole process (every thread, installed
// with SECCOMP_FILTER_FLAG_TSYNC); the others are narrower filters that
// stack on top of it on one locked OS thread each.
type Role string

// The thread roles of volt-vmm.
const (
	// RoleVMM is the process: every goroutine that is not locked to a
	// thread of its own (API handlers, snapshots, the controller, Go's
	// runtime threads) runs under it, so it is the union of what they do
	// once the VM is built.
	RoleVMM Role = "vmm"
	// RoleVCPU is a vCPU thread: KVM_RUN and the exit handlers (port and
	// MMIO devices, the console, device activation), and the register
	// reads of a snapshot, which KVM wants on the vCPU's own thread.
	RoleVCPU Role = "vcpu"
	// RoleAPI is a thread that only moves API requests between the socket
	// and the goroutine that carries them out.
	RoleAPI Role = "api"
	// RoleBlock is a virtio-blk worker: reads, writes and syncs its
	// backing file and signals its interrupt eventfd.
	RoleBlock Role = "virtio-blk"
	// RoleNet is a virtio-net worker: frames to and from its TAP.
	RoleNet Role = "virtio-net"
	// RoleVsock is the virtio-vsock worker: its own epoll set over host
	// Unix sockets, timers and the kick eventfd.
	RoleVsock Role = "virtio-vsock"
	// RoleRNG is the virtio-rng worker: getrandom and its interrupt.
	RoleRNG Role = "virtio-rng"
)

// Roles lists every role, the process first.
func Roles() []Role {
	return []Role{RoleVMM, RoleAPI, RoleVCPU, RoleBlock, RoleNet, RoleVsock, RoleRNG}
}

// ThreadRoles are the roles for ApplyThread.
func ThreadRoles() []Role { return Roles()[1:] }

// ParseRole reads a role name.
func ParseRole(s string) (Role, error) {
	for _, r := range Roles() {
		if string(r) == s {
			return r, nil
		}
	}
	names := make([]string, 0, len(Roles()))
	for _, r := range Roles() {
		names = append(names, string(r))
	}
	return "", fmt.Errorf("unknown role %q (have %s)", s, strings.Join(names, ", "))
}

// Op compares one system call argument with a value.
type Op int

const (
	// Eq: the argument equals Value.
	Eq Op = iota
	// NoBits: the argument has none of the bits of Value set
	// (mmap's prot without PROT_EXEC).
	NoBits
	// Le: the argument is at most Value (unsigned).
	Le
)

func (o Op) String() string {
	switch o {
	case Eq:
		return "=="
	case NoBits:
		return "&^"
	case Le:
		return "<="
	}
	return fmt.Sprintf("Op(%d)", int(o))
}

// SelfPID in a condition's Value stands for the process's own PID, filled
// in when the filter is compiled (tgkill may only signal our own threads).
const SelfPID = ^uint64(0)

// Cond is one condition on one argument (0 to 5).
type Cond struct {
	Arg   int
	Op    Op
	Value uint64
}

func (c Cond) String() string {
	v := fmt.Sprintf("%#x", c.Value)
	if c.Value == SelfPID {
		v = "getpid()"
	}
	if c.Op == NoBits {
		return fmt.Sprintf("arg%d has none of %s", c.Arg, v)
	}
	return fmt.Sprintf("arg%d %s %s", c.Arg, c.Op, v)
}

// Match is a conjunction: every condition must hold.
type Match []Cond

// Rule allows one system call. With no Matches any arguments are allowed;
// otherwise the call is allowed when at least one Match holds.
type Rule struct {
	Syscall string
	Matches []Match
	// Names describes each Match for people (the ioctl request names),
	// in the same order; optional.
	Names []string
}

// Table is a role's rules, at most one rule per system call.
type Table []Rule

// Syscalls returns the table's system call names, sorted.
func (t Table) Syscalls() []string {
	out := make([]string, 0, len(t))
	for _, r := range t {
		out = append(out, r.Syscall)
	}
	sort.Strings(out)
	return out
}

// Rule returns the rule for a system call.
func (t Table) Rule(name string) (Rule, bool) {
	for _, r := range t {
		if r.Syscall == name {
			return r, true
		}
	}
	return Rule{}, false
}

// Validate checks that every system call exists on this architecture, that
// none appears twice and that every condition names an argument 0–5.
func (t Table) Validate() error {
	seen := map[string]bool{}
	var problems []string
	for _, r := range t {
		if _, ok := SyscallNumber(r.Syscall); !ok {
			problems = append(problems, fmt.Sprintf("unknown system call %q", r.Syscall))
		}
		if seen[r.Syscall] {
			problems = append(problems, fmt.Sprintf("%s listed twice", r.Syscall))
		}
		seen[r.Syscall] = true
		if len(r.Names) != 0 && len(r.Names) != len(r.Matches) {
			problems = append(problems, fmt.Sprintf("%s: %d names for %d matches", r.Syscall, len(r.Names), len(r.Matches)))
		}
		for _, m := range r.Matches {
			if len(m) == 0 {
				problems = append(problems, fmt.Sprintf("%s: an empty match would allow every argument; leave Matches empty instead", r.Syscall))
			}
			for _, c := range m {
				if c.Arg < 0 || c.Arg > 5 {
					problems = append(problems, fmt.Sprintf("%s: argument %d is not 0-5", r.Syscall, c.Arg))
				}
			}
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("rule table: %s", strings.Join(problems, "; "))
	}
	return nil
}

// merge returns the union of tables: a call allowed without conditions in
// any of them is allowed without conditions; otherwise the matches add up.
func merge(tables ...Table) Table {
	var out Table
	index := map[string]int{}
	for _, t := range tables {
		for _, r := range t {
			i, ok := index[r.Syscall]
			if !ok {
				index[r.Syscall] = len(out)
				out = append(out, Rule{Syscall: r.Syscall, Matches: append([]Match(nil), r.Matches...), Names: append([]string(nil), r.Names...)})
				continue
			}
			have := &out[i]
			if len(have.Matches) == 0 {
				continue
			}
			if len(r.Matches) == 0 {
				have.Matches, have.Names = nil, nil
				continue
			}
			for j, m := range r.Matches {
				if containsMatch(have.Matches, m) {
					continue
				}
				have.Matches = append(have.Matches, m)
				if len(r.Names) > 0 {
					have.Names = append(have.Names, r.Names[j])
				} else if len(have.Names) > 0 {
					have.Names = append(have.Names, "")
				}
			}
		}
	}
	return out
}

func containsMatch(ms []Match, m Match) bool {
	for _, x := range ms {
		if len(x) != len(m) {
			continue
		}
		same := true
		for i := range x {
			if x[i] != m[i] {
				same = false
				break
			}
		}
		if same {
			return true
		}
	}
	return false
}

// allow allows system calls with any arguments.
func allow(names ...string) Table {
	t := make(Table, 0, len(names))
	for _, n := range names {
		t = append(t, Rule{Syscall: n})
	}
	return t
}

// argIn allows a system call when argument arg is one of the values.
func argIn(name string, arg int, values ...uint64) Rule {
	r := Rule{Syscall: name}
	for _, v := range values {
		r.Matches = append(r.Matches, Match{{Arg: arg, Op: Eq, Value: v}})
	}
	return r
}

// ioctls allows ioctl with these request numbers (on any descriptor:
// seccomp cannot see what a descriptor is).
func ioctls(reqs ...Ioctl) Rule {
	r := Rule{Syscall: "ioctl"}
	for _, q := range reqs {
		r.Matches = append(r.Matches, Match{{Arg: 1, Op: Eq, Value: uint64(q.Number)}})
		r.Names = append(r.Names, q.Name)
	}
	return r
}
