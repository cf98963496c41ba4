package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/voltvmm/volt/internal/hostfile"
	"github.com/voltvmm/volt/vmm"
	"github.com/voltvmm/volt/vmm/api/types"
	"github.com/voltvmm/volt/vmm/cpu"
)

// Machine is what the controller needs of a built VM. *vmm.VM is the real
// one; tests of the state machine and the handler use fakes.
type Machine interface {
	Run(ctx context.Context) vmm.Result
	Pause() error
	Resume() error
	Stop()
	Close() error
	SendCtrlAltDel() error
	Metrics() vmm.Metrics
	BootStages() []vmm.Stage
}

var _ Machine = (*vmm.VM)(nil)

// Identification reported by GET / and GET /version.
const (
	AppName = "volt-vmm"
	// FirecrackerAPIVersion is the swagger version whose paths and bodies
	// this package implements; callers that gate features on
	// firecracker_version compare against it.
	FirecrackerAPIVersion = "1.17.0"
	// DefaultID is Firecracker's instance id when none is given.
	DefaultID = "anonymous-instance"
)

// metricsFlushInterval is how often metrics are written without being
// asked, as Firecracker does once a metrics path is set.
const metricsFlushInterval = time.Minute

// ErrSnapshotUnavailable is returned for snapshot requests until the
// snapshot functions are wired in through Options.
var ErrSnapshotUnavailable = errors.New("snapshot support is not available in this build yet")

// Options configure a Controller.
type Options struct {
	// ID is the instance id of GET /; empty means DefaultID.
	ID string
	// VMMVersion is volt-vmm's own version for GET /.
	VMMVersion string
	// Base is the configuration requests modify: the console, the boot
	// timeline origin and any defaults the command line set. The API only
	// changes the kernel, command line, initrd, vCPUs, memory, huge pages
	// and CPU template.
	Base vmm.Config
	// Build creates the VM at InstanceStart; nil means vmm.New.
	Build func(vmm.Config) (Machine, error)
	// CreateSnapshot and LoadSnapshot implement the snapshot endpoints.
	// When nil, a machine with a CreateSnapshot method (*vmm.VM) snapshots
	// itself, and with the real VMM (Build nil) loads use vmm.Restore;
	// otherwise the endpoints answer ErrSnapshotUnavailable.
	CreateSnapshot func(ctx context.Context, m Machine, p types.SnapshotCreateParams) error
	LoadSnapshot   func(ctx context.Context, base vmm.Config, p types.SnapshotLoadParams) (Machine, error)
	// LogOutput receives log records until PUT /logger redirects them;
	// nil means standard error.
	LogOutput io.Writer
	// LogLevel is the level before PUT /logger; the zero value is Info,
	// so callers wanting a quiet default pass slog.LevelWarn.
	LogLevel slog.Level
}

// Controller applies API requests to one microVM. Its methods are what the
// HTTP handler calls, usable directly (the config file path does). Requests
// run one at a time, as on Firecracker's API thread; none of them runs on,
// or waits for, a vCPU thread except Pause, which waits for the vCPUs to
// leave the guest.
type Controller struct {
	opts    Options
	log     *slog.Logger
	vmmLog  *slog.Logger // for the VM's own warnings
	logSwap *swapHandler

	mu    sync.Mutex // guards the fields below; held for a whole request
	state State
	cfg   vmm.Config
	// configured is set once anything but the logger and metrics was
	// configured, after which a snapshot can no longer be loaded.
	configured bool
	// closing is set by Close; no machine is launched after it.
	closing bool
	// The device request bodies as given, for GET /vm/config.
	drives  []types.Drive
	nets    []types.NetworkInterface
	vsock   *types.Vsock
	entropy *types.EntropyDevice
	logger  *types.Logger
	logSink *sink
	metrics *types.Metrics
	machine Machine

	// metricsSink is used by requests and by the periodic flush, which
	// must not wait behind a request that holds mu (a pause, a start).
	metricsMu   sync.Mutex
	metricsSink *sink
	running     Machine // the machine, for the periodic flush
	counters    map[string]map[string]uint64
	published   atomic.Int32 // the state, readable without mu

	// done is closed when the VM has stopped; result is written before.
	done      chan struct{}
	result    vmm.Result
	wg        sync.WaitGroup // the run goroutine and the metrics ticker
	stopTick  chan struct{}
	closeOnce sync.Once
}

// NewController returns a controller in the NotStarted state.
func NewController(opts Options) *Controller {
	if opts.ID == "" {
		opts.ID = DefaultID
	}
	if opts.Build == nil {
		opts.Build = func(cfg vmm.Config) (Machine, error) { return vmm.New(cfg) }
		if opts.LoadSnapshot == nil {
			opts.LoadSnapshot = restore
		}
	}
	if opts.CreateSnapshot == nil {
		opts.CreateSnapshot = snapshotItself
	}
	out := opts.LogOutput
	if out == nil {
		out = os.Stderr
	}
	swap := newSwapHandler(slog.NewTextHandler(out, &slog.HandlerOptions{Level: opts.LogLevel}))
	c := &Controller{
		opts:     opts,
		logSwap:  swap,
		log:      slog.New(swap).With(ModuleKey, "api"),
		vmmLog:   slog.New(swap).With(ModuleKey, "vmm"),
		cfg:      opts.Base,
		done:     make(chan struct{}),
		stopTick: make(chan struct{}),
		counters: map[string]map[string]uint64{},
	}
	if c.cfg.CPUs == 0 {
		c.cfg.CPUs = vmm.DefaultCPUs
	}
	if c.cfg.MemorySize == 0 {
		c.cfg.MemorySize = vmm.DefaultMemory
	}
	if c.cfg.Cmdline == "" {
		c.cfg.Cmdline = vmm.DefaultCmdline
	}
	return c
}

// ValidateID checks an instance id as Firecracker does: 1 to 64 letters,
// digits and hyphens.
func ValidateID(id string) error {
	if id == "" || len(id) > 64 {
		return fmt.Errorf("instance id %q must be 1 to 64 characters", id)
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
			return fmt.Errorf("instance id %q may only hold letters, digits and '-'", id)
		}
	}
	return nil
}

// Logger returns the logger that PUT /logger configures, for callers that
// log alongside the API (main).
func (c *Controller) Logger() *slog.Logger { return c.log }

// Done is closed when the microVM has stopped: the guest powered off or
// died, or Stop was called. It is never closed if the VM never started.
func (c *Controller) Done() <-chan struct{} { return c.done }

// Result is how the microVM ended; ok is false while it has not.
func (c *Controller) Result() (res vmm.Result, ok bool) {
	select {
	case <-c.done:
		return c.result, true
	default:
		return vmm.Result{}, false
	}
}

// Machine returns the running machine, or nil before the start.
func (c *Controller) Machine() Machine {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.machine
}

// State returns the current instance state.
func (c *Controller) State() State {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stateLocked()
}

// stateLocked folds the run goroutine's end into the state.
// Precondition: c.mu held.
func (c *Controller) stateLocked() State {
	select {
	case <-c.done:
		return Stopped
	default:
		return c.state
	}
}

// begin locks the controller and checks that op may run now. On success
// the caller holds c.mu and must unlock it.
func (c *Controller) begin(op Op) error {
	c.mu.Lock()
	if err := Check(c.stateLocked(), op); err != nil {
		c.mu.Unlock()
		return err
	}
	return nil
}

// DescribeInstance answers GET /.
func (c *Controller) DescribeInstance() types.InstanceInfo {
	c.mu.Lock()
	defer c.mu.Unlock()
	state := c.stateLocked()
	switch state {
	case Stopped:
		// The swagger's enum has no stopped state: Firecracker's process
		// exits with its guest, so no client ever sees one. Report the
		// last state until main exits.
		state = c.state
	case Starting:
		state = NotStarted // nor a starting one
	}
	return types.InstanceInfo{AppName: AppName, ID: c.opts.ID, State: state.String(), VMMVersion: c.opts.VMMVersion}
}

// Version answers GET /version.
func (c *Controller) Version() types.FirecrackerVersion {
	return types.FirecrackerVersion{FirecrackerVersion: FirecrackerAPIVersion}
}

// MachineConfig answers GET /machine-config.
func (c *Controller) MachineConfig() types.MachineConfiguration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.machineConfigLocked()
}

func (c *Controller) machineConfigLocked() types.MachineConfiguration {
	m := types.MachineConfiguration{
		VCPUCount:       int64(c.cfg.CPUs),
		MemSizeMib:      int64(c.cfg.MemorySize >> 20),
		TrackDirtyPages: c.cfg.TrackDirtyPages,
		HugePages:       types.HugePagesNone,
	}
	if c.cfg.HugePages {
		m.HugePages = types.HugePages2M
	}
	if t := c.cfg.CPUTemplate; t != "" && t != "host" {
		m.CPUTemplate = t
	}
	return m
}

// VMConfig answers GET /vm/config.
func (c *Controller) VMConfig() types.FullVMConfiguration {
	c.mu.Lock()
	defer c.mu.Unlock()
	mc := c.machineConfigLocked()
	full := types.FullVMConfiguration{
		MachineConfig:     &mc,
		Drives:            append([]types.Drive{}, c.drives...),
		NetworkInterfaces: append([]types.NetworkInterface{}, c.nets...),
		Logger:            c.logger,
		Metrics:           c.metrics,
		Vsock:             c.vsock,
		Entropy:           c.entropy,
	}
	if c.cfg.KernelPath != "" {
		full.BootSource = &types.BootSource{KernelImagePath: c.cfg.KernelPath, InitrdPath: c.cfg.InitrdPath, BootArgs: c.cfg.Cmdline}
	}
	return full
}

// PutMachineConfig answers PUT /machine-config: every field is set, the
// optional ones to their defaults when absent.
func (c *Controller) PutMachineConfig(m types.MachineConfiguration) error {
	if err := m.Validate(cpu.TemplateNames()); err != nil {
		return err
	}
	if err := c.begin(OpPutMachineConfig); err != nil {
		return err
	}
	defer c.mu.Unlock()
	return c.setMachineConfigLocked(m)
}

// PatchMachineConfig answers PATCH /machine-config: only the fields given
// change, and the result must be valid as a whole.
func (c *Controller) PatchMachineConfig(p types.MachineConfigurationPatch) error {
	if p.Empty() {
		return errors.New("empty PATCH: give at least one MachineConfiguration field")
	}
	if err := c.begin(OpPatchMachineConfig); err != nil {
		return err
	}
	defer c.mu.Unlock()
	cur := c.machineConfigLocked()
	if cur.CPUTemplate == "" {
		cur.CPUTemplate = types.CPUTemplateNone
	}
	m := p.Apply(cur)
	if err := m.Validate(cpu.TemplateNames()); err != nil {
		return err
	}
	return c.setMachineConfigLocked(m)
}

// Precondition: c.mu held, m validated.
func (c *Controller) setMachineConfigLocked(m types.MachineConfiguration) error {
	if err := vmm.CheckHostMemory(uint64(m.MemSizeMib)<<20, c.cfg.AllowOvercommit); err != nil {
		return fmt.Errorf("mem_size_mib: %w", err)
	}
	c.cfg.CPUs = int(m.VCPUCount)
	c.cfg.MemorySize = uint64(m.MemSizeMib) << 20
	c.cfg.HugePages = m.HugePages == types.HugePages2M
	c.cfg.CPUTemplate = m.CPUTemplate
	if m.CPUTemplate == "" || m.CPUTemplate == types.CPUTemplateNone {
		c.cfg.CPUTemplate = "host"
	}
	c.cfg.TrackDirtyPages = m.TrackDirtyPages
	c.configured = true
	return nil
}

// PutBootSource answers PUT /boot-source. The files are checked now, as
// Firecracker does, so that a typo fails here rather than at start.
func (c *Controller) PutBootSource(b types.BootSource) error {
	if err := b.Validate(); err != nil {
		return err
	}
	if err := hostfile.CheckRegular("kernel_image_path", b.KernelImagePath); err != nil {
		return err
	}
	if b.InitrdPath != "" {
		if err := hostfile.CheckRegular("initrd_path", b.InitrdPath); err != nil {
			return err
		}
	}
	if err := c.begin(OpPutBootSource); err != nil {
		return err
	}
	defer c.mu.Unlock()
	c.cfg.KernelPath, c.cfg.InitrdPath, c.cfg.Cmdline = b.KernelImagePath, b.InitrdPath, b.BootArgs
	if c.cfg.Cmdline == "" {
		c.cfg.Cmdline = vmm.DefaultCmdline
	}
	c.configured = true
	return nil
}

// PutLogger answers PUT /logger: records go to log_path (standard error
// when absent) from now on.
func (c *Controller) PutLogger(l types.Logger) error {
	if err := l.Validate(); err != nil {
		return err
	}
	if err := c.begin(OpPutLogger); err != nil {
		return err
	}
	defer c.mu.Unlock()
	var w io.Writer = os.Stderr
	if c.opts.LogOutput != nil {
		w = c.opts.LogOutput
	}
	var s *sink
	if l.LogPath != "" {
		var err error
		if s, err = openSink(l.LogPath); err != nil {
			return fmt.Errorf("log_path: %w", err)
		}
		w = s
	}
	h, err := newLogHandler(w, l)
	if err != nil {
		s.closeIfOpen()
		return err
	}
	c.logSwap.set(h)
	c.logSink.closeIfOpen()
	c.logSink = s
	c.logger = &l
	return nil
}

func (s *sink) closeIfOpen() {
	if s != nil {
		s.Close()
	}
}

// PutMetrics answers PUT /metrics. As in Firecracker, metrics are set up
// once; from then on they are written every minute and on FlushMetrics.
func (c *Controller) PutMetrics(m types.Metrics) error {
	if err := m.Validate(); err != nil {
		return err
	}
	if err := c.begin(OpPutMetrics); err != nil {
		return err
	}
	defer c.mu.Unlock()
	if c.metrics != nil {
		return fmt.Errorf("metrics are already configured (to %s); they cannot be reconfigured", c.metrics.MetricsPath)
	}
	s, err := openSink(m.MetricsPath)
	if err != nil {
		return fmt.Errorf("metrics_path: %w", err)
	}
	c.metricsMu.Lock()
	c.metricsSink = s
	c.metricsMu.Unlock()
	c.metrics = &m
	c.wg.Add(1)
	go c.flushPeriodically()
	return nil
}

func (c *Controller) flushPeriodically() {
	defer c.wg.Done()
	t := time.NewTicker(metricsFlushInterval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			if err := c.flushMetrics(); err != nil {
				c.log.Warn("periodic metrics flush failed", "err", err)
			}
		case <-c.stopTick:
			return
		}
	}
}

// Action answers PUT /actions.
func (c *Controller) Action(a types.InstanceActionInfo) error {
	if err := a.Validate(); err != nil {
		return err
	}
	switch a.ActionType {
	case types.ActionInstanceStart:
		// Through the API the boot timeline starts at InstanceStart: the
		// time a client spends configuring is not boot time.
		return c.start(time.Now(), "InstanceStart: ")
	case types.ActionSendCtrlAltDel:
		if err := c.begin(OpSendCtrlAltDel); err != nil {
			return err
		}
		defer c.mu.Unlock()
		return c.machine.SendCtrlAltDel()
	default: // FlushMetrics
		if err := c.begin(OpFlushMetrics); err != nil {
			return err
		}
		configured := c.metrics != nil
		c.mu.Unlock()
		if !configured {
			return errors.New("FlushMetrics: metrics are not configured: PUT /metrics first")
		}
		return c.flushMetrics()
	}
}

// Start boots the configured microVM, as InstanceStart does, keeping the
// boot timeline origin of Options.Base (the process start, for the
// command line and config file paths).
func (c *Controller) Start() error {
	return c.start(time.Time{}, "")
}

// start builds and launches the VM; prefix labels its errors for API
// clients, while the command line prints them bare.
func (c *Controller) start(origin time.Time, prefix string) error {
	if err := c.begin(OpInstanceStart); err != nil {
		return err
	}
	defer c.mu.Unlock()
	if c.cfg.KernelPath == "" {
		return errors.New(prefix + "no boot source: PUT /boot-source first")
	}
	cfg := c.cfg
	if !origin.IsZero() {
		cfg.Origin = origin
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("%s%s", prefix, strings.ReplaceAll(err.Error(), "\n", "; "))
	}
	cfg.Logger = c.vmmLog
	m, err := c.whileStarting(func() (Machine, error) { return c.opts.Build(cfg) })
	if err != nil {
		if prefix != "" {
			return fmt.Errorf("%sbuild the microVM: %w", prefix, err)
		}
		return err
	}
	c.launchLocked(m, Running)
	c.log.Info("microVM started", "vcpus", cfg.CPUs, "memory", vmm.FormatSize(cfg.MemorySize), "kernel", cfg.KernelPath)
	return nil
}

// whileStarting runs build, which may take long (loading a large initrd,
// mapping a snapshot), with c.mu released and the state Starting, so that
// reads are answered meanwhile and other changes are refused. A controller
// closed meanwhile gets no machine: the one built is closed.
// Precondition: c.mu held; it is held again on return.
func (c *Controller) whileStarting(build func() (Machine, error)) (Machine, error) {
	c.setStateLocked(Starting)
	c.mu.Unlock()
	m, err := build()
	c.mu.Lock()
	if err == nil && c.closing {
		m.Close()
		err = errors.New("the VMM is shutting down")
	}
	if err != nil {
		c.setStateLocked(NotStarted)
	}
	return m, err
}

// launchLocked runs m on its own goroutine; the controller owns it and
// Close waits for it.
// Precondition: c.mu held.
func (c *Controller) launchLocked(m Machine, s State) {
	c.machine = m
	c.setStateLocked(s)
	c.metricsMu.Lock()
	c.running = m
	c.metricsMu.Unlock()
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		res := m.Run(context.Background())
		c.result = res
		close(c.done)
		c.log.Info("microVM stopped", "reason", string(res.Reason), "err", res.Err)
	}()
	c.waitStarted(m)
}

// startWait bounds the wait for Run to begin; it takes microseconds, and
// the bound only keeps a wedged machine from hanging the API.
const startWait = 5 * time.Second

// waitStarted returns once m's Run has begun, so that a pause requested
// right after InstanceStart applies to the running VM instead of failing
// because Run has not been scheduled yet.
func (c *Controller) waitStarted(m Machine) {
	s, ok := m.(interface{ Started() bool })
	if !ok {
		return
	}
	deadline := time.Now().Add(startWait)
	for !s.Started() && time.Now().Before(deadline) {
		select {
		case <-c.done:
			return
		case <-time.After(20 * time.Microsecond):
		}
	}
}

// snapshotItself is the default CreateSnapshot: machines that can
// snapshot themselves (*vmm.VM) do.
func snapshotItself(ctx context.Context, m Machine, p types.SnapshotCreateParams) error {
	s, ok := m.(interface {
		CreateSnapshot(context.Context, vmm.SnapshotParams) error
	})
	if !ok {
		return ErrSnapshotUnavailable
	}
	sp := vmm.SnapshotParams{StatePath: p.SnapshotPath, MemPath: p.MemFilePath, Type: vmm.SnapshotType(p.SnapshotType)}
	if p.MemBackend != nil {
		sp.CASStore, sp.CASChunkSize = p.MemBackend.BackendPath, p.MemBackend.ChunkSize
	}
	return s.CreateSnapshot(ctx, sp)
}

// restore is the default LoadSnapshot with the real VMM. The restored VM
// keeps the console of base, and starts paused unless resume_vm is set.
func restore(ctx context.Context, base vmm.Config, p types.SnapshotLoadParams) (Machine, error) {
	mem, store := p.MemFilePath, ""
	if b := p.MemBackend; b != nil {
		switch b.BackendType {
		case types.MemBackendFile:
			mem = b.BackendPath
		case types.MemBackendCas:
			store = b.BackendPath
		default:
			return nil, fmt.Errorf("mem_backend %q is not supported by volt-vmm; use \"File\" or \"Cas\"", b.BackendType)
		}
	}
	// Firecracker tracks dirty pages after a load only when asked to.
	track := p.TrackDirtyPages || p.EnableDiffSnapshots
	v, err := vmm.Restore(ctx, vmm.RestoreConfig{
		StatePath:           p.SnapshotPath,
		MemPath:             mem,
		Resume:              p.ResumeVM,
		Console:             base.Console,
		ConsoleInput:        base.ConsoleInput,
		Origin:              restoreOrigin(base),
		TrackDirtyPages:     &track,
		Logger:              base.Logger,
		AfterSnapshotStep:   base.AfterSnapshotStep,
		Overrides:           overrides(p),
		CASStore:            store,
		Confinement:         base.Confinement,
		VsockRequestTimeout: base.VsockRequestTimeout,
	})
	if err != nil {
		return nil, err
	}
	return v, nil
}

// overrides turns Firecracker's vsock_override and network_overrides into
// the restore's device overrides.
func overrides(p types.SnapshotLoadParams) vmm.VirtioOverrides {
	var o vmm.VirtioOverrides
	if p.VsockOverride != nil {
		o.VsockUDSPath = p.VsockOverride.UDSPath
	}
	for _, n := range p.NetworkOverrides {
		if o.HostDevNames == nil {
			o.HostDevNames = map[string]string{}
		}
		o.HostDevNames[n.IfaceID] = n.HostDevName
	}
	return o
}

// restoreOrigin is where a restored VM's timeline starts: the process start
// when the caller set one (volt-vmm sets its exec time, so a command-line
// restore reports exec→running), else the moment of the request.
func restoreOrigin(base vmm.Config) time.Time {
	if !base.Origin.IsZero() {
		return base.Origin
	}
	return time.Now()
}

// PatchVM answers PATCH /vm.
func (c *Controller) PatchVM(v types.VM) error {
	if err := v.Validate(); err != nil {
		return err
	}
	op := OpResume
	if v.State == types.VMPaused {
		op = OpPause
	}
	if err := c.begin(op); err != nil {
		return err
	}
	defer c.mu.Unlock()
	var err error
	if op == OpPause {
		err = c.machine.Pause()
	} else {
		err = c.machine.Resume()
	}
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	c.setStateLocked(Next(c.state, op))
	return nil
}

// CreateSnapshot answers PUT /snapshot/create.
func (c *Controller) CreateSnapshot(ctx context.Context, p types.SnapshotCreateParams) error {
	if err := p.Validate(); err != nil {
		return err
	}
	if err := c.begin(OpCreateSnapshot); err != nil {
		return err
	}
	defer c.mu.Unlock()
	if p.SnapshotType == types.SnapshotDiff && !c.cfg.TrackDirtyPages {
		return errors.New("a Diff snapshot needs dirty page tracking: set track_dirty_pages in machine-config before the start")
	}
	if err := c.opts.CreateSnapshot(ctx, c.machine, p); err != nil {
		if errors.Is(err, ErrSnapshotUnavailable) {
			return err
		}
		return fmt.Errorf("create snapshot: %w", err)
	}
	return nil
}

// LoadSnapshot answers PUT /snapshot/load: only on a fresh instance, with
// nothing but the logger and metrics configured.
func (c *Controller) LoadSnapshot(ctx context.Context, p types.SnapshotLoadParams) error {
	if err := p.Validate(); err != nil {
		return err
	}
	if err := c.begin(OpLoadSnapshot); err != nil {
		return err
	}
	defer c.mu.Unlock()
	if c.configured {
		return errors.New("PUT /snapshot/load is only accepted before anything but the logger and metrics is configured")
	}
	if c.opts.LoadSnapshot == nil {
		return ErrSnapshotUnavailable
	}
	base := c.cfg
	base.Logger = c.vmmLog
	m, err := c.whileStarting(func() (Machine, error) { return c.opts.LoadSnapshot(ctx, base, p) })
	if err != nil {
		return fmt.Errorf("load snapshot: %w", err)
	}
	// As Firecracker's GET /vm/config after a restore: no boot source,
	// and the machine as the snapshot describes it.
	mm := m.Metrics()
	c.cfg.KernelPath, c.cfg.InitrdPath = "", ""
	c.cfg.CPUs, c.cfg.MemorySize, c.cfg.HugePages = mm.VCPUs, mm.MemoryBytes, mm.HugePages
	c.cfg.TrackDirtyPages = p.TrackDirtyPages || p.EnableDiffSnapshots
	state := Paused
	if p.ResumeVM {
		state = Running
	}
	c.launchLocked(m, state)
	return nil
}

// Stop stops the microVM, if it runs, and waits until it has.
func (c *Controller) Stop() {
	c.mu.Lock()
	m := c.machine
	c.mu.Unlock()
	if m != nil {
		m.Stop()
		<-c.done
	}
}

// Close stops the microVM and releases it, the log and metrics files.
func (c *Controller) Close() error { return c.close(true) }

// CloseForExit is Close for a process about to exit: it stops the VM and
// closes the sinks but leaves the VM's KVM objects and memory to the
// kernel's exit path. Destroying a KVM VM explicitly only makes the exit
// wait for it (measured 28 ms for closing the VM fd on the development
// host), and the kernel does the same work when the process ends.
func (c *Controller) CloseForExit() error { return c.close(false) }

func (c *Controller) close(releaseMachine bool) error {
	var errs []error
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.closing = true
		c.mu.Unlock()
		c.Stop()
		close(c.stopTick)
		c.wg.Wait()
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.machine != nil && releaseMachine {
			errs = append(errs, c.machine.Close())
		}
		c.metricsMu.Lock()
		if c.metricsSink != nil {
			errs = append(errs, c.metricsSink.Close())
		}
		c.metricsMu.Unlock()
		if c.logSink != nil {
			errs = append(errs, c.logSink.Close())
		}
	})
	return errors.Join(errs...)
}

// count records one API request for the metrics file, under Firecracker's
// group names (get_api_requests, put_api_requests, patch_api_requests).
func (c *Controller) count(group, name string, failed bool) {
	c.metricsMu.Lock()
	defer c.metricsMu.Unlock()
	g := c.counters[group]
	if g == nil {
		g = map[string]uint64{}
		c.counters[group] = g
	}
	g[name+"_count"]++
	if failed {
		g[name+"_fails"]++
	}
}

// MetricsLine is one line of the metrics file.
type MetricsLine struct {
	UTCTimestampMs int64                        `json:"utc_timestamp_ms"`
	State          string                       `json:"state"`
	API            map[string]map[string]uint64 `json:"-"`
	VMM            *vmm.Metrics                 `json:"vmm,omitempty"`
}

// MarshalJSON puts the API request groups at the top level, where
// Firecracker has them.
func (m MetricsLine) MarshalJSON() ([]byte, error) {
	out := map[string]any{"utc_timestamp_ms": m.UTCTimestampMs, "state": m.State}
	for g, counts := range m.API {
		out[g] = counts
	}
	if m.VMM != nil {
		out["vmm"] = m.VMM
	}
	return json.Marshal(out)
}

// flushMetrics writes one JSON line of metrics. It does not take c.mu, so
// the periodic flush never waits behind a long request.
func (c *Controller) flushMetrics() error {
	state := c.stateForMetrics()
	c.metricsMu.Lock()
	defer c.metricsMu.Unlock()
	if c.metricsSink == nil {
		return errors.New("metrics are not configured")
	}
	line := MetricsLine{UTCTimestampMs: time.Now().UnixMilli(), State: state, API: map[string]map[string]uint64{}}
	for g, counts := range c.counters {
		line.API[g] = maps.Clone(counts)
	}
	if c.running != nil {
		m := c.running.Metrics()
		line.VMM = &m
	}
	b, err := json.Marshal(line)
	if err != nil {
		return fmt.Errorf("encode metrics: %w", err)
	}
	if _, err := c.metricsSink.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("FlushMetrics: %w", err)
	}
	return nil
}

// stateForMetrics reads the state without waiting for c.mu, which a pause
// in progress may hold.
func (c *Controller) stateForMetrics() string {
	select {
	case <-c.done:
		return Stopped.String()
	default:
		return State(c.published.Load()).String()
	}
}

// setStateLocked changes the state and publishes it for stateForMetrics.
// Precondition: c.mu held.
func (c *Controller) setStateLocked(s State) {
	c.state = s
	c.published.Store(int32(s))
}
