package microvm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/voltvmm/volt/nspawn/instance"
)

// SuperviseConfig configures the VM supervisor.
type SuperviseConfig struct {
	StateRoot string
	Name      string
	Stderr    io.Writer
	// ReadyTimeout bounds the VMM's set-up (default 60 s).
	ReadyTimeout time.Duration
}

// Supervise is the process a VM runs as (the unit's main process, or the
// child of volt vm run): it runs volt-vmm over the instance's volume,
// records the VM's phases and its exit in state.json, stops it on SIGTERM
// and kills it after the stop timeout. It returns the process's exit
// status: volt-vmm's, or 1 if it could not start it.
func Supervise(ctx context.Context, cfg SuperviseConfig) int {
	logf := func(format string, args ...any) { fmt.Fprintf(cfg.Stderr, "volt: "+format+"\n", args...) }
	d, err := instance.NewDir(cfg.StateRoot, instance.VM, cfg.Name)
	if err != nil {
		logf("%v", err)
		return 1
	}
	sess, err := instance.BeginSession(d)
	if err != nil {
		logf("%v", err)
		return 1
	}
	defer sess.Close()
	code, sig, err := supervise(ctx, cfg, sess, logf)
	if err != nil && sess.Record().Phase == instance.PhaseStarting {
		logf("vm %s: %v", cfg.Name, err)
		sess.Fail(err)
		return 1
	}
	var codep *int
	if sig == "" {
		codep = &code
	}
	if rerr := sess.Exited(codep, sig, err); rerr != nil {
		logf("record: %v", rerr)
		return 1
	}
	if sig != "" {
		return 128 + int(unix.SignalNum(sig))
	}
	return code
}

func supervise(ctx context.Context, cfg SuperviseConfig, sess *instance.Session, logf func(string, ...any)) (int, string, error) {
	d := sess.Dir
	var spec Spec
	if err := instance.ReadJSON(d.SpecPath(), &spec); err != nil {
		return 1, "", err
	}
	if err := spec.Validate(); err != nil {
		return 1, "", fmt.Errorf("spec.json: %w", err)
	}
	if err := sess.JoinCgroup(spec.Limits()); err != nil {
		return 1, "", err
	}
	args, err := VMMArgs(&spec, d.VolumePath())
	if err != nil {
		return 1, "", err
	}
	cmd := exec.Command(spec.VMM, args...)
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.Dir = "/"
	// The VM dies with its supervisor, whatever kills the supervisor.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, unix.SIGTERM, unix.SIGINT, unix.SIGHUP)
	defer signal.Stop(sigs)

	started := make(chan error, 1)
	exited := make(chan error, 1)
	go func() {
		// Pdeathsig follows the forking thread: keep it until the end.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		exited <- cmd.Wait()
	}()
	if err := <-started; err != nil {
		return 1, "", fmt.Errorf("start %s: %w", spec.VMM, err)
	}
	pid := cmd.Process.Pid
	vmm, _ := instance.ProcOf(pid)
	timeout := cfg.ReadyTimeout
	if timeout <= 0 {
		timeout = time.Minute
	}
	readyBy := time.After(timeout)
	poll := time.NewTicker(5 * time.Millisecond)
	defer poll.Stop()
	ready := false
	stopping := false
	var stopDeadline <-chan time.Time
	for {
		select {
		case <-poll.C:
			if !ready && hasVCPU(pid) {
				ready = true
				poll.Stop()
				if err := sess.Running(vmm); err != nil {
					logf("record: %v", err)
				}
			}
		case <-readyBy:
			if !ready {
				logf("vm %s: volt-vmm made no vCPU within %v: killing it", spec.Name, timeout)
				unix.Kill(pid, unix.SIGKILL)
			}
		case s := <-sigs:
			if stopping || !ready {
				unix.Kill(pid, unix.SIGKILL)
				continue
			}
			stopping = true
			sess.Stopping()
			t := d.StopTimeout()
			logf("vm %s: %v: stopping volt-vmm (killed after %v)", spec.Name, s, t)
			unix.Kill(pid, unix.SIGTERM)
			stopDeadline = time.After(t)
		case <-stopDeadline:
			logf("vm %s: still running after the stop timeout: killing it", spec.Name)
			unix.Kill(pid, unix.SIGKILL)
			stopDeadline = nil
		case werr := <-exited:
			ps := cmd.ProcessState
			if ps == nil {
				return 1, "", werr
			}
			ws, _ := ps.Sys().(syscall.WaitStatus)
			if ws.Signaled() {
				return 0, unix.SignalName(ws.Signal()), nil
			}
			if !ready {
				return ws.ExitStatus(), "", fmt.Errorf("volt-vmm exited with status %d before the VM ran (%s; its messages are in the log)", ws.ExitStatus(), vmmExitMeaning(ws.ExitStatus()))
			}
			return ws.ExitStatus(), "", nil
		case <-ctx.Done():
			unix.Kill(pid, unix.SIGKILL)
			ctx = context.Background()
		}
	}
}

// hasVCPU reports whether process pid holds a KVM vCPU descriptor: the VMM
// has built the VM and is about to run the guest. volt-vmm has no readiness
// notification of its own; this needs nothing from it.
func hasVCPU(pid int) bool {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	for _, e := range ents {
		if t, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil && strings.HasPrefix(t, "anon_inode:kvm-vcpu") {
			return true
		}
	}
	return false
}

// vmmExitMeaning explains volt-vmm's exit statuses (README.md).
func vmmExitMeaning(code int) string {
	switch code {
	case 0:
		return "the guest powered off"
	case 1:
		return "the VM could not be built"
	case 2:
		return "bad usage"
	case 3:
		return "the guest died"
	case 4:
		return "stopped by a signal"
	case 5:
		return "the guest reset without a shutdown"
	case 6:
		return "the guest kernel panicked"
	}
	return "unknown status"
}

// ErrNoKVM is returned when /dev/kvm is missing.
var ErrNoKVM = errors.New("/dev/kvm is missing: VMs need KVM")
