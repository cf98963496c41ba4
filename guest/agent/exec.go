package agent

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// ExecHandler runs each request as a process of the guest: argv as given
// (Args[0] looked up in PATH), the agent's environment plus Env, Stdin as
// its standard input. Dir, when set, is its working directory.
type ExecHandler struct {
	Dir string
}

var _ Handler = ExecHandler{}

// waitDelay is how long the command's output pipes may stay open after it
// was killed (a grandchild holding them) before they are closed.
const waitDelay = 2 * time.Second

func (e ExecHandler) Run(ctx context.Context, req Request, stdout, stderr io.Writer) Status {
	cmd := exec.CommandContext(ctx, req.Args[0], req.Args[1:]...)
	cmd.Dir = e.Dir
	cmd.Env = append(os.Environ(), req.Env...)
	cmd.Stdin = bytes.NewReader(req.Stdin)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.WaitDelay = waitDelay
	err := cmd.Run()
	if cmd.ProcessState == nil {
		// Never started: not found, not executable, bad directory.
		return Status{Kind: NotRun, Message: err.Error()}
	}
	ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus)
	switch {
	case ok && ws.Signaled():
		return Status{Kind: Signaled, Code: int32(ws.Signal())}
	case ok && ws.Exited():
		st := Status{Kind: Exited, Code: int32(ws.ExitStatus())}
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			// Exited, but its output could not be delivered (or the
			// pipes outlived it): say so beside the status.
			st.Message = err.Error()
		}
		return st
	}
	return Status{Kind: NotRun, Message: "unexpected wait status: " + cmd.ProcessState.String()}
}
