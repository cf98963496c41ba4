// Command volt-init is PID 1 of Volt's Linux guests; see package
// github.com/voltvmm/volt/guest/init.
package main

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/voltvmm/volt/guest/agent"
	voltinit "github.com/voltvmm/volt/guest/init"
	"github.com/voltvmm/volt/guest/marker"
)

// The main goroutine keeps the main thread for good: the workload is forked
// from it, the kernel hands orphans to it, and it alone reaps them, with
// __WNOTHREAD, so that the children the guest agent's os/exec starts on
// other threads stay theirs to wait for (voltinit.Linux.Reap). An init
// function is the one place where LockOSThread pins main to the thread the
// process started on.
func init() { runtime.LockOSThread() }

func main() {
	// The marker comes first so that the tracer's "PID 1 reached" is the
	// moment init runs; getpid keeps it off the host's port 0x80 when the
	// binary is tried outside a VM.
	var port voltinit.PortMarker
	pid := os.Getpid()
	if pid == 1 {
		port.Mark(marker.PID1)
	}

	dryRun := false
	var args []string
	for _, a := range os.Args[1:] {
		switch a {
		case "--dry-run", "-dry-run":
			dryRun = true
		default:
			args = append(args, a) // the kernel passes its leftovers; only volt.* ones count
		}
	}
	if err := voltinit.CheckPID(pid, dryRun); err != nil {
		fmt.Fprintf(os.Stderr, "volt-init: %v\n", err)
		os.Exit(2)
	}

	in := &voltinit.Init{
		Console: os.Stdout,
		Signals: voltinit.NotifySignals(),
		Args:    args,
		Environ: os.Environ(),
	}
	logf := func(f string, a ...any) { fmt.Fprintf(os.Stdout, "volt-init: "+f+"\n", a...) }
	if dryRun {
		// Outside a VM: no port reads (the host's ports are not the
		// VMM's) and no agent on the host's vsock.
		sys, err := voltinit.NewDryRun(os.Stderr)
		if err != nil {
			fmt.Fprintf(os.Stderr, "volt-init: %v\n", err)
			os.Exit(1)
		}
		in.Sys = sys
	} else {
		in.Sys = &voltinit.Linux{}
		// Clones restored from one snapshot must not share RNG state.
		ports := &voltinit.GenIDPorts{}
		in.Generation = &voltinit.GenerationWatcher{Read: ports.Read, Reseed: voltinit.ReseedKernelRNG, Logf: logf}
		in.NewTicker = func(d time.Duration) (voltinit.StoppableTicker, error) { return voltinit.NewTimerfdTicker(d) }
		// The agent's commands inherit init's environment, in which the
		// kernel put no PATH and the parameters it did not know (ip=):
		// init takes the environment a workload gets (volt.env aside,
		// which is the workload's alone).
		setEnviron(voltinit.WorkloadEnv(in.Environ, nil))
		in.Agent = &voltinit.VsockAgent{
			Port:        agent.Port,
			Handler:     agent.ExecHandler{},
			BeforeServe: in.CheckGeneration,
			Logf:        logf,
		}
	}
	if err := in.Run(); err != nil {
		// Exiting PID 1 panics the kernel, which at least stops the VM
		// loudly when even power-off failed.
		fmt.Fprintf(os.Stderr, "volt-init: %v\n", err)
		os.Exit(1)
	}
}

// setEnviron replaces the process's environment with env (K=V entries).
func setEnviron(env []string) {
	os.Clearenv()
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok {
			os.Setenv(k, v)
		}
	}
}
