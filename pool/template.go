package pool

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/voltvmm/volt/guest/agent"
	"github.com/voltvmm/volt/guest/marker"
	pc "github.com/voltvmm/volt/pool/client"
	"github.com/voltvmm/volt/vmm/api/types"
)

const templateFile = "template.json"

// MaxWarm bounds a template's warm target.
const MaxWarm = 1024

var templateName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// validateSpec checks a template spec as a caller's input.
func validateSpec(s *pc.TemplateSpec) error {
	if !templateName.MatchString(s.Name) || strings.Contains(s.Name, "..") {
		return errorf(ErrBadRequest, "template name %q: 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit, no \"..\"", s.Name)
	}
	if s.Warm < 0 || s.Warm > MaxWarm {
		return errorf(ErrBadRequest, "warm %d out of range: 0 to %d", s.Warm, MaxWarm)
	}
	if s.Prime && !s.Vsock {
		return errorf(ErrBadRequest, "prime asks the guest's agent a ping over vsock: it needs vsock")
	}
	if s.Network != nil {
		n := s.Network
		if n.IfaceID == "" {
			n.IfaceID = "eth0"
		}
		if n.HostDevName == "" || len(n.HostDevName) > 15 || strings.ContainsAny(n.HostDevName, "/ \x00") {
			return errorf(ErrBadRequest, "network host_dev_name %q: a TAP name of 1 to 15 bytes", n.HostDevName)
		}
	}
	if s.ReadyTimeout != "" {
		d, err := time.ParseDuration(s.ReadyTimeout)
		if err != nil || d <= 0 || d > time.Hour {
			return errorf(ErrBadRequest, "ready_timeout %q: a duration up to 1h", s.ReadyTimeout)
		}
	}
	if s.FromSnapshot != "" {
		if s.Kernel != "" || s.Initrd != "" || s.Rootfs != "" || s.Cmdline != "" || s.MemoryMiB != 0 || s.CPUs != 0 || s.GuestProfile != "" {
			return errorf(ErrBadRequest, "from_snapshot takes the machine from the snapshot: kernel, initrd, rootfs, cmdline, memory, cpus and guest_profile do not apply")
		}
		if !filepath.IsAbs(s.FromSnapshot) {
			return errorf(ErrBadRequest, "from_snapshot %q must be an absolute path", s.FromSnapshot)
		}
		return nil
	}
	if s.Kernel == "" {
		return errorf(ErrBadRequest, "a template needs a kernel (or from_snapshot)")
	}
	for _, f := range []struct{ what, path string }{{"kernel", s.Kernel}, {"initrd", s.Initrd}, {"rootfs", s.Rootfs}} {
		if f.path == "" {
			continue
		}
		if !filepath.IsAbs(f.path) {
			return errorf(ErrBadRequest, "%s %q must be an absolute path (the daemon does not share the caller's directory)", f.what, f.path)
		}
		st, err := os.Stat(f.path)
		if err != nil {
			return errorf(ErrBadRequest, "%s: %v", f.what, err)
		}
		if !st.Mode().IsRegular() {
			return errorf(ErrBadRequest, "%s %s is not a regular file", f.what, f.path)
		}
	}
	if s.MemoryMiB == 0 {
		s.MemoryMiB = 128
	}
	if s.CPUs == 0 {
		s.CPUs = 1
	}
	if s.MemoryMiB < 2 || s.MemoryMiB > 1<<20 || s.CPUs < 1 || s.CPUs > 32 {
		return errorf(ErrBadRequest, "memory %d MiB / cpus %d out of range (2 MiB to 1 TiB, 1 to 32 vCPUs)", s.MemoryMiB, s.CPUs)
	}
	return nil
}

func (p *Pool) templateDir(name string) string {
	return filepath.Join(p.cfg.StateDir, "templates", name)
}

// loadTemplates reads every templates/NAME/template.json; a template whose
// files are damaged is logged and skipped, never half-loaded.
func (p *Pool) loadTemplates(ctx context.Context) error {
	root := filepath.Join(p.cfg.StateDir, "templates")
	ents, err := os.ReadDir(root)
	if err != nil {
		return fmt.Errorf("pool: templates: %w", err)
	}
	cs, _ := p.cfg.Store.(*CASStore)
	dirs := map[string]bool{}
	for _, e := range ents {
		name := e.Name()
		if strings.HasPrefix(name, ".") {
			// A staging directory of a create that a killed daemon
			// never finished, and what its VMM put in the store.
			if cs != nil {
				if err := cs.Abandon(ctx, filepath.Join(root, name, "snapshot")); err != nil {
					p.cfg.Log.Error("abandoned template create", "dir", name, "err", err)
				}
			}
			os.RemoveAll(filepath.Join(root, name))
			continue
		}
		dirs[name] = true
		var t pc.Template
		if err := readJSON(filepath.Join(root, name, templateFile), &t); err != nil {
			p.cfg.Log.Error("template skipped", "template", name, "err", err)
			continue
		}
		if t.Name != name {
			p.cfg.Log.Error("template skipped: its record names another", "dir", name, "name", t.Name)
			continue
		}
		snap, err := p.cfg.Store.Get(ctx, name)
		if err != nil {
			p.cfg.Log.Error("template skipped", "template", name, "err", err)
			continue
		}
		p.templates[name] = &tmpl{t: t, snap: snap}
	}
	if cs != nil {
		// Refs of this pool whose template has no directory: a daemon
		// killed between naming the memory and keeping the template.
		// A template that is there but could not be loaded keeps its
		// ref (it may be repaired).
		removed, err := cs.Prune(dirs)
		if err != nil {
			p.cfg.Log.Error("prune CAS refs", "err", err)
		}
		for _, r := range removed {
			p.cfg.Log.Info("removed a CAS ref of no template", "ref", r)
		}
	}
	return nil
}

// Templates lists the templates by name.
func (p *Pool) Templates() []pc.Template {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := []pc.Template{}
	for _, t := range p.templates {
		if !t.creating && !t.removed {
			out = append(out, t.t)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// CreateTemplate boots spec's guest once, waits until it is ready (its agent
// answers a ping over vsock; without vsock, its ready boot marker), pauses
// it and stores its snapshot; or adopts spec.FromSnapshot after a trial
// restore. It returns once the template is usable.
func (p *Pool) CreateTemplate(ctx context.Context, spec pc.TemplateSpec) (pc.Template, error) {
	if err := validateSpec(&spec); err != nil {
		return pc.Template{}, err
	}
	p.mu.Lock()
	if p.draining {
		p.mu.Unlock()
		return pc.Template{}, errorf(ErrUnavailable, "voltpool is shutting down")
	}
	if _, ok := p.templates[spec.Name]; ok {
		p.mu.Unlock()
		return pc.Template{}, errorf(ErrExists, "template %q already exists (voltpool template rm it first)", spec.Name)
	}
	t := &tmpl{creating: true, t: pc.Template{TemplateSpec: spec}}
	p.templates[spec.Name] = t
	p.mu.Unlock()

	tpl, snap, err := p.buildTemplate(ctx, spec)
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		delete(p.templates, spec.Name)
		p.metrics.failures.WithLabelValues(spec.Name, "template").Inc()
		return pc.Template{}, err
	}
	t.t, t.snap, t.creating = tpl, snap, false
	p.kick()
	return tpl, nil
}

func (p *Pool) buildTemplate(ctx context.Context, spec pc.TemplateSpec) (pc.Template, Snapshot, error) {
	root := filepath.Join(p.cfg.StateDir, "templates")
	staging, err := os.MkdirTemp(root, ".create-"+spec.Name+"-")
	if err != nil {
		return pc.Template{}, Snapshot{}, fmt.Errorf("template %s: %w", spec.Name, err)
	}
	defer os.RemoveAll(staging)
	snapDir := filepath.Join(staging, "snapshot")
	if err := os.Mkdir(snapDir, 0o750); err != nil {
		return pc.Template{}, Snapshot{}, err
	}
	tpl := pc.Template{TemplateSpec: spec, CreatedAt: time.Now().UTC()}
	stored := false
	if cs, ok := p.cfg.Store.(*CASStore); ok {
		// A template VMM that wrote into the store before the create
		// failed left its memory under its own ref.
		defer func() {
			if !stored {
				if err := cs.Abandon(context.WithoutCancel(ctx), snapDir); err != nil {
					p.cfg.Log.Error("template create: undo the CAS snapshot", "template", spec.Name, "err", err)
				}
			}
		}()
	}
	if spec.FromSnapshot != "" {
		for _, f := range []string{types.SnapshotStateFile, types.SnapshotMemFile} {
			if err := copySparse(filepath.Join(spec.FromSnapshot, f), filepath.Join(snapDir, f)); err != nil {
				return pc.Template{}, Snapshot{}, errorf(ErrBadRequest, "template %s from %s: %v", spec.Name, spec.FromSnapshot, err)
			}
		}
	} else {
		d, err := p.bootTemplate(ctx, spec, staging, snapDir)
		if err != nil {
			return pc.Template{}, Snapshot{}, fmt.Errorf("template %s: %w", spec.Name, err)
		}
		tpl.BootToReady = d
	}
	if err := os.MkdirAll(p.templateDir(spec.Name), 0o750); err != nil {
		return pc.Template{}, Snapshot{}, err
	}
	// Stored as clones will load it: a flat snapshot given to a CAS pool
	// is imported into the store here.
	snap, err := p.cfg.Store.Put(ctx, spec.Name, snapDir)
	if err != nil {
		os.RemoveAll(p.templateDir(spec.Name))
		if spec.FromSnapshot != "" {
			return pc.Template{}, Snapshot{}, errorf(ErrBadRequest, "template %s from %s: %v", spec.Name, spec.FromSnapshot, err)
		}
		return pc.Template{}, Snapshot{}, err
	}
	stored = true
	if spec.FromSnapshot != "" {
		// A trial restore, as clones restore: a snapshot this
		// volt-vmm cannot load is refused now, not at every refill.
		v, err := p.restore(ctx, spec.Name, snap, spec, false)
		if err == nil {
			p.mu.Lock()
			p.stop(v)
			p.mu.Unlock()
			<-v.proc.done
		}
		if err != nil {
			p.cfg.Store.Remove(ctx, spec.Name)
			os.RemoveAll(p.templateDir(spec.Name))
			return pc.Template{}, Snapshot{}, errorf(ErrBadRequest, "template %s: %s does not restore: %v", spec.Name, spec.FromSnapshot, err)
		}
	}
	tpl.MemBytes = snap.MemBytes
	// The record last: a template without its record is not loaded
	// (loadTemplates skips it), so a crash here leaves no half template.
	if err := writeJSON(filepath.Join(p.templateDir(spec.Name), templateFile), tpl, true); err != nil {
		p.cfg.Store.Remove(ctx, spec.Name)
		os.RemoveAll(p.templateDir(spec.Name))
		return pc.Template{}, Snapshot{}, err
	}
	return tpl, snap, nil
}

// bootTemplate boots the guest in a VMM of its own under staging, waits for
// it to be ready, pauses it and snapshots it into snapDir: with a CAS store
// its memory goes straight into the store, unless the VMM is jailed (it
// cannot write the store) or SnapshotViaFile is set; then, as without a
// store, to a memory file (which a CASStore imports).
func (p *Pool) bootTemplate(ctx context.Context, spec pc.TemplateSpec, staging, snapDir string) (time.Duration, error) {
	timeout := 60 * time.Second
	if spec.ReadyTimeout != "" {
		timeout, _ = time.ParseDuration(spec.ReadyTimeout)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// Paths as the VMM sees them: the host's, or the chroot's.
	kernel, initrd, rootfs, snapAt := spec.Kernel, spec.Initrd, spec.Rootfs, snapDir
	console := filepath.Join(staging, "console.log")
	metricsPath := filepath.Join(staging, "metrics.json")
	var js *jailSpawn
	if p.cfg.Jail != nil {
		binds := []jailBind{{host: spec.Kernel, jail: "/kernel"}, {host: snapDir, jail: jailSnapshotDir, writable: true}}
		kernel, snapAt, console, metricsPath = "/kernel", jailSnapshotDir, "/console.log", "/metrics.json"
		if spec.Initrd != "" {
			binds, initrd = append(binds, jailBind{host: spec.Initrd, jail: "/initrd"}), "/initrd"
		}
		if spec.Rootfs != "" {
			binds, rootfs = append(binds, jailBind{host: spec.Rootfs, jail: "/rootfs"}), "/rootfs"
		}
		var err error
		if js, err = p.jailFor("tpl-"+newID(), binds, ""); err != nil {
			return 0, err
		}
		// The VMM writes its snapshot here as its own uid; Put makes
		// the files root's again.
		if err := os.Lchown(snapDir, js.uid, js.uid); err != nil {
			p.uids.put(js.uid)
			return 0, err
		}
		defer os.Lchown(snapDir, 0, 0)
	}
	toCAS := p.cas != nil && js == nil && !p.cfg.SnapshotViaFile
	// The VMM is confined once the guest runs: snapDir (and the CAS
	// store its memory goes to) are the only directories its snapshot
	// may be written to.
	args := []string{"--console", "file:" + console, "--snapshot-dir", snapAt}
	if toCAS {
		args = append(args, "--snapshot-dir", p.cas.Dir())
	}
	if spec.GuestProfile != "" {
		args = append(args, "--guest-profile", spec.GuestProfile)
	}
	v, err := p.spawnVM(ctx, spawnSpec{id: "template", template: spec.Name, dir: filepath.Join(staging, "vm"), vmmBin: p.cfg.VMMBin,
		extraArgs: p.cfg.vmmArgs(args), network: spec.Network, vsock: spec.Vsock, jail: js})
	if v == nil {
		return 0, err
	}
	// This VMM is not in p.vms: it lives only for this call.
	go v.proc.wait()
	defer func() {
		v.proc.kill()
		<-v.proc.done
		v.api.Close()
		p.releaseJail(v)
	}()
	if err != nil {
		return 0, err
	}
	fail := func(err error) (time.Duration, error) {
		select {
		case <-v.proc.done:
			err = fmt.Errorf("%w; the VMM exited: %s", err, v.proc.exited())
		default:
		}
		if tail := logTail(v.dir); tail != "" {
			err = fmt.Errorf("%w (VMM log: %s)", err, tail)
		}
		if c := tailFile(v.hostPath(console)); c != "" {
			err = fmt.Errorf("%w (console: %s)", err, c)
		}
		return 0, err
	}
	c := v.api
	if err := c.PutMachineConfig(ctx, types.MachineConfiguration{VCPUCount: spec.CPUs, MemSizeMib: spec.MemoryMiB}); err != nil {
		return fail(err)
	}
	if err := c.PutBootSource(ctx, types.BootSource{KernelImagePath: kernel, InitrdPath: initrd, BootArgs: spec.Cmdline}); err != nil {
		return fail(err)
	}
	if spec.Rootfs != "" {
		// Every clone restores with this same disk: it is attached
		// read-only (the kernel mounts a read-only root read-only), or
		// clones would write into one file under each other. Writable
		// per-clone disks come with the CAS volume backend.
		ro := true
		if err := c.PutDrive(ctx, types.Drive{DriveID: "rootfs", PathOnHost: rootfs, IsRootDevice: true, IsReadOnly: &ro}); err != nil {
			return fail(err)
		}
	}
	if n := spec.Network; n != nil {
		if err := c.PutNetworkInterface(ctx, types.NetworkInterface{IfaceID: n.IfaceID, HostDevName: n.HostDevName, GuestMAC: n.GuestMAC}); err != nil {
			return fail(err)
		}
	}
	if spec.Vsock {
		uds := v.vsockUDS
		if js != nil {
			uds = jailVsockSock
		}
		if err := c.PutVsock(ctx, types.Vsock{GuestCID: 3, UDSPath: uds}); err != nil {
			return fail(err)
		}
	}
	if !spec.Vsock {
		if err := c.PutMetrics(ctx, types.Metrics{MetricsPath: metricsPath}); err != nil {
			return fail(err)
		}
	}
	start := time.Now()
	if err := c.Start(ctx); err != nil {
		return fail(err)
	}
	if err := waitReady(ctx, v, spec.Vsock, v.hostPath(metricsPath), p.cfg.VsockConnectTimeout); err != nil {
		return fail(err)
	}
	ready := time.Since(start)
	if err := c.Pause(ctx); err != nil {
		return fail(err)
	}
	sp := types.SnapshotCreateParams{SnapshotPath: filepath.Join(snapAt, types.SnapshotStateFile), SnapshotType: types.SnapshotFull}
	if toCAS {
		sp.MemBackend = &types.MemoryBackend{BackendType: types.MemBackendCas, BackendPath: p.cas.Dir()}
	} else {
		sp.MemFilePath = filepath.Join(snapAt, types.SnapshotMemFile)
	}
	if err := c.CreateSnapshot(ctx, sp); err != nil {
		return fail(err)
	}
	return ready, nil
}

// waitReady polls until the guest is ready for work: its agent answers a
// ping on vsock, or, for a guest without vsock, the VMM's boot timeline has
// the ready marker (0x61), read through FlushMetrics.
//
// Each ping may take pingTimeout (at least a second) before it is given up
// and tried again: with a VMM whose --vsock-connect-timeout is long, a
// CONNECT a busy guest has not answered yet stays open, and a poller that
// gave up on it every second would flood the guest with connections its
// agent then answers long after their callers left (a Linux template boot
// at load 6-17 with an 18-minute connect timeout was still not ready after
// 9 minutes, its console full of "write vsock-conn: broken pipe").
func waitReady(ctx context.Context, v *vm, vsock bool, metricsPath string, pingTimeout time.Duration) error {
	var last error
	for {
		select {
		case <-v.proc.done:
			return fmt.Errorf("the guest stopped before it was ready (%s)", v.proc.exited())
		default:
		}
		var err error
		if vsock {
			err = pingAgent(ctx, v.vsockUDS, pingTimeout)
		} else {
			err = readyMarker(ctx, v, metricsPath)
		}
		if err == nil {
			return nil
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("the guest was not ready in time: %w (last: %v)", ctx.Err(), last)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func pingAgent(ctx context.Context, uds string, timeout time.Duration) error {
	pctx, cancel := context.WithTimeout(ctx, max(timeout, time.Second))
	defer cancel()
	conn, err := agent.DialHybrid(pctx, uds, agent.Port)
	if err != nil {
		return err
	}
	defer conn.Close()
	return agent.Ping(pctx, conn)
}

// vmmMetrics is the part of volt-vmm's metrics line the pool reads.
type vmmMetrics struct {
	VMM struct {
		BootTimeline map[string]int64 `json:"boot_timeline_us"`
	} `json:"vmm"`
}

func readyMarker(ctx context.Context, v *vm, path string) error {
	if err := v.api.FlushMetrics(ctx); err != nil {
		return err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	var m vmmMetrics
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &m); err != nil {
		return fmt.Errorf("metrics line: %w", err)
	}
	if _, ok := m.VMM.BootTimeline[marker.Ready.String()]; !ok {
		return errors.New("no ready marker yet")
	}
	return nil
}

func tailFile(path string) string {
	b, err := os.ReadFile(path)
	if err != nil || len(b) == 0 {
		return ""
	}
	if len(b) > 512 {
		b = b[len(b)-512:]
	}
	return strings.Join(strings.Fields(string(b)), " ")
}

// RemoveTemplate stops name's warm VMMs and removes it from disk. Leased VMs
// of it run until released (their memory stays mapped).
func (p *Pool) RemoveTemplate(ctx context.Context, name string) error {
	p.mu.Lock()
	t := p.templates[name]
	if t == nil || t.removed {
		p.mu.Unlock()
		return errorf(ErrNotFound, "no template %q", name)
	}
	if t.creating {
		p.mu.Unlock()
		return errorf(ErrUnavailable, "template %q is still being created", name)
	}
	t.removed = true
	for _, v := range p.vms {
		if v.template == name && v.state != vmLeased {
			p.stop(v) // warm, or a refill still loading
		}
	}
	t.warm = nil
	p.mu.Unlock()
	// Its refills and warm VMMs hold leases on its memory: they are gone
	// before the removal returns, so that a GC run next frees what only
	// this template used.
	if err := p.awaitUnleasedGone(ctx, t, name); err != nil {
		return err
	}
	// The record first: without it the template is gone on restart even
	// if what follows fails.
	errRec := os.Remove(filepath.Join(p.templateDir(name), templateFile))
	errSnap := p.cfg.Store.Remove(ctx, name)
	errDir := os.RemoveAll(p.templateDir(name))
	p.mu.Lock()
	if p.templates[name] == t {
		delete(p.templates, name)
	}
	p.mu.Unlock()
	if errRec != nil && !errors.Is(errRec, os.ErrNotExist) {
		return fmt.Errorf("remove template %s: %w", name, errRec)
	}
	return errors.Join(errSnap, errDir)
}

// awaitUnleasedGone waits until no refill of t is in flight and no
// stopped VMM of template name is left.
func (p *Pool) awaitUnleasedGone(ctx context.Context, t *tmpl, name string) error {
	for {
		p.mu.Lock()
		busy := t.starting
		for _, v := range p.vms {
			if v.template == name && v.state == vmStopping {
				busy++
			}
		}
		changed := p.changed
		p.mu.Unlock()
		if busy == 0 {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("remove template %s: %d of its VMMs are still stopping: %w", name, busy, ctx.Err())
		}
	}
}

// SetWarm changes name's warm target (persisted).
func (p *Pool) SetWarm(name string, warm int) (pc.Template, error) {
	if warm < 0 || warm > MaxWarm {
		return pc.Template{}, errorf(ErrBadRequest, "warm %d out of range: 0 to %d", warm, MaxWarm)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	t := p.templates[name]
	if t == nil || t.removed || t.creating {
		return pc.Template{}, errorf(ErrNotFound, "no template %q", name)
	}
	nt := t.t
	nt.Warm = warm
	if err := writeJSON(filepath.Join(p.templateDir(name), templateFile), nt, true); err != nil {
		return pc.Template{}, err
	}
	t.t = nt
	// Shrink at once: the newest warm VMs go first.
	for len(t.warm) > warm {
		v := t.warm[len(t.warm)-1]
		t.warm = t.warm[:len(t.warm)-1]
		p.stop(v)
	}
	p.kick()
	return nt, nil
}
