package microvm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/voltvmm/volt/cas"
	"github.com/voltvmm/volt/cas/volume"
	"github.com/voltvmm/volt/internal/hostfile"
	"github.com/voltvmm/volt/nspawn/image"
	"github.com/voltvmm/volt/nspawn/instance"
)

// Runtime runs VMs from one state root and one CAS store; ls, stop, rm and
// logs are the instance.Set's, shared with containers.
type Runtime struct {
	instance.Set
	// Supervisor is the command that runs Supervise, before its own
	// arguments: volt's "vm _supervise".
	Supervisor []string
	// SupervisorEnv is added to the supervisor's environment.
	SupervisorEnv []string
	ReadyTimeout  time.Duration
}

// NewRuntime returns a VM runtime.
func NewRuntime(stateRoot, storeDir string, m instance.Manager, supervisor []string) *Runtime {
	return &Runtime{Set: instance.Set{Root: stateRoot, Kind: instance.VM, StoreDir: storeDir, Manager: m}, Supervisor: supervisor}
}

// Run creates VM spec.Name over its image and starts it; it returns once
// volt-vmm has built the VM and runs its vCPUs.
func (r *Runtime) Run(ctx context.Context, spec Spec) (instance.Status, error) {
	if err := spec.Validate(); err != nil {
		return instance.Status{}, err
	}
	f, err := hostfile.Open("kernel", spec.Kernel)
	if err != nil {
		return instance.Status{}, fmt.Errorf("--kernel: %w", err)
	}
	f.Close()
	if spec.VMM == "" {
		if spec.VMM, err = FindVMM(); err != nil {
			return instance.Status{}, err
		}
	}
	if err := checkProgram("volt-vmm", spec.VMM); err != nil {
		return instance.Status{}, err
	}
	if spec.Jail != nil {
		// Run fills in the jail; the caller's stays as given.
		j := *spec.Jail
		spec.Jail = &j
		if err := checkProgram("volt-jailer", j.Jailer); err != nil {
			return instance.Status{}, err
		}
		if os.Geteuid() != 0 {
			return instance.Status{}, errors.New("--jail needs root: volt-jailer makes namespaces, device nodes and mounts")
		}
		if j.ChrootBase == "" {
			j.ChrootBase = filepath.Join(r.Root, "jail")
		}
		if err := j.validate(); err != nil {
			return instance.Status{}, err
		}
	}
	if _, err := os.Stat("/dev/kvm"); err != nil {
		return instance.Status{}, ErrNoKVM
	}
	if spec.NetBridge != "" {
		if _, err := os.Stat(filepath.Join("/sys/class/net", spec.NetBridge, "bridge")); err != nil {
			return instance.Status{}, fmt.Errorf("--net-bridge %s: no such bridge on this host", spec.NetBridge)
		}
	}
	d, err := r.Dir(spec.Name)
	if err != nil {
		return instance.Status{}, err
	}
	if err := r.CheckNameFree(ctx, d); err != nil {
		return instance.Status{}, err
	}
	store, err := cas.OpenExisting(r.StoreDir)
	if err != nil {
		return instance.Status{}, err
	}
	digest, _, err := image.Resolve(ctx, store, spec.Image)
	if err != nil {
		return instance.Status{}, err
	}
	sb, err := image.ReadSuperblock(ctx, store, spec.Image)
	if err != nil {
		return instance.Status{}, err
	}
	if sb.BlockSize < image.MinVMBlockSize {
		return instance.Status{}, fmt.Errorf("image %s has %d-byte file system blocks: a VM's volume disk has 4 KiB sectors and the guest could not mount it (rebuild the image with 4 KiB blocks: volt image import --dir)", spec.Image, sb.BlockSize)
	}
	spec.ImageDigest = digest
	spec.Store = store.Dir()
	spec.CreatedAt = time.Now().UTC()
	if sock := hostAPISock(&spec, d); len(sock) > maxSunPath {
		return instance.Status{}, fmt.Errorf("the VM's API socket %s would be %d bytes, more than a Unix socket path takes (%d): use a shorter name, --state-dir or --chroot-base-dir", sock, len(sock), maxSunPath)
	}
	var unlockUIDs func()
	if j := spec.Jail; j != nil {
		if _, err := os.Lstat(JailDir(&spec)); err == nil {
			return instance.Status{}, fmt.Errorf("jail %s exists already: a VM of another state root has this name, or one was left behind (remove it)", JailDir(&spec))
		}
		if unlockUIDs, err = lockUIDs(r.Root); err != nil {
			return instance.Status{}, err
		}
		defer func() {
			if unlockUIDs != nil {
				unlockUIDs()
			}
		}()
		if j.UID, err = pickUID(r.Root, j.UID, DefaultUIDRange, "/etc"); err != nil {
			return instance.Status{}, err
		}
		if j.GID == 0 {
			j.GID = j.UID
		}
		if err := checkReadableBy("--kernel", spec.Kernel, j.UID, j.GID); err != nil {
			return instance.Status{}, err
		}
		if _, err := JailerArgv(&spec, d); err != nil {
			return instance.Status{}, err
		}
	}
	d, done, err := r.Create(ctx, spec.Name, store, digest, spec)
	if err != nil {
		return instance.Status{}, err
	}
	defer done(true)
	if unlockUIDs != nil {
		// spec.json holds the uid now: the next pickUID sees it.
		unlockUIDs()
		unlockUIDs = nil
	}
	l := instance.Launch{
		Dir:          d,
		Argv:         append(append([]string(nil), r.Supervisor...), "--state-dir", d.Root, spec.Name),
		Description:  fmt.Sprintf("volt vm %s (image %s)", spec.Name, spec.Image),
		Limits:       spec.Limits(),
		ReadyTimeout: r.ReadyTimeout,
		Env:          r.SupervisorEnv,
	}
	if err := r.Manager.Start(ctx, l); err != nil {
		return d.Observe(ctx, r.Manager), fmt.Errorf("%w\n(volt vm logs %s shows its console; volt vm rm %s removes it)", err, spec.Name, spec.Name)
	}
	return d.Observe(ctx, r.Manager), nil
}

// Remove removes a stopped VM (force: stop it first) and a jail its dead
// supervisor left behind.
func (r *Runtime) Remove(ctx context.Context, name string, force bool, timeout time.Duration) error {
	d, err := r.Existing(name)
	if err != nil {
		return err
	}
	var spec Spec
	specErr := instance.ReadJSON(d.SpecPath(), &spec)
	if err := r.Set.Remove(ctx, name, force, timeout); err != nil {
		return err
	}
	if specErr == nil && spec.Jail != nil && spec.Jail.ChrootBase != "" {
		return removeJail(&spec, d)
	}
	return nil
}

// checkProgram refuses anything but an executable regular file.
func checkProgram(what, path string) error {
	if err := hostfile.CheckRegular(what, path); err != nil {
		return err
	}
	if unix.Access(path, unix.X_OK) != nil {
		return fmt.Errorf("%s %s is not executable", what, path)
	}
	return nil
}

// Info is one VM for ls.
type Info struct {
	instance.Status
	Image        string `json:"image,omitempty"`
	Kernel       string `json:"kernel,omitempty"`
	MemoryBytes  int64  `json:"memory_bytes,omitempty"`
	CPUs         int    `json:"cpus,omitempty"`
	OverlayBytes int64  `json:"overlay_bytes"`
	// APISock is the host path of volt-vmm's API socket while it runs.
	APISock string `json:"api_sock,omitempty"`
	// Jail says how the VMM is jailed, if it is.
	Jail *JailInfo `json:"jail,omitempty"`
}

// JailInfo is a jailed VM's uid, gid and chroot.
type JailInfo struct {
	UID    int    `json:"uid"`
	GID    int    `json:"gid"`
	Chroot string `json:"chroot"`
}

// List observes every VM.
func (r *Runtime) List(ctx context.Context) ([]Info, error) {
	names, err := r.Names()
	if err != nil {
		return nil, err
	}
	out := make([]Info, 0, len(names))
	for _, n := range names {
		d, err := r.Dir(n)
		if err != nil {
			continue
		}
		out = append(out, r.info(ctx, d))
	}
	return out, nil
}

func (r *Runtime) info(ctx context.Context, d instance.Dir) Info {
	in := Info{Status: d.Observe(ctx, r.Manager)}
	var spec Spec
	if err := instance.ReadJSON(d.SpecPath(), &spec); err == nil {
		in.Image, in.Kernel, in.MemoryBytes, in.CPUs = spec.Image, spec.Kernel, spec.MemoryBytes, spec.CPUs
		if j := spec.Jail; j != nil && j.ChrootBase != "" {
			in.Jail = &JailInfo{UID: j.UID, GID: j.GID, Chroot: ChrootDir(&spec)}
		}
	}
	if in.State.Live() {
		in.APISock = in.Record.Details[apiSockDetail]
	}
	if vi, err := volume.ReadInfo(d.VolumePath()); err == nil {
		in.OverlayBytes = vi.OverlayOnDisk
	}
	return in
}

// Inspect observes one VM.
func (r *Runtime) Inspect(ctx context.Context, name string) (Info, error) {
	d, err := r.Existing(name)
	if err != nil {
		return Info{}, err
	}
	return r.info(ctx, d), nil
}
