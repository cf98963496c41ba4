package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/voltvmm/volt/guest/probe"
)

// RepoRoot finds the repository by walking up from the working directory to
// Volt's go.mod; the default paths (bin/volt-vmm, build/guest/…) are
// relative to it.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find repository root: %w", err)
	}
	for {
		if data, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && bytes.Contains(data, []byte("module github.com/voltvmm/volt\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("find repository root: no go.mod of github.com/voltvmm/volt above the working directory; pass --vmm-bin, --kernel and --floor-dir")
		}
		dir = parent
	}
}

// Where scripts/setup puts what voltbench runs, relative to the repository.
const (
	DefaultVMMBin      = "bin/volt-vmm"
	DefaultProbe       = "build/guest/probe.elf"
	DefaultLinuxKernel = "build/guest/vmlinux"
	DefaultLinuxInitrd = "build/guest/initramfs.cpio"
	DefaultFloorDir    = "build/floor" // bench/floor/build.sh's output
)

// root finds the repository once, only when a default is needed.
type root struct {
	dir string
	err error
	ok  bool
}

func (r *root) path(rel string) (string, error) {
	if !r.ok {
		r.dir, r.err = RepoRoot()
		r.ok = true
	}
	if r.err != nil {
		return "", r.err
	}
	return filepath.Join(r.dir, rel), nil
}

// Resolve fills the paths cfg leaves empty with the defaults under the
// repository (the probe is built when it is missing; $VOLT_PROBE names
// another), finds qemuBin on $PATH for VMMQEMU, and checks that every file
// is there, with a message that says how to make it. The result is
// validated.
func Resolve(ctx context.Context, cfg Config, qemuBin string) (Config, error) {
	var r root
	fill := func(p *string, rel string) error {
		if *p != "" {
			return nil
		}
		var err error
		*p, err = r.path(rel)
		return err
	}
	switch cfg.VMM {
	case VMMVolt:
		if err := fill(&cfg.VMMBin, DefaultVMMBin); err != nil {
			return cfg, err
		}
		if err := regular(cfg.VMMBin); err != nil {
			return cfg, fmt.Errorf("volt-vmm: %w (build it: go build -o bin/volt-vmm ./cmd/volt-vmm, or pass --vmm-bin)", err)
		}
	case VMMQEMU:
		p, err := exec.LookPath(qemuBin)
		if err != nil {
			return cfg, fmt.Errorf("qemu: %w (apt-get install qemu-system-x86, or pass --qemu-bin)", err)
		}
		cfg.VMMBin = p
	default:
		return cfg, fmt.Errorf("--vmm %q: want %s or %s", cfg.VMM, VMMVolt, VMMQEMU)
	}
	switch cfg.Guest {
	case GuestProbe:
		if cfg.Kernel == "" {
			def, err := r.path(DefaultProbe)
			if err != nil {
				return cfg, err
			}
			cfg.Kernel = def
			if regular(def) != nil {
				// probe.Path honours $VOLT_PROBE and otherwise builds.
				if cfg.Kernel, err = probe.Path(ctx, filepath.Dir(def)); err != nil {
					return cfg, fmt.Errorf("probe guest: %w", err)
				}
			}
		}
	case GuestLinux:
		if err := fill(&cfg.Kernel, DefaultLinuxKernel); err != nil {
			return cfg, err
		}
		if err := fill(&cfg.Initrd, DefaultLinuxInitrd); err != nil {
			return cfg, err
		}
		for _, p := range []string{cfg.Kernel, cfg.Initrd} {
			if err := regular(p); err != nil {
				return cfg, fmt.Errorf("linux guest: %w (build it with guest/kernel/build.sh and guest/init/build.sh)", err)
			}
		}
	default:
		return cfg, fmt.Errorf("--guest %q: want %s or %s", cfg.Guest, GuestProbe, GuestLinux)
	}
	if err := regular(cfg.Kernel); err != nil {
		return cfg, fmt.Errorf("kernel: %w", err)
	}
	return cfg, cfg.Validate()
}

// regular checks that path names a regular file, without opening it: a
// FIFO or a device at a user's path is refused, never waited on.
func regular(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s: not a regular file (%s)", path, fi.Mode().Type())
	}
	return nil
}

// FloorDir returns dir, or the default floor directory under the
// repository when dir is empty.
func FloorDir(dir string) (string, error) {
	if dir != "" {
		return dir, nil
	}
	var r root
	return r.path(DefaultFloorDir)
}
