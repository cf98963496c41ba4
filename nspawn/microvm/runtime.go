package microvm

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

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
	if err := hostfile.CheckRegular("volt-vmm", spec.VMM); err != nil {
		return instance.Status{}, err
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
	d, done, err := r.Create(ctx, spec.Name, store, digest, spec)
	if err != nil {
		return instance.Status{}, err
	}
	defer done(true)
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

// Info is one VM for ls.
type Info struct {
	instance.Status
	Image        string `json:"image,omitempty"`
	Kernel       string `json:"kernel,omitempty"`
	MemoryBytes  int64  `json:"memory_bytes,omitempty"`
	CPUs         int    `json:"cpus,omitempty"`
	OverlayBytes int64  `json:"overlay_bytes"`
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
