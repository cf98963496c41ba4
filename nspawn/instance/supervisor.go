package instance

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Supervisor runs supervisors as detached children where systemd is not
// PID 1: a new session (no terminal, no signals from the caller's), a
// private mount namespace (the supervisor's mounts vanish with it), stdio
// to the instance's log, and sd_notify on an abstract socket, exactly the
// protocol a Type=notify unit speaks. The caller returns once READY=1
// arrives; the supervisor outlives it and init reaps it.
type Supervisor struct{}

var _ Manager = (*Supervisor)(nil)

func (*Supervisor) Name() string { return ManagerSupervisor }
func (*Supervisor) Close()       {}

// Start implements Manager.
func (*Supervisor) Start(ctx context.Context, l Launch) error {
	if err := l.validate(); err != nil {
		return err
	}
	logf, err := os.OpenFile(l.Dir.LogPath(), os.O_WRONLY|os.O_APPEND|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	nl, err := ListenNotify()
	if err != nil {
		return err
	}
	defer nl.Close()

	cmd := exec.Command(l.Argv[0], l.Argv[1:]...)
	cmd.Env = append(filterEnv(os.Environ(), "NOTIFY_SOCKET", EnvManager), "NOTIFY_SOCKET="+nl.Addr(), EnvManager+"="+ManagerSupervisor)
	cmd.Env = append(cmd.Env, l.Env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setsid: true,
		// The runtime remounts / MS_REC|MS_PRIVATE in the child before
		// exec, so nothing the supervisor mounts propagates back.
		Unshareflags: syscall.CLONE_NEWNS,
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start supervisor %s: %w", l.Argv[0], err)
	}
	pid := cmd.Process.Pid
	// No goroutine waits for the supervisor: it is meant to outlive us. An
	// exit before READY=1 is found by polling wait4(WNOHANG); after READY
	// the process is released and init reaps it once we have gone.
	exited := func() (bool, string) {
		var ws unix.WaitStatus
		got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil)
		if got != pid || err != nil {
			return false, ""
		}
		if ws.Signaled() {
			return true, "killed by " + unix.SignalName(ws.Signal())
		}
		return true, fmt.Sprintf("exit status %d", ws.ExitStatus())
	}
	kill := func() {
		unix.Kill(pid, unix.SIGTERM)
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			if done, _ := exited(); done {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		unix.Kill(pid, unix.SIGKILL)
		var ws unix.WaitStatus
		unix.Wait4(pid, &ws, 0, nil)
	}

	rctx, cancel := context.WithTimeout(ctx, l.ReadyTimeout)
	defer cancel()
	msgs := nl.Messages()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var last string
	for {
		select {
		case m, ok := <-msgs:
			if !ok {
				msgs = nil // socket done; wait for exit or timeout
				continue
			}
			if m.Status != "" {
				last = m.Status
			}
			if m.Ready {
				cmd.Process.Release()
				return nil
			}
		case <-tick.C:
			if done, how := exited(); done {
				return fmt.Errorf("%s %s did not start: %s (supervisor: %s)", l.Dir.Kind, l.Dir.Name, failureMessage(l.Dir, last), how)
			}
		case <-rctx.Done():
			kill()
			why := "timed out"
			if ctx.Err() != nil {
				why = "interrupted"
			}
			return fmt.Errorf("%s %s: %s after %v waiting for it to start: %s", l.Dir.Kind, l.Dir.Name, why, l.ReadyTimeout, failureMessage(l.Dir, last))
		}
	}
}

// Signal implements Manager: the recorded supervisor, if it is still the
// same process.
func (*Supervisor) Signal(_ context.Context, d Dir, rec Record, sig Signal) error {
	err := rec.Supervisor.Signal(unix.Signal(sig))
	if errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("%s %s: its supervisor (pid %d) is gone", d.Kind, d.Name, rec.Supervisor.PID)
	}
	return err
}

// UnitState implements UnitQuerier: there are no units without systemd.
func (*Supervisor) UnitState(context.Context, string) (UnitState, error) {
	return UnitState{}, errors.New("no systemd")
}

func filterEnv(env []string, drop ...string) []string {
	out := env[:0:0]
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		keep := true
		for _, d := range drop {
			if k == d {
				keep = false
			}
		}
		if keep {
			out = append(out, kv)
		}
	}
	return out
}
