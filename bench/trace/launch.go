package trace

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"runtime"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Start starts g so that the tracer watches its process from the exec on.
//
// The exec is the origin of every stage, so the process must be in the eBPF
// filter before it execs, yet its PID exists only after the fork, and
// os/exec forks and execs in one step. So Start registers the thread that
// forks instead: it locks the calling goroutine to its OS thread (Go forks
// on the calling thread), puts that thread's TID into the program's
// launcher map, starts the command and removes the TID again. The eBPF
// program sees the fork (sched_process_fork runs in the parent before the
// child can run) and adds the child, a process and not one of the threads
// the Go runtime starts meanwhile, to the filter; the child's exec of the
// command then fires sched_process_exec in a process already watched.
// Nothing runs between fork and exec but Go's own child code, so the origin
// is the exec itself, as before, and no intermediate process stands between
// the caller and the VMM: the /bin/sh gate this replaced started a shell per
// launch, and that bounded every rate voltbench could show (issue 14 saw
// ~110 starts/s on the development machine).
// Other ways were weighed: re-executing our own binary needs a hook in
// every test binary's TestMain; ptrace stops change the timing of the very
// exec measured; matching on the executable's name would catch unrelated
// processes.
//
// Several goroutines may Start at once: each registers its own thread.
func (t *Tracer) Start(g *Gated) error {
	if g.started {
		return fmt.Errorf("trace: start %s: already started", g.name)
	}
	g.started = true
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	tid := uint32(unix.Gettid())
	flags := uint32(launchWatch)
	if g.Follow {
		flags |= launchFollow
	}
	if err := t.objs.Launchers.Update(tid, flags, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("trace: start %s: register launcher thread %d: %w", g.name, tid, err)
	}
	startErr := g.Cmd.Start()
	unregErr := t.objs.Launchers.Delete(tid)
	if startErr != nil {
		// A child whose exec failed ended before any exec: the kernel
		// side has forgotten it already.
		return fmt.Errorf("trace: start %s: %w", g.name, startErr)
	}
	pid := g.Cmd.Process.Pid
	fail := func(err error) error {
		g.Cmd.Process.Kill()
		g.Cmd.Wait()
		t.Forget(pid)
		return err
	}
	if unregErr != nil {
		// Left registered, the thread would enrol every later child of
		// whatever goroutine runs on it.
		return fail(fmt.Errorf("trace: start %s: unregister launcher thread %d: %w", g.name, tid, unregErr))
	}
	// The fork must have enrolled the child; a full process map would
	// have left it out, and its stages would silently be missing.
	var raw stagesProc
	if err := t.objs.Procs.Lookup(uint32(pid), &raw); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			err = fmt.Errorf("not enrolled at its fork (are %d processes watched already?)", t.objs.Procs.MaxEntries())
		}
		return fail(fmt.Errorf("trace: start %s (pid %d): %w", g.name, pid, err))
	}
	return nil
}

// Bits of a launcher thread's value in the program's launcher map
// (LAUNCH_* in stages.c).
const (
	launchWatch  = 1
	launchFollow = 2
)

// Gated is a command that Tracer.Start starts under watch. Set Cmd's
// Stdin, Stdout, Stderr, ExtraFiles and Env as usual before Start.
type Gated struct {
	Cmd *exec.Cmd
	// Follow enrols the command's child processes as well, at their
	// fork, before they can exec, and keeps the first of them to exec
	// (others leave the filter): volt-jailer forks the jail's process,
	// which execs the jailer again and then volt-vmm (its Record has a
	// LastExec point). The command's Record names it (Child); Collect it
	// too.
	Follow  bool
	name    string
	started bool
}

// Command prepares name with args to be started by Tracer.Start. The VMM is
// the process started: nothing runs in between.
func Command(ctx context.Context, name string, args ...string) *Gated {
	return &Gated{Cmd: exec.CommandContext(ctx, name, args...), name: name}
}
