// Command volt-init is PID 1 of Volt's Linux guests; see package
// github.com/voltvmm/volt/guest/init.
package main

import (
	"fmt"
	"os"

	voltinit "github.com/voltvmm/volt/guest/init"
	"github.com/voltvmm/volt/guest/marker"
)

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
	if dryRun {
		sys, err := voltinit.NewDryRun(os.Stderr)
		if err != nil {
			fmt.Fprintf(os.Stderr, "volt-init: %v\n", err)
			os.Exit(1)
		}
		in.Sys = sys
	} else {
		in.Sys = &voltinit.Linux{}
		// Clones restored from one snapshot must not share RNG state.
		w := &voltinit.GenerationWatcher{
			Read:     voltinit.ReadGenerationID,
			Reseed:   voltinit.ReseedKernelRNG,
			Interval: voltinit.GenIDInterval,
			Logf:     func(f string, a ...any) { fmt.Fprintf(os.Stdout, "volt-init: "+f+"\n", a...) },
		}
		go w.Run(nil)
	}
	if err := in.Run(); err != nil {
		// Exiting PID 1 panics the kernel, which at least stops the VM
		// loudly when even power-off failed.
		fmt.Fprintf(os.Stderr, "volt-init: %v\n", err)
		os.Exit(1)
	}
}
