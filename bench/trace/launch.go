package trace

import (
	"context"
	"fmt"
	"os"
	"os/exec"
)

// Start starts g so that the tracer watches its process from the exec on.
//
// The exec is the origin of every stage, so the PID must be in the eBPF map
// before the VMM's exec happens, yet the PID only exists after the fork.
// os/exec forks and execs in one step, so Start execs a tiny gate instead,
// /bin/sh, which blocks reading a pipe; once Start has watched the PID it
// writes to the pipe and the gate execs the real command in the same process
// (same PID). The shell's own start-up happens before the origin and costs
// the measurement nothing. Alternatives were weighed: re-executing our own
// binary works too but needs a hook in every test binary's TestMain; ptrace
// stops change the timing of the very exec we measure; matching on the
// executable's name in sched_process_exec would catch unrelated processes.
//
// If the parent dies before releasing the gate, the pipe closes, `read`
// fails and the shell exits without running the command.
func (t *Tracer) Start(g *Gated) error {
	if g.started {
		return fmt.Errorf("trace: start %s: already started", g.name)
	}
	g.started = true
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("trace: gate pipe: %w", err)
	}
	defer r.Close()
	defer w.Close()
	g.Cmd.ExtraFiles = []*os.File{r}
	if err := g.Cmd.Start(); err != nil {
		return fmt.Errorf("trace: start %s: %w", g.name, err)
	}
	pid := g.Cmd.Process.Pid
	if err := t.Watch(pid); err != nil {
		g.Cmd.Process.Kill()
		g.Cmd.Wait()
		return err
	}
	if _, err := w.Write([]byte("go\n")); err != nil {
		t.Forget(pid)
		g.Cmd.Process.Kill()
		g.Cmd.Wait()
		return fmt.Errorf("trace: release gate of %d: %w", pid, err)
	}
	return nil
}

// Gated is a command whose exec waits for Tracer.Start. Set Cmd's Stdin,
// Stdout, Stderr and Env as usual; ExtraFiles is reserved for the gate.
type Gated struct {
	Cmd     *exec.Cmd
	name    string
	started bool
}

// Command prepares name with args to run behind the gate.
func Command(ctx context.Context, name string, args ...string) *Gated {
	// The gate reads one line from fd 3, closes it and replaces itself.
	const gate = `read -r _ <&3 || exit 125; exec 3<&-; exec "$0" "$@"`
	cmd := exec.CommandContext(ctx, "/bin/sh", append([]string{"-c", gate, name}, args...)...)
	return &Gated{Cmd: cmd, name: name}
}
