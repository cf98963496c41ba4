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
	"strconv"
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
	if spec.Jail != nil && (spec.Jail.UID <= 0 || spec.Jail.GID <= 0 || spec.Jail.ChrootBase == "") {
		return 1, "", errors.New("spec.json: the jail has no uid, gid or chroot base (volt vm run chooses them)")
	}
	if err := sess.JoinCgroup(spec.Limits()); err != nil {
		return 1, "", err
	}
	sock := hostAPISock(&spec, d)
	var argv []string
	if spec.Jail != nil {
		if err := prepareJail(&spec, d); err != nil {
			return 1, "", errors.Join(err, releaseJail(&spec, d))
		}
		sess.SetDetail("jail_uid", strconv.Itoa(spec.Jail.UID))
		sess.SetDetail("chroot", ChrootDir(&spec))
		a, err := JailerArgv(&spec, d)
		if err != nil {
			return 1, "", errors.Join(err, releaseJail(&spec, d))
		}
		argv = a
	} else {
		if err := os.Mkdir(filepath.Dir(sock), 0o700); err != nil {
			return 1, "", fmt.Errorf("socket directory: %w", err)
		}
		defer os.RemoveAll(filepath.Dir(sock))
		a, err := VMMArgs(&spec, vmmPaths(&spec, d))
		if err != nil {
			return 1, "", err
		}
		argv = append([]string{spec.VMM}, a...)
	}
	sess.SetDetail(apiSockDetail, sock)
	code, sig, err := run(ctx, cfg, sess, &spec, argv, sock, logf)
	if spec.Jail != nil {
		if rerr := releaseJail(&spec, d); rerr != nil {
			logf("vm %s: %v", spec.Name, rerr)
			err = errors.Join(err, rerr)
		}
	}
	return code, sig, err
}

// apiSockDetail is the Record.Details key of the API socket's host path.
const apiSockDetail = "api_sock"

// run starts argv (volt-vmm, or volt-jailer with volt-vmm's arguments),
// boots the VM through its API socket sock and supervises it until it
// exits.
func run(ctx context.Context, cfg SuperviseConfig, sess *instance.Session, spec *Spec, argv []string, sock string, logf func(string, ...any)) (int, string, error) {
	d := sess.Dir
	jailed := spec.Jail != nil
	prog := "volt-vmm"
	if jailed {
		prog = "volt-jailer"
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.Dir = "/"
	// The VM dies with its supervisor, whatever kills the supervisor (a
	// jailed VMM with its jailer, which sees to that).
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
		return 1, "", fmt.Errorf("start %s: %w", argv[0], err)
	}
	pid := cmd.Process.Pid
	// vmmPID is volt-vmm's pid once known: pid itself, or the jail's
	// PID 1 (the jailer's child, which execs volt-vmm and keeps its pid).
	vmmPID := 0
	if !jailed {
		vmmPID = pid
	}
	kill := func(sig unix.Signal) {
		if vmmPID > 0 {
			unix.Kill(vmmPID, sig)
			return
		}
		if c := instance.NamespaceInit(pid); c > 0 {
			unix.Kill(c, sig)
		}
		unix.Kill(pid, sig)
	}

	// The boot request runs beside the loop, which stays free to see an
	// early exit or a signal; it is cancelled and waited for on return.
	bootCtx, cancelBoot := context.WithCancel(ctx)
	booted := make(chan error, 1)
	go func() { booted <- startVM(bootCtx, sock) }()
	defer func() {
		cancelBoot()
		if booted != nil {
			<-booted
		}
	}()

	timeout := cfg.ReadyTimeout
	if timeout <= 0 {
		timeout = time.Minute
	}
	readyBy := time.After(timeout)
	ready := false
	var bootErr error
	stopping := false
	var stopDeadline <-chan time.Time
	for {
		select {
		case err := <-booted:
			booted = nil
			if err == nil && jailed {
				if vmmPID = instance.NamespaceInit(pid); vmmPID == 0 {
					err = errors.New("volt-jailer's VMM process is not to be found")
				}
			}
			var vmm instance.Proc
			if err == nil {
				vmm, err = instance.ProcOf(vmmPID)
			}
			if err != nil {
				bootErr = err
				logf("vm %s: %v: killing %s", spec.Name, err, prog)
				kill(unix.SIGKILL)
				continue
			}
			ready = true
			if err := sess.Running(vmm); err != nil {
				logf("record: %v", err)
			}
		case <-readyBy:
			if !ready && bootErr == nil {
				bootErr = fmt.Errorf("%w %v", errBootTimeout, timeout)
				logf("vm %s: %v: killing %s", spec.Name, bootErr, prog)
				kill(unix.SIGKILL)
			}
		case s := <-sigs:
			if stopping || !ready {
				kill(unix.SIGKILL)
				continue
			}
			stopping = true
			sess.Stopping()
			t := d.StopTimeout()
			logf("vm %s: %v: stopping volt-vmm (killed after %v)", spec.Name, s, t)
			kill(unix.SIGTERM)
			stopDeadline = time.After(t)
		case <-stopDeadline:
			logf("vm %s: still running after the stop timeout: killing it", spec.Name)
			kill(unix.SIGKILL)
			stopDeadline = nil
		case werr := <-exited:
			ps := cmd.ProcessState
			if ps == nil {
				return 1, "", werr
			}
			ws, _ := ps.Sys().(syscall.WaitStatus)
			code, sig := ws.ExitStatus(), ""
			if ws.Signaled() {
				code, sig = 0, unix.SignalName(ws.Signal())
			} else if jailed && code > 128 && code < 128+65 {
				// The jailer exits 128+N when signal N killed the VMM.
				code, sig = 0, unix.SignalName(syscall.Signal(code-128))
			}
			if !ready {
				// A refusal or a timeout is the story; otherwise the
				// exit status is, with what the exchange saw.
				var fault *bootFault
				why := bootErr
				if !errors.As(bootErr, &fault) && !errors.Is(bootErr, errBootTimeout) {
					why = fmt.Errorf("%s exited with %s before the VM ran (%s)", prog, exitText(code, sig), exitMeaning(jailed, code, sig))
					if bootErr != nil {
						why = fmt.Errorf("%w; %v", why, bootErr)
					}
				}
				if tail := logTail(d.LogPath()); tail != "" {
					why = fmt.Errorf("%w; the log's last word: %s", why, tail)
				}
				return code, sig, why
			}
			return code, sig, nil
		case <-ctx.Done():
			kill(unix.SIGKILL)
			ctx = context.Background()
		}
	}
}

// errBootTimeout is the VM not running within the ready timeout.
var errBootTimeout = errors.New("the VM did not start within")

func exitText(code int, sig string) string {
	if sig != "" {
		return sig
	}
	return fmt.Sprintf("status %d", code)
}

// exitMeaning explains how the VMM (or its jailer) ended.
func exitMeaning(jailed bool, code int, sig string) string {
	switch {
	case sig != "":
		return "killed by a signal"
	case jailed && code == 1:
		return "volt-jailer could not build the jail, or volt-vmm could not build the VM"
	case jailed && code == 2:
		return "bad usage of volt-jailer or volt-vmm"
	}
	return vmmExitMeaning(code)
}

// logTail is the last line volt-vmm or volt-jailer wrote to the log, to
// say in an error why a VM did not start.
func logTail(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return ""
	}
	off := max(0, fi.Size()-8<<10)
	b := make([]byte, fi.Size()-off)
	n, _ := f.ReadAt(b, off)
	lines := strings.Split(string(b[:n]), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if l := strings.TrimSpace(lines[i]); strings.HasPrefix(l, "volt-vmm:") || strings.HasPrefix(l, "volt-jailer:") {
			return l
		}
	}
	return ""
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
