package sandbox

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"time"

	seccomp "github.com/elastic/go-seccomp-bpf"
)

// tsyncESRCH (SECCOMP_FILTER_FLAG_TSYNC_ESRCH, Linux 5.7) makes a failed
// thread synchronisation an ESRCH error. Without it the kernel reports the
// failure as a positive return value (the ID of the thread it could not
// synchronise), which a wrapper that checks only errno takes for success.
const tsyncESRCH seccomp.FilterFlag = 1 << 4

var process struct {
	mu      sync.Mutex
	applied bool
	opts    Options
}

// ApplyProcess installs role's filter (RoleVMM for volt-vmm) on every
// thread of the process at once (SECCOMP_FILTER_FLAG_TSYNC), after setting
// no_new_privs, which the kernel requires of a process without
// CAP_SYS_ADMIN and which TSYNC copies to every thread. Threads created
// later inherit it. Call it once the VM is built or restored and before
// its vCPUs run: the filter allows nothing that builds a VM. It can be
// called once per process; with LevelOff it installs nothing.
func ApplyProcess(r Role, o Options) error {
	process.mu.Lock()
	defer process.mu.Unlock()
	if process.applied {
		return errors.New("seccomp: the process filter is already installed")
	}
	if o.Level == LevelOff {
		process.applied, process.opts = true, o
		return nil
	}
	// LoadFilter assembles the policy: it takes a policy, not a program,
	// and installing a program needs a pointer to it.
	f := seccomp.Filter{NoNewPrivs: true, Flag: seccomp.FilterFlagTSync | tsyncESRCH}
	if err := preparedFor(r, o).load(f, "on every thread"); err != nil {
		return err
	}
	process.applied, process.opts = true, o
	return nil
}

// ApplyThread installs role's narrower filter on the calling goroutine's
// OS thread, on top of the process filter (the kernel runs both; a call
// must pass each). It locks the goroutine to its thread for good
// (runtime.LockOSThread, never undone here): the thread then runs this
// goroutine only, and ends with it, so the filter can never reach another
// goroutine. Go creates new threads for a locked thread's needs from its
// template thread, so they do not inherit this filter either.
//
// Call it at the start of the goroutine that owns the thread (a vCPU's
// run loop, a device worker), after ApplyProcess, with the same options;
// at LevelOff it only locks the thread.
func ApplyThread(r Role) error {
	runtime.LockOSThread()
	process.mu.Lock()
	applied, o := process.applied, process.opts
	process.mu.Unlock()
	if !applied {
		return fmt.Errorf("seccomp: ApplyThread(%s) before ApplyProcess: the process filter must come first (a thread with its own filter stops TSYNC)", r)
	}
	if r == RoleVMM {
		return errors.New("seccomp: RoleVMM is the process filter; use ApplyProcess")
	}
	if o.Level == LevelOff {
		return nil
	}
	// Go loads the local time zone (/etc/localtime) the first time a time
	// is formatted, on whichever thread does it; no thread filter allows
	// openat, so it is loaded here, before the filter.
	time.Now().Zone()
	// no_new_privs is already set on every thread (TSYNC copied it), and
	// prctl is not allowed by the process filter.
	return preparedFor(r, o).load(seccomp.Filter{}, "on this thread")
}

// ProcessFilterApplied reports whether ApplyProcess has run (at any
// level): code that may run unconfined (tests building a VM directly)
// calls ApplyThread only when it has.
func ProcessFilterApplied() bool {
	process.mu.Lock()
	defer process.mu.Unlock()
	return process.applied
}
