package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/voltvmm/volt/nspawn"
	"github.com/voltvmm/volt/nspawn/instance"
	"github.com/voltvmm/volt/nspawn/microvm"
)

// instances is what stop, rm and logs need of a runtime: containers' and
// VMs' alike (a VM's Remove also removes what its jail left).
type instances interface {
	Stop(ctx context.Context, name string, timeout time.Duration) (instance.Status, error)
	Remove(ctx context.Context, name string, force bool, timeout time.Duration) error
	Logs(ctx context.Context, name string, follow bool, w io.Writer) error
}

// kindHelp is how one kind's stop, rm and logs describe themselves.
type kindHelp struct {
	stop, stopTimeout      string
	rm, rmForce, rmTimeout string
	logs, logsFollow       string
	open                   func(f *workloadFlags, m instance.Manager) instances
}

var containerHelp = kindHelp{
	stop:        "Stops containers: SIGTERM to each one's command, SIGKILL to the whole container after\nthe timeout. Waits until each has stopped and its disk is unmounted.",
	stopTimeout: "how long the command may take to exit after SIGTERM",
	rm:          "Removes stopped containers: their state, log and overlay (what they wrote). The image\nstays. --force stops a running one first.",
	rmForce:     "stop a running container first",
	rmTimeout:   "with --force: how long the command may take to exit",
	logs:        "Prints a container's output (its command's stdout and stderr, and volt's and\nsystemd-nspawn's messages, prefixed \"volt:\").",
	logsFollow:  "keep printing until the container stops",
	open: func(f *workloadFlags, m instance.Manager) instances {
		return nspawn.NewRuntime(f.stateDir, f.store, m, nil)
	},
}

var vmHelp = kindHelp{
	stop:        "Stops VMs: SIGTERM to volt-vmm, SIGKILL after the timeout.",
	stopTimeout: "how long volt-vmm may take to stop",
	rm:          "Removes stopped VMs: their state, console log and overlay. The image stays.",
	rmForce:     "stop a running VM first",
	rmTimeout:   "with --force: how long volt-vmm may take to stop",
	logs:        "Prints a VM's serial console and volt-vmm's messages.",
	logsFollow:  "keep printing until the VM stops",
	open: func(f *workloadFlags, m instance.Manager) instances {
		return microvm.NewRuntime(f.stateDir, f.store, m, nil)
	},
}

// openInstances opens the manager and the kind's runtime; a non-negative
// rc is the exit status to return.
func (k kindHelp) openInstances(ctx context.Context, e *env, path string, f *workloadFlags) (instances, func(), int) {
	m, rc := f.openManager(ctx, e, path, false)
	if rc >= 0 {
		return nil, nil, rc
	}
	return k.open(f, m), m.Close, -1
}

func (k kindHelp) stopCommand(ctx context.Context, e *env, path string, args []string) int {
	f := newWorkloadFlags(e, path, "NAME... [--timeout 10s] [flags]", k.stop)
	timeout := f.fs.Duration("timeout", instance.DefaultStopTimeout, k.stopTimeout)
	pos, _, rc := f.parse(e, path, args, 1, -1, false)
	if rc >= 0 {
		return rc
	}
	if *timeout < 0 {
		return usageError(e, path, "--timeout must not be negative")
	}
	rt, done, rc := k.openInstances(ctx, e, path, f)
	if rc >= 0 {
		return rc
	}
	defer done()
	status := exitOK
	for _, name := range pos {
		st, err := rt.Stop(ctx, name, *timeout)
		if err != nil {
			status = failure(e, path, err)
			continue
		}
		if !f.json {
			fmt.Fprintf(e.stdout, "%s: %s\n", name, stateText(st))
		}
	}
	return status
}

func (k kindHelp) removeCommand(ctx context.Context, e *env, path string, args []string) int {
	f := newWorkloadFlags(e, path, "NAME... [--force] [flags]", k.rm)
	force := f.fs.Bool("force", false, k.rmForce)
	timeout := f.fs.Duration("timeout", instance.DefaultStopTimeout, k.rmTimeout)
	pos, _, rc := f.parse(e, path, args, 1, -1, false)
	if rc >= 0 {
		return rc
	}
	rt, done, rc := k.openInstances(ctx, e, path, f)
	if rc >= 0 {
		return rc
	}
	defer done()
	status := exitOK
	for _, name := range pos {
		if err := rt.Remove(ctx, name, *force, *timeout); err != nil {
			status = failure(e, path, err)
		}
	}
	return status
}

func (k kindHelp) logsCommand(ctx context.Context, e *env, path string, args []string) int {
	f := newWorkloadFlags(e, path, "NAME [-f] [flags]", k.logs)
	follow := f.fs.BoolP("follow", "f", false, k.logsFollow)
	pos, _, rc := f.parse(e, path, args, 1, 1, false)
	if rc >= 0 {
		return rc
	}
	rt, done, rc := k.openInstances(ctx, e, path, f)
	if rc >= 0 {
		return rc
	}
	defer done()
	if err := rt.Logs(ctx, pos[0], *follow, e.stdout); err != nil {
		return failure(e, path, err)
	}
	return exitOK
}
