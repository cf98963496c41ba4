package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/voltvmm/volt/sandbox"
	"github.com/voltvmm/volt/vmm"
)

// confinement turns the confinement flags into what vmm.Run applies once
// the VM is built or restored.
func confinement(f *flags) (*vmm.Confinement, error) {
	level, err := sandbox.ParseLevel(f.seccompLevel)
	if err != nil {
		return nil, fmt.Errorf("--seccomp-level: %w", err)
	}
	if f.noSeccomp {
		if f.fs.Changed("seccomp-level") && level != sandbox.LevelOff {
			return nil, fmt.Errorf("--no-seccomp and --seccomp-level %s contradict each other", f.seccompLevel)
		}
		level = sandbox.LevelOff
	}
	if builtWithCgo && level != sandbox.LevelOff {
		return nil, errors.New("this volt-vmm was built with cgo, and glibc's thread creation needs system calls its seccomp filters refuse: build it with CGO_ENABLED=0 (scripts/setup does), or run it with --seccomp-level 0")
	}
	c := &vmm.Confinement{
		Seccomp:          sandbox.Options{Level: level, Action: sandbox.ActionKill},
		Landlock:         !f.noLandlock,
		KeepCapabilities: f.keepCapabilities,
	}
	for _, d := range f.snapshotDirs {
		abs, err := filepath.Abs(d)
		if err != nil {
			return nil, fmt.Errorf("--snapshot-dir %s: %w", d, err)
		}
		if fi, err := os.Stat(abs); err != nil {
			return nil, fmt.Errorf("--snapshot-dir: %w", err)
		} else if !fi.IsDir() {
			return nil, fmt.Errorf("--snapshot-dir %s: not a directory", d)
		}
		c.SnapshotDirs = append(c.SnapshotDirs, abs)
	}
	if f.apiSock != "" {
		abs, err := filepath.Abs(f.apiSock)
		if err != nil {
			return nil, fmt.Errorf("--api-sock %s: %w", f.apiSock, err)
		}
		c.SocketDirs = append(c.SocketDirs, filepath.Dir(abs))
	}
	if f.seccompViolation || f.openAfterConfine != "" {
		c.AfterConfine = testHooks(f.seccompViolation, f.openAfterConfine)
	}
	return c, nil
}

// confineAPIThread is the API server's thread filter: on the calling
// thread, locked to its goroutine for good, the api role's filter on top of
// the process's.
func confineAPIThread() error {
	if err := sandbox.ApplyThread(sandbox.RoleAPI); err != nil {
		return fmt.Errorf("seccomp filter of an api thread: %w", err)
	}
	return nil
}

// testHooks are the hidden --test-* confinement checks: an open of a path
// the rules should refuse, logged with its result, and a system call that
// no filter allows, which must kill the process with SIGSYS.
func testHooks(violate bool, open string) func(*slog.Logger) {
	return func(log *slog.Logger) {
		if open != "" {
			f, err := os.Open(open)
			if err == nil {
				f.Close()
			}
			log.Warn("test: open after confinement", "path", open, "err", fmt.Sprint(err))
		}
		if violate {
			// kexec_file_load is in no role's table; unfiltered, it
			// fails (bad descriptors, or no CAP_SYS_BOOT) and the VMM
			// says so.
			err := unix.KexecFileLoad(-1, -1, "", 0)
			log.Error("test: kexec_file_load returned instead of killing the VMM", "err", fmt.Sprint(err))
		}
	}
}
