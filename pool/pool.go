package pool

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/voltvmm/volt/cas"
	pc "github.com/voltvmm/volt/pool/client"
)

// Config is how a pool runs.
type Config struct {
	StateDir string // templates, VM records, sockets (see the package doc)
	// StoreDir, when set, is the CAS store that keeps the templates'
	// memory (a CASStore); "" keeps each snapshot as two flat files.
	StoreDir string
	VMMBin   string // volt-vmm
	// SnapshotTool is volt-snapshot, which a CASStore and a jailed
	// template boot need (to read state files and import memory).
	SnapshotTool string
	// Store keeps template snapshots; nil means a CASStore in StoreDir,
	// or a FlatStore under StateDir/templates without one.
	Store SnapshotStore
	// SnapshotViaFile makes an unjailed template VMM write its memory to
	// a file that the pool then imports into the CAS store (as a jailed
	// one always does: it cannot write the store), instead of writing it
	// there itself (PUT /snapshot/create with mem_backend Cas): for a
	// volt-vmm whose confinement does not allow the latter (before
	// sandbox allowed fstat, fchmod, ... and Landlock's refer right).
	SnapshotViaFile bool
	// Jail, when set, starts every VMM through volt-jailer.
	Jail *JailConfig
	// RefillConcurrency bounds the warm restores in flight (default 2:
	// refills compete with the callers' VMs for the same cores).
	RefillConcurrency int
	// MaxVMs bounds the VMMs the pool runs at once, warm and leased
	// (default 256); an acquire beyond it is refused with 503.
	MaxVMs int
	// DefaultTTL (60s) and MaxTTL (24h) bound leases.
	DefaultTTL, MaxTTL time.Duration
	// VMMArgs are added to every VMM's command line (default
	// "--console none"; a clone's serial console has no reader).
	VMMArgs []string
	// VsockConnectTimeout, when set, is given to every VMM the pool starts
	// (template boots and clones) as --vsock-connect-timeout: how long a
	// caller's CONNECT waits for the guest's answer. Zero keeps volt-vmm's
	// default (Firecracker's 2 s), which a Linux guest among dozens on a
	// few emulating cores cannot meet.
	VsockConnectTimeout time.Duration
	Log                 *slog.Logger
}

// MaxVsockConnectTimeout is the longest VsockConnectTimeout (volt-vmm's
// own bound).
const MaxVsockConnectTimeout = time.Hour

// vmmArgs are the flags every VMM gets after those of its kind (args).
func (c *Config) vmmArgs(args []string) []string {
	if c.VsockConnectTimeout > 0 {
		args = append(slices.Clip(args), "--vsock-connect-timeout", c.VsockConnectTimeout.String())
	}
	return args
}

func (c *Config) setDefaults() error {
	if c.StateDir == "" || c.VMMBin == "" {
		return errors.New("pool: a state directory and a volt-vmm binary are required")
	}
	abs, err := filepath.Abs(c.StateDir)
	if err != nil {
		return fmt.Errorf("pool: state directory: %w", err)
	}
	c.StateDir = abs
	if c.VMMBin, err = filepath.Abs(c.VMMBin); err != nil {
		return fmt.Errorf("pool: volt-vmm: %w", err)
	}
	if c.StoreDir != "" {
		if c.StoreDir, err = filepath.Abs(c.StoreDir); err != nil {
			return fmt.Errorf("pool: CAS store: %w", err)
		}
	}
	if j := c.Jail; j != nil {
		if j.Jailer == "" || !filepath.IsAbs(j.Jailer) {
			return fmt.Errorf("pool: volt-jailer %q: an absolute path is required", j.Jailer)
		}
		if j.UIDs == (UIDRange{}) {
			j.UIDs = DefaultUIDRange
		}
		if err := j.UIDs.Validate(); err != nil {
			return fmt.Errorf("pool: --jail-uid-range: %w", err)
		}
		if j.ChrootBase == "" {
			j.ChrootBase = filepath.Join(c.StateDir, "jail")
		}
		if !filepath.IsAbs(j.ChrootBase) {
			return fmt.Errorf("pool: chroot base %q: an absolute path is required", j.ChrootBase)
		}
		if c.SnapshotTool == "" {
			return errors.New("pool: a jailed pool needs volt-snapshot (template boots snapshot to a file first)")
		}
	}
	if c.StoreDir != "" && c.SnapshotTool == "" && c.Store == nil {
		return errors.New("pool: a CAS store needs volt-snapshot (to read state files and import memory)")
	}
	if c.VsockConnectTimeout < 0 || c.VsockConnectTimeout > MaxVsockConnectTimeout {
		return fmt.Errorf("pool: vsock connect timeout %v: more than 0 (or 0 for volt-vmm's default) and at most %v", c.VsockConnectTimeout, MaxVsockConnectTimeout)
	}
	if c.RefillConcurrency <= 0 {
		c.RefillConcurrency = 2
	}
	if c.MaxVMs <= 0 {
		c.MaxVMs = 256
	}
	if c.DefaultTTL <= 0 {
		c.DefaultTTL = 60 * time.Second
	}
	if c.MaxTTL <= 0 {
		c.MaxTTL = 24 * time.Hour
	}
	if c.VMMArgs == nil {
		c.VMMArgs = []string{"--console", "none"}
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	return nil
}

// MinTTL is the shortest lease.
const MinTTL = time.Second

// tmpl is one template and its pool. Guarded by Pool.mu.
type tmpl struct {
	t        pc.Template
	snap     Snapshot
	creating bool // being booted: not yet usable
	removed  bool

	warm     []*vm // FIFO: the oldest warm VM is handed out first
	starting int
	leased   int

	backoff time.Duration // after a failed refill
	nextTry time.Time

	restores, failures, deaths, expiries, cold uint64
}

// endedLease remembers why a lease ended, so a late release or renew gets
// a clear 410 rather than a 404.
type endedLease struct {
	id, why string
	at      time.Time
}

const maxEnded = 4096

// Pool is the running pool. Its methods are safe for concurrent use.
type Pool struct {
	cfg     Config
	vmsDir  string
	lock    *os.File
	metrics *metrics

	mu        sync.Mutex
	templates map[string]*tmpl
	vms       map[string]*vm // every VMM the pool owns, by id (= lease id)
	ended     map[string]endedLease
	endedFIFO []string
	inflight  int // warm restores in flight
	draining  bool
	changed   chan struct{} // a VM ended or a lease went: Shutdown waits on it

	uids *uidPool // jailed VMMs' uids; nil unjailed
	cas  *cas.Store
	tool snapshotTool

	refill chan struct{}
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // refiller, janitor, restores, process watchers
}

// Open starts a pool on cfg.StateDir: it takes the directory's lock, loads
// the templates, ends what a previous daemon left (keeping live leases) and
// starts refilling.
func Open(ctx context.Context, cfg Config) (*Pool, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	p := &Pool{cfg: cfg, vmsDir: filepath.Join(cfg.StateDir, "vms"),
		templates: map[string]*tmpl{}, vms: map[string]*vm{}, ended: map[string]endedLease{},
		refill: make(chan struct{}, 1), changed: make(chan struct{})}
	for _, d := range []string{cfg.StateDir, p.vmsDir, filepath.Join(cfg.StateDir, "templates")} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return nil, fmt.Errorf("pool: %w", err)
		}
	}
	p.tool = snapshotTool{bin: cfg.SnapshotTool}
	if j := cfg.Jail; j != nil {
		if err := checkUIDsUnused(j.UIDs, "/etc"); err != nil {
			return nil, fmt.Errorf("pool: %w", err)
		}
		if err := os.MkdirAll(j.ChrootBase, 0o750); err != nil {
			return nil, fmt.Errorf("pool: chroot base: %w", err)
		}
		p.uids = newUIDPool(j.UIDs)
	}
	lock, err := os.OpenFile(filepath.Join(cfg.StateDir, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("pool: lock: %w", err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("pool: another voltpool serves %s", cfg.StateDir)
		}
		return nil, fmt.Errorf("pool: lock %s: %w", cfg.StateDir, err)
	}
	p.lock = lock
	if cfg.Store == nil {
		if cfg.StoreDir != "" {
			id, err := poolID(cfg.StateDir)
			if err != nil {
				lock.Close()
				return nil, err
			}
			cs, err := NewCASStore(filepath.Join(cfg.StateDir, "templates"), cfg.StoreDir, id, cfg.SnapshotTool)
			if err != nil {
				lock.Close()
				return nil, err
			}
			p.cfg.Store = cs
		} else {
			p.cfg.Store = &FlatStore{Root: filepath.Join(cfg.StateDir, "templates")}
		}
	}
	if cs, ok := p.cfg.Store.(*CASStore); ok {
		p.cas = cs.Store
	}
	p.metrics = newMetrics(p)
	if err := p.loadTemplates(ctx); err != nil {
		lock.Close()
		return nil, err
	}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.recover()
	p.wg.Add(2)
	go p.refiller()
	go p.janitor()
	p.kick()
	return p, nil
}

// Registry is the pool's Prometheus registry.
func (p *Pool) Registry() *prometheus.Registry { return p.metrics.reg }

func newID() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func (p *Pool) kick() {
	select {
	case p.refill <- struct{}{}:
	default:
	}
}

// notify wakes whoever waits for the set of VMs or leases to change.
// Precondition: p.mu held.
func (p *Pool) notify() {
	close(p.changed)
	p.changed = make(chan struct{})
}

func (p *Pool) recordEnded(id, why string) {
	if _, ok := p.ended[id]; !ok {
		p.endedFIFO = append(p.endedFIFO, id)
	}
	p.ended[id] = endedLease{id: id, why: why, at: time.Now()}
	for len(p.endedFIFO) > maxEnded {
		delete(p.ended, p.endedFIFO[0])
		p.endedFIFO = p.endedFIFO[1:]
	}
	if cap(p.endedFIFO) > 4*maxEnded {
		p.endedFIFO = slices.Clone(p.endedFIFO)
	}
}

// saveRecord writes v's record. Precondition: p.mu held (the record must
// match the state it was taken in).
func (p *Pool) saveRecord(v *vm) error {
	return writeJSON(filepath.Join(v.dir, vmRecordFile), v.record(), false)
}

// saveLease writes v's lease file (created at the acquire, replaced by a
// renew). Precondition: p.mu held, v.lease set.
func (p *Pool) saveLease(v *vm) error {
	return writeJSON(filepath.Join(v.dir, leaseFile), v.lease, false)
}

// watch owns v's process until it exits, then forgets v.
func (p *Pool) watch(v *vm) {
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		v.proc.wait()
		p.exited(v)
	}()
}

// exited is called once v's process is gone: whatever state v was in ends.
func (p *Pool) exited(v *vm) {
	msg := v.proc.exited()
	p.mu.Lock()
	t := p.templates[v.template]
	switch v.state {
	case vmWarm:
		if t != nil {
			t.warm = slices.DeleteFunc(t.warm, func(x *vm) bool { return x == v })
			t.deaths++
		}
		p.metrics.deaths.WithLabelValues(v.template, string(vmWarm)).Inc()
		p.cfg.Log.Warn("warm VMM died", "vm", v.id, "template", v.template, "pid", v.proc.pid, "status", msg, "log", logTail(v.dir))
	case vmLeased:
		if t != nil {
			t.leased--
			t.deaths++
		}
		p.recordEnded(v.id, "its VMM exited ("+msg+")")
		p.metrics.deaths.WithLabelValues(v.template, string(vmLeased)).Inc()
		p.cfg.Log.Warn("leased VMM exited", "vm", v.id, "template", v.template, "pid", v.proc.pid, "status", msg)
	}
	v.state = vmStopping
	p.notify()
	p.mu.Unlock()
	v.api.Close()
	if err := os.RemoveAll(v.dir); err != nil {
		p.cfg.Log.Error("remove VM directory", "dir", v.dir, "err", err)
	}
	p.releaseJail(v)
	// v leaves the set only now, its directory, uid and CAS lease given
	// back: whoever waits for a VMM to be gone (Shutdown, RemoveTemplate)
	// may then rely on what it held being free.
	p.mu.Lock()
	if p.vms[v.id] == v {
		delete(p.vms, v.id)
	}
	p.notify()
	p.mu.Unlock()
	p.kick()
}

// jailFor returns how to jail the VMM of id, showing it binds (and the
// CAS store casView at /cas), with a uid of its own; nil for an unjailed
// pool.
func (p *Pool) jailFor(id string, binds []jailBind, casView string) (*jailSpawn, error) {
	if p.cfg.Jail == nil {
		return nil, nil
	}
	uid, err := p.uids.take()
	if err != nil {
		return nil, err
	}
	if casView != "" {
		binds = append(binds, casViewBinds(casView)...)
	}
	return &jailSpawn{cfg: p.cfg.Jail, id: id, uid: uid, binds: binds, casView: casView}, nil
}

// spawnVM is spawn that gives back the jail's uid when nothing started.
func (p *Pool) spawnVM(ctx context.Context, s spawnSpec) (*vm, error) {
	v, err := spawn(ctx, s)
	if v == nil && s.jail != nil {
		p.uids.put(s.jail.uid)
	}
	return v, err
}

// releaseJail frees what a jailed VMM held, once its processes are gone:
// the pool's CAS lease for it, its chroot and then its uid (kept taken if
// the chroot could not be removed: files of that uid may remain).
func (p *Pool) releaseJail(v *vm) {
	j := v.jail
	if j == nil {
		return
	}
	p.mu.Lock()
	l := j.casLease
	j.casLease = nil
	p.mu.Unlock()
	if l != nil {
		if err := l.Release(); err != nil {
			p.cfg.Log.Error("release the CAS lease of a jailed VMM", "vm", v.id, "err", err)
		}
	}
	if err := removeJailDir(j.dir); err != nil {
		p.cfg.Log.Error("remove jail; its uid stays taken", "vm", v.id, "uid", j.uid, "err", err)
		return
	}
	if p.uids != nil {
		p.uids.put(j.uid)
	}
}

// stop kills v (its watcher does the rest). Precondition: p.mu held.
func (p *Pool) stop(v *vm) {
	if v.state == vmStopping {
		return
	}
	v.state = vmStopping
	if v.lease != nil {
		// Without its lease file a VM is not leased: a daemon that
		// restarts now kills it.
		os.Remove(filepath.Join(v.dir, leaseFile))
		v.lease = nil
	}
	if err := v.proc.kill(); err != nil {
		p.cfg.Log.Error("stop VMM", "vm", v.id, "err", err)
	}
}

// restore starts a VMM of t and loads its snapshot (paused unless resume).
// The VMM is registered (so Shutdown and the watcher know it) before it is
// loaded.
//
// A refill (not resume) runs at the lowest CPU priority until it is
// warm, so that it never slows down the VMs callers hold.
func (p *Pool) restore(ctx context.Context, name string, snap Snapshot, spec pc.TemplateSpec, resume bool) (*vm, error) {
	id := newID()
	s := spawnSpec{id: id, template: name, dir: filepath.Join(p.vmsDir, id), vmmBin: p.cfg.VMMBin,
		extraArgs: p.cfg.vmmArgs(p.cfg.VMMArgs), network: spec.Network, vsock: spec.Vsock, background: !resume}
	var lease *cas.Lease
	if p.cfg.Jail != nil {
		casView := ""
		if snap.CASStore != "" {
			// The jailed VMM's own lease is private to its chroot:
			// the pool's keeps the chunks from GC (see jail.go).
			casView = snap.CASStore
			l, err := p.cas.Lease(ctx, cas.LeaseOptions{}, snap.Manifest)
			if err != nil {
				return nil, fmt.Errorf("lease the memory of %s: %w", name, err)
			}
			lease = l
		}
		js, err := p.jailFor(id, restoreBinds(snap), casView)
		if err != nil {
			if lease != nil {
				lease.Release()
			}
			return nil, err
		}
		s.jail = js
	}
	v, err := p.spawnVM(ctx, s)
	if v == nil {
		if lease != nil {
			lease.Release()
		}
		return nil, err
	}
	if lease != nil {
		v.jail.casLease, v.jail.manifest = lease, snap.Manifest
	}
	p.mu.Lock()
	p.vms[id] = v
	p.saveRecord(v)
	p.mu.Unlock()
	p.watch(v)
	if err == nil {
		err = v.load(ctx, snap, resume)
	}
	if err == nil && !resume && spec.Prime {
		err = v.prime(ctx, p.cfg.VsockConnectTimeout)
	}
	if err == nil && !resume {
		err = v.proc.setPriority(0)
	}
	if err != nil {
		if tail := logTail(v.dir); tail != "" {
			err = fmt.Errorf("%w (VMM log: %s)", err, tail)
		}
		p.mu.Lock()
		p.stop(v)
		p.mu.Unlock()
		return nil, err
	}
	return v, nil
}

// refiller keeps every template's warm pool at its target, with at most
// RefillConcurrency restores in flight.
func (p *Pool) refiller() {
	defer p.wg.Done()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-p.refill:
		case <-tick.C:
		}
		p.mu.Lock()
		now := time.Now()
		names := make([]string, 0, len(p.templates))
		for n := range p.templates {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			t := p.templates[n]
			for !p.draining && !t.creating && !t.removed && now.After(t.nextTry) &&
				len(t.warm)+t.starting < t.t.Warm && p.inflight < p.cfg.RefillConcurrency && len(p.vms) < p.cfg.MaxVMs {
				t.starting++
				p.inflight++
				p.wg.Add(1)
				go p.warmOne(t, t.snap, t.t.TemplateSpec)
			}
		}
		p.mu.Unlock()
	}
}

// warmOne restores one VMM for t's warm pool.
func (p *Pool) warmOne(t *tmpl, snap Snapshot, spec pc.TemplateSpec) {
	defer p.wg.Done()
	ctx, cancel := context.WithTimeout(p.ctx, 30*time.Second)
	defer cancel()
	start := time.Now()
	v, err := p.restore(ctx, spec.Name, snap, spec, false)
	p.mu.Lock()
	t.starting--
	p.inflight--
	switch {
	case err != nil && t.removed:
		// RemoveTemplate killed it while it loaded.
	case err != nil:
		t.failures++
		t.backoff = min(max(2*t.backoff, 100*time.Millisecond), 30*time.Second)
		t.nextTry = time.Now().Add(t.backoff)
		p.metrics.failures.WithLabelValues(spec.Name, "restore").Inc()
		p.cfg.Log.Error("warm restore failed", "template", spec.Name, "err", err, "retry_in", t.backoff)
	case t.removed || p.draining || v.state != vmStarting:
		// Removed or draining meanwhile, or it died while loading.
		if v.state == vmStarting {
			p.stop(v)
		}
	default:
		t.backoff = 0
		t.restores++
		p.metrics.restores.WithLabelValues(spec.Name, pc.PathWarm).Inc()
		p.metrics.restoreSeconds.WithLabelValues(spec.Name, pc.PathWarm).Observe(time.Since(start).Seconds())
		v.state = vmWarm
		p.saveRecord(v)
		t.warm = append(t.warm, v)
	}
	p.notify()
	p.mu.Unlock()
	p.kick()
}

// parseTTL turns a caller's TTL into a duration within the bounds.
func (p *Pool) parseTTL(s string) (time.Duration, error) {
	if s == "" {
		return p.cfg.DefaultTTL, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, errorf(ErrBadRequest, "bad ttl %q: a duration such as 60s or 5m is expected", s)
	}
	if d < MinTTL || d > p.cfg.MaxTTL {
		return 0, errorf(ErrBadRequest, "ttl %v out of range: %v to %v", d, MinTTL, p.cfg.MaxTTL)
	}
	return d, nil
}

// Acquire hands out a running VM of template for ttl ("" for the default)
// to the caller uid: a warm one resumed, or, when none is warm, one restored
// now (path cold).
func (p *Pool) Acquire(ctx context.Context, template, ttlText string, uid uint32) (pc.Lease, error) {
	start := time.Now()
	ttl, err := p.parseTTL(ttlText)
	if err != nil {
		return pc.Lease{}, err
	}
	for {
		p.mu.Lock()
		if p.draining {
			p.mu.Unlock()
			return pc.Lease{}, errorf(ErrUnavailable, "voltpool is shutting down: no new leases")
		}
		t := p.templates[template]
		if t == nil || t.removed {
			p.mu.Unlock()
			return pc.Lease{}, errorf(ErrNotFound, "no template %q (voltpool template ls lists them)", template)
		}
		if t.creating {
			p.mu.Unlock()
			return pc.Lease{}, errorf(ErrUnavailable, "template %q is still being created", template)
		}
		if len(t.warm) == 0 {
			if len(p.vms) >= p.cfg.MaxVMs {
				p.mu.Unlock()
				return pc.Lease{}, errorf(ErrUnavailable, "voltpool runs its maximum of %d VMs: release some or raise --max-vms", p.cfg.MaxVMs)
			}
			snap, spec := t.snap, t.t.TemplateSpec
			p.mu.Unlock()
			return p.acquireCold(ctx, t, snap, spec, ttl, uid, start)
		}
		v := t.warm[0]
		t.warm = t.warm[1:]
		// Claimed: no one else can take it; a death now is seen by
		// exited() as a leased VM's, so count it leased first.
		v.state = vmLeased
		t.leased++
		p.mu.Unlock()
		if err := v.api.Resume(ctx); err != nil {
			p.mu.Lock()
			if v.state == vmLeased {
				t.leased--
				t.failures++
				p.metrics.failures.WithLabelValues(template, "resume").Inc()
				p.stop(v)
			}
			p.mu.Unlock()
			p.cfg.Log.Warn("resume of a warm VMM failed; trying another", "vm", v.id, "err", err)
			if ctx.Err() != nil {
				return pc.Lease{}, fmt.Errorf("acquire %s: %w", template, ctx.Err())
			}
			continue
		}
		l, err := p.grant(t, v, ttl, uid, pc.PathWarm, start)
		// The refill starts once the lease is recorded: the fork of
		// the next VMM must not delay this one's resume.
		p.kick()
		return l, err
	}
}

func (p *Pool) acquireCold(ctx context.Context, t *tmpl, snap Snapshot, spec pc.TemplateSpec, ttl time.Duration, uid uint32, start time.Time) (pc.Lease, error) {
	v, err := p.restore(ctx, spec.Name, snap, spec, true)
	if err != nil {
		p.mu.Lock()
		t.failures++
		p.mu.Unlock()
		p.metrics.failures.WithLabelValues(spec.Name, "restore").Inc()
		return pc.Lease{}, fmt.Errorf("acquire %s: no warm VM, and the restore failed: %w", spec.Name, err)
	}
	p.metrics.restores.WithLabelValues(spec.Name, pc.PathCold).Inc()
	p.metrics.restoreSeconds.WithLabelValues(spec.Name, pc.PathCold).Observe(time.Since(start).Seconds())
	p.mu.Lock()
	if v.state != vmStarting {
		p.mu.Unlock()
		return pc.Lease{}, fmt.Errorf("acquire %s: the restored VMM exited at once (%s)", spec.Name, v.proc.exited())
	}
	t.restores++
	t.cold++
	v.state = vmLeased
	t.leased++
	p.mu.Unlock()
	return p.grant(t, v, ttl, uid, pc.PathCold, start)
}

// grant records the lease of a resumed VM.
func (p *Pool) grant(t *tmpl, v *vm, ttl time.Duration, uid uint32, path string, start time.Time) (pc.Lease, error) {
	now := time.Now()
	l := &pc.Lease{ID: v.id, Template: v.template, VsockUDS: v.vsockUDS, APISock: v.api.Socket(),
		ExpiresAt: now.Add(ttl).UTC(), Path: path, PID: v.pid(), Netns: v.netns, AcquiredAt: now.UTC(), OwnerUID: uid}
	p.mu.Lock()
	defer p.mu.Unlock()
	if v.state != vmLeased {
		// It died between the resume and now.
		return pc.Lease{}, fmt.Errorf("acquire %s: the VMM exited right after its resume (%s)", v.template, v.proc.exited())
	}
	v.lease = l
	if err := p.saveLease(v); err != nil {
		// A lease that would not survive a restart is not handed out.
		t.leased--
		p.stop(v)
		return pc.Lease{}, fmt.Errorf("acquire %s: record the lease: %w", v.template, err)
	}
	p.metrics.acquire.WithLabelValues(v.template, path).Observe(time.Since(start).Seconds())
	return *l, nil
}

// leaseOf finds the live lease id and checks that uid may act on it.
// Precondition: p.mu held.
func (p *Pool) leaseOf(id string, uid uint32) (*vm, error) {
	v := p.vms[id]
	if v == nil || v.state != vmLeased || v.lease == nil {
		if e, ok := p.ended[id]; ok {
			return nil, errorf(ErrGone, "lease %s already ended at %s: %s", id, e.at.UTC().Format(time.RFC3339), e.why)
		}
		return nil, errorf(ErrNotFound, "no lease %q", id)
	}
	if uid != 0 && uid != v.lease.OwnerUID {
		return nil, errorf(ErrForbidden, "lease %s belongs to uid %d, not to uid %d", id, v.lease.OwnerUID, uid)
	}
	return v, nil
}

// Release ends lease id: its VMM is killed and the pool refills. Only the
// lease's owner (or root) may release it.
func (p *Pool) Release(id string, uid uint32) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	v, err := p.leaseOf(id, uid)
	if err != nil {
		return err
	}
	p.endLease(v, "released")
	p.metrics.releases.WithLabelValues(v.template).Inc()
	return nil
}

// endLease ends v's lease and stops it. Precondition: p.mu held, v leased.
func (p *Pool) endLease(v *vm, why string) {
	if t := p.templates[v.template]; t != nil {
		t.leased--
	}
	p.recordEnded(v.id, why)
	p.stop(v)
	p.notify()
}

// Renew moves lease id's end to ttl from now.
func (p *Pool) Renew(id, ttlText string, uid uint32) (pc.Lease, error) {
	if ttlText == "" {
		return pc.Lease{}, errorf(ErrBadRequest, "renew needs a ttl")
	}
	ttl, err := p.parseTTL(ttlText)
	if err != nil {
		return pc.Lease{}, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	v, err := p.leaseOf(id, uid)
	if err != nil {
		return pc.Lease{}, err
	}
	old := v.lease.ExpiresAt
	v.lease.ExpiresAt = time.Now().Add(ttl).UTC()
	if err := p.saveLease(v); err != nil {
		v.lease.ExpiresAt = old
		return pc.Lease{}, fmt.Errorf("renew %s: %w", id, err)
	}
	return *v.lease, nil
}

// Lease returns live lease id.
func (p *Pool) Lease(id string) (pc.Lease, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	v, err := p.leaseOf(id, 0)
	if err != nil {
		return pc.Lease{}, err
	}
	return *v.lease, nil
}

// Leases lists the live leases, oldest first.
func (p *Pool) Leases() []pc.Lease {
	p.mu.Lock()
	defer p.mu.Unlock()
	var ls []pc.Lease
	for _, v := range p.vms {
		if v.state == vmLeased && v.lease != nil {
			ls = append(ls, *v.lease)
		}
	}
	sort.Slice(ls, func(i, j int) bool { return ls[i].AcquiredAt.Before(ls[j].AcquiredAt) })
	return ls
}

// VMs lists every VMM the pool owns.
func (p *Pool) VMs() []pc.VMInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]pc.VMInfo, 0, len(p.vms))
	for _, v := range p.vms {
		out = append(out, pc.VMInfo{ID: v.id, Template: v.template, State: string(v.state), PID: v.pid(), APISock: v.api.Socket()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Status returns the per-template counts.
func (p *Pool) Status() pc.Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := pc.Status{VMMs: len(p.vms), Draining: p.draining, Templates: []pc.TemplateStatus{}}
	for n, t := range p.templates {
		if t.creating {
			continue
		}
		st.Templates = append(st.Templates, pc.TemplateStatus{Template: n, Warm: len(t.warm), Starting: t.starting, Leased: t.leased,
			Target: t.t.Warm, Restores: t.restores, Failures: t.failures, Deaths: t.deaths, Expiries: t.expiries, ColdPaths: t.cold})
	}
	sort.Slice(st.Templates, func(i, j int) bool { return st.Templates[i].Template < st.Templates[j].Template })
	return st
}

// janitor ends leases whose time ran out.
func (p *Pool) janitor() {
	defer p.wg.Done()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-tick.C:
		}
		now := time.Now()
		p.mu.Lock()
		for _, v := range p.vms {
			if v.state == vmLeased && v.lease != nil && now.After(v.lease.ExpiresAt) {
				if t := p.templates[v.template]; t != nil {
					t.expiries++
				}
				p.metrics.expiries.WithLabelValues(v.template).Inc()
				p.cfg.Log.Info("lease expired", "lease", v.id, "template", v.template)
				p.endLease(v, "it expired at "+v.lease.ExpiresAt.Format(time.RFC3339))
			}
		}
		p.mu.Unlock()
	}
}

// Shutdown stops handing out leases and warm VMMs, waits up to drain for
// the leases to be released, ends the rest, and returns once every VMM is
// reaped and its directory removed. Templates stay on disk.
func (p *Pool) Shutdown(ctx context.Context, drain time.Duration) error {
	p.mu.Lock()
	if p.draining {
		p.mu.Unlock()
		return errors.New("pool: already shut down")
	}
	p.draining = true
	for _, t := range p.templates {
		for _, v := range t.warm {
			p.stop(v)
		}
		t.warm = nil
	}
	p.mu.Unlock()

	deadline := time.Now().Add(drain)
	for {
		p.mu.Lock()
		leased := 0
		for _, v := range p.vms {
			if v.state == vmLeased {
				leased++
			}
		}
		ch := p.changed
		if leased == 0 || !time.Now().Before(deadline) || ctx.Err() != nil {
			for _, v := range p.vms {
				if v.state == vmLeased {
					p.endLease(v, "voltpool shut down")
				}
			}
			p.mu.Unlock()
			break
		}
		p.mu.Unlock()
		select {
		case <-ch:
		case <-time.After(time.Until(deadline)):
		case <-ctx.Done():
		}
	}
	// Restores in flight end as their context is cancelled; their VMMs
	// are then stopped by warmOne (draining) or by the loop below.
	p.cancel()
	for {
		p.mu.Lock()
		for _, v := range p.vms {
			if v.state != vmStopping {
				p.stop(v)
			}
		}
		n, ch := len(p.vms), p.changed
		p.mu.Unlock()
		if n == 0 {
			break
		}
		select {
		case <-ch:
		case <-time.After(100 * time.Millisecond):
		}
	}
	p.wg.Wait()
	return p.lock.Close()
}
