package nspawn

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/voltvmm/volt/cas"
	"github.com/voltvmm/volt/cas/volume"
	"github.com/voltvmm/volt/nspawn/fusedisk"
	"github.com/voltvmm/volt/nspawn/image"
	"github.com/voltvmm/volt/nspawn/instance"
	"github.com/voltvmm/volt/nspawn/loopdev"
)

// Files in a container's state directory besides the common ones.
const (
	diskName   = "disk"   // the FUSE mount point: a regular file serving the volume
	rootfsName = "rootfs" // the ext4 mount point, systemd-nspawn's --directory
)

// SuperviseConfig configures the container supervisor.
type SuperviseConfig struct {
	StateRoot string
	Name      string
	// Nspawn is systemd-nspawn's path ("": looked up).
	Nspawn string
	// Stderr receives the supervisor's own messages (the log).
	Stderr io.Writer
}

// Supervise is the process a container runs as: the main process of its
// transient unit, or the detached child of volt container run. It serves
// the container's volume as a FUSE file, binds a loop device to it, mounts
// the ext4 inside in its own mount namespace, runs systemd-nspawn on it,
// and records every phase in state.json. It returns the exit status for
// the process: the container's, or 1 if it could not run it.
func Supervise(ctx context.Context, cfg SuperviseConfig) int {
	logf := func(format string, args ...any) {
		fmt.Fprintf(cfg.Stderr, "volt: "+format+"\n", args...)
	}
	d, err := instance.NewDir(cfg.StateRoot, instance.Container, cfg.Name)
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
	code, err := supervise(ctx, cfg, sess, logf)
	if err != nil {
		logf("container %s: %v", cfg.Name, err)
		if sess.Record().Phase == instance.PhaseStarting {
			sess.Fail(err)
			return 1
		}
	}
	return code
}

func supervise(ctx context.Context, cfg SuperviseConfig, sess *instance.Session, logf func(string, ...any)) (int, error) {
	d := sess.Dir
	var spec Spec
	if err := instance.ReadJSON(d.SpecPath(), &spec); err != nil {
		return 1, err
	}
	if err := spec.Validate(); err != nil {
		return 1, fmt.Errorf("spec.json: %w", err)
	}
	if err := sess.JoinCgroup(spec.Limits); err != nil {
		return 1, err
	}
	nspawn := cfg.Nspawn
	if nspawn == "" {
		p, err := FindNspawn()
		if err != nil {
			return 1, err
		}
		nspawn = p
	}
	store, err := cas.OpenExisting(spec.Store)
	if err != nil {
		return 1, err
	}
	disk, err := mountDisk(ctx, d, store, logf)
	if err != nil {
		return 1, err
	}
	sess.SetDetail("loop", disk.loop)
	code, sig, runErr := runNspawn(ctx, nspawn, &spec, d, sess, disk.root, logf)
	cleanErr := disk.close()
	if runErr != nil && sess.Record().Phase == instance.PhaseStarting {
		return 1, errors.Join(runErr, cleanErr)
	}
	problem := errors.Join(runErr, cleanErr)
	var codep *int
	if sig == "" {
		codep = &code
	}
	if err := sess.Exited(codep, sig, problem); err != nil {
		return 1, err
	}
	if problem != nil {
		logf("container %s: %v", spec.Name, problem)
	}
	if sig != "" {
		return 128 + int(unix.SignalNum(sig)), nil
	}
	return code, nil
}

// disk is a mounted container root: the volume, its FUSE file, the loop
// device over that, and the ext4 mount.
type disk struct {
	vol  *volume.Volume
	srv  *fusedisk.Server
	loop string
	root string
}

func mountDisk(ctx context.Context, d instance.Dir, store *cas.Store, logf func(string, ...any)) (_ *disk, err error) {
	v, err := volume.Open(ctx, store, d.VolumePath())
	if err != nil {
		return nil, err
	}
	dk := &disk{vol: v}
	defer func() {
		if err != nil {
			dk.close()
		}
	}()
	// The image is untrusted until checked: the superblock decides the
	// loop device's block size and is the first thing a mount would read.
	sbBytes := make([]byte, 1024)
	if _, err := v.ReadAt(sbBytes, 1024); err != nil {
		return nil, fmt.Errorf("read the image's superblock: %w", err)
	}
	sb, err := image.ParseSuperblock(sbBytes)
	if err != nil {
		return nil, err
	}
	mp := d.File(diskName)
	if err := os.WriteFile(mp, nil, 0o600); err != nil {
		return nil, err
	}
	dk.srv, err = fusedisk.Mount(mp, v, fusedisk.Options{Logf: logf})
	if err != nil {
		return nil, err
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := dk.srv.WaitReady(rctx); err != nil {
		return nil, err
	}
	f, err := dk.srv.Open(os.O_RDWR)
	if err != nil {
		return nil, err
	}
	ld, err := loopdev.Attach(f, loopdev.Options{BlockSize: uint32(min(sb.BlockSize, 4096)), NodeDir: d.Path()})
	f.Close()
	if err != nil {
		return nil, err
	}
	dk.loop = ld.Path
	root := d.File(rootfsName)
	if err := os.Mkdir(root, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		ld.Close()
		return nil, err
	}
	if err := unix.Mount(ld.Path, root, "ext4", 0, ""); err != nil {
		ld.Close()
		return nil, fmt.Errorf("mount the image (ext4 on %s): %w", ld.Path, err)
	}
	// The mount holds the device now; with autoclear the kernel detaches
	// it when the mount goes.
	ld.Close()
	dk.root = root
	return dk, nil
}

// close unmounts everything in order and makes the volume's writes durable.
func (dk *disk) close() error {
	var errs []error
	if dk.root != "" {
		if err := unix.Unmount(dk.root, 0); err != nil {
			// Something still holds it (it should not: the container's
			// processes are gone); detach it so the disk can go.
			errs = append(errs, fmt.Errorf("unmount %s: %w", dk.root, err))
			unix.Unmount(dk.root, unix.MNT_DETACH)
		}
		dk.root = ""
	}
	if dk.srv != nil {
		if err := dk.srv.Close(); err != nil {
			errs = append(errs, err)
		}
		dk.srv = nil
	}
	if dk.vol != nil {
		if err := dk.vol.Flush(); err != nil {
			errs = append(errs, err)
		}
		if err := dk.vol.Close(); err != nil {
			errs = append(errs, err)
		}
		dk.vol = nil
	}
	return errors.Join(errs...)
}

// runNspawn runs systemd-nspawn until it exits. It waits for nspawn's own
// READY=1 (the payload has been started) before recording the container
// as running, forwards a stop to the payload, and kills the container
// after the stop timeout.
func runNspawn(ctx context.Context, nspawn string, spec *Spec, d instance.Dir, sess *instance.Session, root string, logf func(string, ...any)) (code int, sig string, err error) {
	notify, err := instance.ListenNotify()
	if err != nil {
		return 0, "", err
	}
	defer notify.Close()
	cmd := exec.Command(nspawn, Args(spec, root)...)
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "NOTIFY_SOCKET=" + notify.Addr()}
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.Dir = "/"
	// If the supervisor dies, nspawn dies with it (the container's
	// processes are then in our cgroup, and ls calls it orphaned).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, unix.SIGTERM, unix.SIGINT, unix.SIGHUP)
	defer signal.Stop(sigs)

	type result struct {
		err error
	}
	started := make(chan error, 1)
	exited := make(chan result, 1)
	go func() {
		// Pdeathsig follows the thread that forked: keep this one alive
		// until nspawn is gone.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		exited <- result{cmd.Wait()}
	}()
	if err := <-started; err != nil {
		return 0, "", fmt.Errorf("start %s: %w", nspawn, err)
	}
	nspawnProc, _ := instance.ProcOf(cmd.Process.Pid)
	ready := false
	var stopDeadline <-chan time.Time
	stopping := false
	msgs := notify.Messages()
	for {
		select {
		case m, ok := <-msgs:
			if !ok {
				msgs = nil
				continue
			}
			if m.Ready && !ready {
				ready = true
				if err := sess.Running(nspawnProc); err != nil {
					logf("record: %v", err)
				}
			}
		case s := <-sigs:
			if !ready {
				// Not yet running: there is nothing to stop in order.
				killContainer(cmd.Process.Pid)
				continue
			}
			if stopping {
				killContainer(cmd.Process.Pid) // a second request: now
				continue
			}
			stopping = true
			sess.Stopping()
			timeout := d.StopTimeout()
			logf("container %s: %v: stopping its workload (killed after %v)", spec.Name, s, timeout)
			termPayload(cmd.Process.Pid)
			stopDeadline = time.After(timeout)
		case <-stopDeadline:
			logf("container %s: still running after the stop timeout: killing it", spec.Name)
			killContainer(cmd.Process.Pid)
			stopDeadline = nil
		case r := <-exited:
			// A short command can end before its READY=1 has been read
			// off the socket: give the datagram a moment.
			grace := time.After(200 * time.Millisecond)
			for !ready && msgs != nil {
				select {
				case m, ok := <-msgs:
					if !ok {
						msgs = nil
					} else if m.Ready {
						ready = true
						sess.Running(nspawnProc)
					}
				case <-grace:
					msgs = nil
				}
			}
			return exitOf(cmd.ProcessState, r.err, ready)
		case <-ctx.Done():
			killContainer(cmd.Process.Pid)
			ctx = context.Background()
		}
	}
}

func exitOf(ps *os.ProcessState, waitErr error, ready bool) (int, string, error) {
	if ps == nil {
		return 0, "", waitErr
	}
	ws, _ := ps.Sys().(syscall.WaitStatus)
	if ws.Signaled() {
		return 0, unix.SignalName(ws.Signal()), nil
	}
	if !ready {
		return ws.ExitStatus(), "", fmt.Errorf("systemd-nspawn exited with status %d before starting the container (see its messages above in the log)", ws.ExitStatus())
	}
	return ws.ExitStatus(), "", nil
}

// containerInit returns the container's PID 1 (nspawn's stub init): the
// child of systemd-nspawn that is PID 1 of its own PID namespace.
func containerInit(nspawnPID int) int { return instance.NamespaceInit(nspawnPID) }

// termPayload sends SIGTERM to the workload itself (PID 2 under the stub
// init, which does not forward SIGTERM), so that a stop reaches the
// program and its exit status is the container's.
func termPayload(nspawnPID int) {
	init := containerInit(nspawnPID)
	if init == 0 {
		return
	}
	kids := instance.Children(init)
	if len(kids) == 0 {
		unix.Kill(init, unix.SIGKILL)
		return
	}
	for _, p := range kids {
		unix.Kill(p, unix.SIGTERM)
	}
}

// killContainer kills the container's PID 1, which takes every process of
// its PID namespace with it; nspawn then exits.
func killContainer(nspawnPID int) {
	if init := containerInit(nspawnPID); init != 0 {
		unix.Kill(init, unix.SIGKILL)
		return
	}
	unix.Kill(nspawnPID, unix.SIGKILL)
}

// FindNspawn finds systemd-nspawn.
func FindNspawn() (string, error) {
	if p, err := exec.LookPath("systemd-nspawn"); err == nil {
		return p, nil
	}
	for _, p := range []string{"/usr/bin/systemd-nspawn", "/bin/systemd-nspawn"} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("systemd-nspawn not found: apt-get install systemd-container")
}
