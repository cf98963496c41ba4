package jailer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/voltvmm/volt/sandbox"
)

// ChildArg is argv[1] of the jailer's second process (the jailer
// re-executed from /proc/self/exe), which cmd/volt-jailer hands to Child.
const ChildArg = "__volt-jailer-child"

// Descriptors of the second process: the configuration arrives on 3 (and
// its end is the go-ahead: the process is in its cgroup by then), and a
// failure before exec is written to 4, which exec closes.
const (
	childConfigFD = 3
	childErrorFD  = 4
)

// childConfig is what the supervisor sends the second process.
type childConfig struct {
	Config
	StartTimeUs int64
}

// CloseInherited marks every descriptor above standard error
// close-on-exec, so that none reaches volt-vmm. Call it first thing: the
// jailer's own Go runtime may hold descriptors that it must keep, so they
// are not closed under it, only kept from crossing the exec.
func CloseInherited() error {
	if err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
		return fmt.Errorf("mark inherited descriptors close-on-exec: %w", err)
	}
	return nil
}

// MonotonicMicros is CLOCK_MONOTONIC in µs, as volt-vmm's --start-time-us
// takes it.
func MonotonicMicros() int64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano() / 1000
}

// Result is how the jailed VMM ended.
type Result struct {
	// ExitCode is the VMM's exit status, or 128+signal if a signal
	// killed it (as a shell reports it).
	ExitCode int
	// Signal killed the VMM, if not 0.
	Signal syscall.Signal
	// Seccomp is set when a seccomp filter killed the VMM and the
	// kernel's audit record could be read.
	Seccomp *sandbox.SeccompKill
}

// Run jails volt-vmm as c describes and waits for it. startUs is the
// jailer's start (MonotonicMicros), passed on as --start-time-us. log gets
// the jailer's own lines. An error means the jail could not be built (the
// VMM never ran); otherwise the Result tells how the VMM ended.
func Run(ctx context.Context, c Config, startUs int64, stdin io.Reader, stdout, stderr io.Writer, log func(string)) (Result, error) {
	if c.ChrootBase == "" {
		c.ChrootBase = DefaultChrootBase
	}
	if err := c.Validate(); err != nil {
		return Result{}, err
	}
	if err := setRlimits(c.Limits); err != nil {
		return Result{}, err
	}
	mounts, err := cgroupMounts("/proc/mounts")
	if err != nil {
		return Result{}, err
	}
	plan, err := planCgroups(&c, mounts)
	if err != nil {
		return Result{}, err
	}
	if err := makeJailDir(&c); err != nil {
		return Result{}, err
	}
	if err := plan.create(); err != nil {
		plan.remove()
		return Result{}, err
	}
	defer func() {
		if err := plan.remove(); err != nil {
			log(err.Error())
		}
	}()

	cfgR, cfgW, err := os.Pipe()
	if err != nil {
		return Result{}, err
	}
	defer cfgW.Close()
	errR, errW, err := os.Pipe()
	if err != nil {
		cfgR.Close()
		return Result{}, err
	}
	defer errR.Close()
	cmd := exec.Command("/proc/self/exe", ChildArg)
	cmd.Env = []string{}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, stdout, stderr
	cmd.ExtraFiles = []*os.File{cfgR, errW}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: unix.CLONE_NEWNS | unix.CLONE_NEWPID,
		// If the supervisor dies, so does the jail (set again after the
		// uid change, which clears it).
		Pdeathsig: syscall.SIGKILL,
	}
	err = cmd.Start()
	cfgR.Close()
	errW.Close()
	if err != nil {
		return Result{}, fmt.Errorf("start the jail's first process (new PID and mount namespaces): %w", err)
	}
	pid := cmd.Process.Pid
	abort := func(err error) (Result, error) {
		cmd.Process.Kill()
		cmd.Wait()
		return Result{}, err
	}
	// Into the cgroups before it runs a single step of its own.
	if err := plan.join(pid); err != nil {
		return abort(err)
	}
	pidFile := filepath.Join(c.JailDir(), c.ExecName()+".pid")
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(pid)+"\n"), 0o644); err != nil {
		return abort(fmt.Errorf("write the pid file: %w", err))
	}
	defer os.Remove(pidFile)
	if err := json.NewEncoder(cfgW).Encode(childConfig{Config: c, StartTimeUs: startUs}); err != nil {
		return abort(fmt.Errorf("send the jail its configuration: %w", err))
	}
	cfgW.Close()

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	stopCtx := context.AfterFunc(ctx, func() { cmd.Process.Signal(syscall.SIGTERM) })
	defer stopCtx()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	// The jail's set-up failure, if any, arrives before exec closes the
	// pipe; read it while the process runs so a full pipe cannot block it.
	setupErr := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(errR)
		setupErr <- string(b)
	}()
	var waitErr error
	for waiting := true; waiting; {
		select {
		case s := <-sigs:
			cmd.Process.Signal(s)
		case waitErr = <-done:
			waiting = false
		}
	}
	if msg := <-setupErr; msg != "" {
		return Result{}, fmt.Errorf("jail %s: %s", c.ID, msg)
	}
	return result(waitErr, pid)
}

// result turns the wait into a Result; a kill by SIGSYS is looked up in
// the kernel's audit log for the system call's name.
func result(waitErr error, pid int) (Result, error) {
	if waitErr == nil {
		return Result{}, nil
	}
	var ee *exec.ExitError
	if !errors.As(waitErr, &ee) {
		return Result{}, fmt.Errorf("wait for volt-vmm: %w", waitErr)
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	if !ok {
		return Result{ExitCode: ee.ExitCode()}, nil
	}
	if !ws.Signaled() {
		return Result{ExitCode: ws.ExitStatus()}, nil
	}
	r := Result{ExitCode: 128 + int(ws.Signal()), Signal: ws.Signal()}
	if ws.Signal() == syscall.SIGSYS {
		if k, err := sandbox.FindSeccompKill(pid, 2*time.Second); err == nil {
			r.Seccomp = &k
		}
	}
	return r, nil
}

func setRlimits(limits []Rlimit) error {
	haveNoFile := false
	for _, l := range limits {
		haveNoFile = haveNoFile || l.Resource == "no-file"
	}
	if !haveNoFile {
		limits = append(limits, Rlimit{Resource: "no-file", Value: DefaultNoFile})
	}
	for _, l := range limits {
		lim := unix.Rlimit{Cur: l.Value, Max: l.Value}
		if err := unix.Setrlimit(rlimits[l.Resource], &lim); err != nil {
			return fmt.Errorf("--resource-limit %s=%d: %w (raising a hard limit needs CAP_SYS_RESOURCE)", l.Resource, l.Value, err)
		}
	}
	return nil
}

// makeJailDir creates <base>/<exec>/<id>/root, root-owned; an existing one
// is reused (files placed there beforehand are the operator's), but never
// through a symlink.
func makeJailDir(c *Config) error {
	for _, d := range []string{c.ChrootBase, filepath.Join(c.ChrootBase, c.ExecName()), c.JailDir(), c.RootDir()} {
		if err := os.Mkdir(d, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("create the chroot: %w", err)
		}
		fi, err := os.Lstat(d)
		if err != nil {
			return fmt.Errorf("create the chroot: %w", err)
		}
		if !fi.IsDir() {
			return fmt.Errorf("create the chroot: %s is %s, not a directory", d, kind(fi.Mode()))
		}
	}
	return nil
}
