// Package nspawn runs Volt's containers: systemd-nspawn over a
// copy-on-write view of an image in the CAS, with no daemon. Each
// container is a supervisor process (Supervise) that serves its cas/volume
// through FUSE and a loop device, mounts the ext4 image privately and runs
// systemd-nspawn --keep-unit on it; the supervisor is a transient systemd
// unit where systemd is PID 1 and a detached child otherwise (package
// instance). VMs share the same images, volumes, state layout and
// managers (package microvm). See docs/containers.md.
package nspawn

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/voltvmm/volt/cas"
	"github.com/voltvmm/volt/cas/volume"
	"github.com/voltvmm/volt/nspawn/image"
	"github.com/voltvmm/volt/nspawn/instance"
)

// Runtime runs containers from one state root and one CAS store. Its ls,
// stop, rm and logs are the instance.Set's, shared with VMs.
type Runtime struct {
	instance.Set
	// Supervisor is the command that runs Supervise, before its own
	// arguments (--state-dir ROOT NAME): volt's "container _supervise".
	Supervisor []string
	// SupervisorEnv is added to the supervisor's environment.
	SupervisorEnv []string
	// ReadyTimeout bounds the wait for a container to start (default 60 s).
	ReadyTimeout time.Duration
}

// NewRuntime returns a container runtime.
func NewRuntime(stateRoot, storeDir string, m instance.Manager, supervisor []string) *Runtime {
	return &Runtime{Set: instance.Set{Root: stateRoot, Kind: instance.Container, StoreDir: storeDir, Manager: m}, Supervisor: supervisor}
}

// Run creates container spec.Name over its image and starts it; it returns
// once the workload runs (or with why it could not start). The spec's
// Image, Command and options are the caller's; the rest is filled in.
func (r *Runtime) Run(ctx context.Context, spec Spec) (instance.Status, error) {
	if err := spec.Validate(); err != nil {
		return instance.Status{}, err
	}
	for _, b := range spec.Binds {
		if err := b.Check(); err != nil {
			return instance.Status{}, err
		}
	}
	if spec.Network.Mode == NetBridge {
		if _, err := os.Stat(filepath.Join("/sys/class/net", spec.Network.Bridge, "bridge")); err != nil {
			return instance.Status{}, fmt.Errorf("--network bridge=%s: no such bridge on this host (ip link add %s type bridge)", spec.Network.Bridge, spec.Network.Bridge)
		}
	}
	if _, err := FindNspawn(); err != nil {
		return instance.Status{}, err
	}
	if os.Geteuid() != 0 {
		return instance.Status{}, errors.New("containers need root: the supervisor mounts the image (FUSE, a loop device, ext4) and systemd-nspawn makes the namespaces")
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
	spec.ImageDigest = digest
	spec.Store = store.Dir()
	spec.CreatedAt = time.Now().UTC()
	d, done, err := r.Create(ctx, spec.Name, store, digest, spec)
	if err != nil {
		return instance.Status{}, err
	}
	l := instance.Launch{
		Dir:          d,
		Argv:         append(append([]string(nil), r.Supervisor...), "--state-dir", d.Root, spec.Name),
		Description:  fmt.Sprintf("volt container %s (image %s)", spec.Name, spec.Image),
		Limits:       spec.Limits,
		ReadyTimeout: r.ReadyTimeout,
		Env:          r.SupervisorEnv,
	}
	// From here the log and the record tell what happened: keep them.
	defer done(true)
	if err := r.Manager.Start(ctx, l); err != nil {
		return d.Observe(ctx, r.Manager), fmt.Errorf("%w\n(volt container logs %s shows its output; volt container rm %s removes it)", err, spec.Name, spec.Name)
	}
	return d.Observe(ctx, r.Manager), nil
}

// Info is one container for ls.
type Info struct {
	instance.Status
	Image   string   `json:"image,omitempty"`
	Command []string `json:"command,omitempty"`
	Network string   `json:"network,omitempty"`
	// OverlayBytes is the instance's own writes on disk.
	OverlayBytes int64 `json:"overlay_bytes"`
}

// List observes every container.
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
		in.Image, in.Command, in.Network = spec.Image, spec.Command, spec.Network.String()
	} else if in.State == instance.StateCreated {
		in.Detail = "incomplete: " + err.Error()
	}
	if vi, err := volume.ReadInfo(d.VolumePath()); err == nil {
		in.OverlayBytes = vi.OverlayOnDisk
	}
	return in
}

// Inspect observes one container.
func (r *Runtime) Inspect(ctx context.Context, name string) (Info, error) {
	d, err := r.Existing(name)
	if err != nil {
		return Info{}, err
	}
	return r.info(ctx, d), nil
}

// CommitInstance turns a stopped instance's writes into image imageName.
func CommitInstance(ctx context.Context, d instance.Dir, storeDir string, q instance.UnitQuerier, imageName string, force bool) (*volume.CommitResult, error) {
	if err := image.ValidateName(imageName); err != nil {
		return nil, err
	}
	if ok, err := d.Exists(); err != nil || !ok {
		if err == nil {
			err = fmt.Errorf("%w: %s %s", instance.ErrNotFound, d.Kind, d.Name)
		}
		return nil, err
	}
	store, err := cas.OpenExisting(storeDir)
	if err != nil {
		return nil, err
	}
	if !force {
		if dg, err := store.Ref(image.Ref(imageName)); err == nil {
			return nil, fmt.Errorf("%w: %q is manifest %s; use --force to replace it", image.ErrExists, imageName, dg.Short())
		}
	}
	return instance.Commit(ctx, d, store, q, image.Ref(imageName))
}

// Commit turns a stopped container's writes into image imageName.
func (r *Runtime) Commit(ctx context.Context, name, imageName string, force bool) (*volume.CommitResult, error) {
	d, err := r.Dir(name)
	if err != nil {
		return nil, err
	}
	return CommitInstance(ctx, d, r.StoreDir, r.Manager, imageName, force)
}

// ShellQuote renders argv for messages.
func ShellQuote(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		if a != "" && !strings.ContainsAny(a, " \t\n'\"\\$`;&|<>(){}*?[]#~!") {
			q[i] = a
			continue
		}
		q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}
