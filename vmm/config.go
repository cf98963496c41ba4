// Package vmm builds and runs one microVM: it wires guest memory, the boot
// loader, vCPUs and devices together (the "builder") and owns the vCPU
// threads. One VM per process, as in Firecracker: a crash or kill affects
// one guest only.
package vmm

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/voltvmm/volt/guest/profile"
	"github.com/voltvmm/volt/vmm/boot"
	"github.com/voltvmm/volt/vmm/cpu"
	"github.com/voltvmm/volt/vmm/devices/bootmarker"
	"github.com/voltvmm/volt/vmm/memory"
	"github.com/voltvmm/volt/vmm/snapshot"
	"github.com/voltvmm/volt/vmm/virtio/vsock"
)

// Config describes a VM to boot.
type Config struct {
	KernelPath string
	InitrdPath string // optional
	Cmdline    string
	// Protocol forces a boot protocol; the zero value picks PVH when the
	// kernel has the PVH note, else the Linux 64-bit protocol.
	Protocol boot.Protocol

	MemorySize uint64
	HugePages  bool
	// AllowOvercommit lets MemorySize exceed the host's RAM and swap
	// (HostMemory); otherwise such a VM is refused before it is built.
	AllowOvercommit bool
	CPUs            int
	// TrackDirtyPages has KVM log the pages the guest writes, which diff
	// snapshots need; it costs a write-protection fault per page per
	// snapshot interval, so it is off unless asked for.
	TrackDirtyPages bool

	CPUTemplate string   // see cpu.Templates; "" means host
	CPUIDMask   []string // extra CPUID features to hide
	// GuestProfile names a guest/profile whose kernel options and CPUID
	// masks are added at build ("" and "none" add nothing).
	GuestProfile string

	// Drives, Nets, Vsock and Entropy are the virtio devices, declared to
	// the guest on its command line (virtio_mmio.device=...).
	Drives  []DriveConfig
	Nets    []NetConfig
	Vsock   *VsockConfig
	Entropy *EntropyConfig
	// VsockRequestTimeout is how long a host client's CONNECT to the
	// guest waits for its answer, for this VM's vsock device however it
	// comes (Vsock, PUT /vsock, a snapshot) unless its own Config sets
	// one; zero is vsock.RequestTimeout (Firecracker's 2 s). A snapshot
	// does not carry it: it is the host's policy (RestoreConfig has it).
	VsockRequestTimeout time.Duration

	// Console receives the guest's serial output; nil discards it.
	Console io.Writer
	// ConsoleInput, if set, is fed to the guest's serial port.
	ConsoleInput io.Reader

	// Origin is the time the boot timeline is measured from; callers pass
	// the process start so that the timeline covers exec→guest.
	Origin time.Time
	// OnMarker is called on the vCPU thread for every boot marker.
	OnMarker func(bootmarker.Event)
	// MarkerDelay stalls the guest at every boot marker. It exists only to
	// inject a measurable regression for tests and the CI gate.
	MarkerDelay time.Duration
	// AfterSnapshotStep, if set, is called after each step of writing a
	// snapshot; tests kill the VMM there.
	AfterSnapshotStep func(snapshot.CreateStep)
	// Logger receives warnings (e.g. the huge-page fallback); nil means
	// slog's default logger.
	Logger *slog.Logger
	// Confinement, if set, is applied by Run before the guest's first
	// instruction (seccomp, Landlock, capabilities). It is irreversible for
	// the whole process.
	Confinement *Confinement
}

// Defaults used by the CLI and the API.
const (
	DefaultMemory = 128 << 20
	DefaultCPUs   = 1
	// MaxCPUs is the one vCPU limit for the command line, the API and
	// config files: Firecracker's (the swagger's vcpu_count maximum).
	MaxCPUs        = 32
	MinMemory      = 2 << 20
	DefaultCmdline = "console=ttyS0 reboot=k panic=1"
)

// Validate checks the configuration without touching the host.
func (c *Config) Validate() error {
	var errs []error
	if c.KernelPath == "" {
		errs = append(errs, errors.New("no kernel given"))
	}
	if c.MemorySize < MinMemory {
		errs = append(errs, fmt.Errorf("memory %s is below the minimum %s", FormatSize(c.MemorySize), FormatSize(MinMemory)))
	}
	if err := (memory.Config{Size: c.MemorySize, Backing: c.backing()}).Validate(); err != nil && c.MemorySize >= MinMemory {
		errs = append(errs, err)
	}
	if c.CPUs < 1 || c.CPUs > MaxCPUs {
		errs = append(errs, fmt.Errorf("vCPU count %d outside 1..%d", c.CPUs, MaxCPUs))
	}
	if c.CPUTemplate != "" {
		if _, ok := cpu.Templates[c.CPUTemplate]; !ok {
			errs = append(errs, fmt.Errorf("unknown CPU template %q (known: %s)", c.CPUTemplate, strings.Join(cpu.TemplateNames(), ", ")))
		}
	}
	for _, f := range c.CPUIDMask {
		if _, ok := cpu.Features[f]; !ok {
			errs = append(errs, fmt.Errorf("unknown CPU feature %q in the CPUID mask", f))
		}
	}
	if c.GuestProfile != "" {
		if _, err := profile.Lookup(c.GuestProfile); err != nil {
			errs = append(errs, err)
		}
	}
	if c.Confinement != nil {
		if err := c.Confinement.Validate(); err != nil {
			errs = append(errs, err)
		}
	}
	if c.MarkerDelay < 0 {
		errs = append(errs, errors.New("negative marker delay"))
	}
	if c.VsockRequestTimeout != 0 {
		if err := vsock.ValidateRequestTimeout(c.VsockRequestTimeout); err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, c.validateDevices()...)
	return errors.Join(errs...)
}

// applyProfile adds the guest profile's kernel options and CPUID masks to
// the configuration, so that a snapshot records what the guest really got.
func (c *Config) applyProfile() error {
	if c.GuestProfile == "" {
		return nil
	}
	p, err := profile.Lookup(c.GuestProfile)
	if err != nil {
		return err
	}
	if c.Cmdline, err = p.Apply(c.Cmdline); err != nil {
		return fmt.Errorf("guest profile %s: %w", p.Name, err)
	}
	for _, f := range p.CPUIDMask {
		if !slices.Contains(c.CPUIDMask, f) {
			c.CPUIDMask = append(slices.Clip(c.CPUIDMask), f)
		}
	}
	return nil
}

// CheckHostMemory refuses guest memory larger than the host can back (RAM
// plus swap) unless overcommit is allowed: the VM would build, and the OOM
// killer would end it once the guest touched enough of its memory.
func CheckHostMemory(size uint64, allowOvercommit bool) error {
	if allowOvercommit {
		return nil
	}
	host, err := memory.HostBacking()
	if err != nil {
		return err
	}
	if size > host {
		return fmt.Errorf("guest memory %s is more than this host's RAM and swap (%.1f GiB); allow it with --memory-overcommit", FormatSize(size), float64(host)/(1<<30))
	}
	return nil
}

func (c *Config) backing() memory.Backing {
	if c.HugePages {
		return memory.HugePages
	}
	return memory.Anonymous
}

// ParseSize reads a memory size such as "128M", "1G", "512MiB" or a plain
// number of MiB, as Firecracker's mem_size_mib is.
func ParseSize(s string) (uint64, error) {
	t := strings.TrimSpace(s)
	if t == "" {
		return 0, errors.New("empty size")
	}
	i := len(t)
	for i > 0 && (t[i-1] < '0' || t[i-1] > '9') {
		i--
	}
	num, unit := t[:i], strings.ToUpper(strings.TrimSpace(t[i:]))
	n, err := strconv.ParseUint(num, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("size %q: not a number followed by an optional unit (K, M, G)", s)
	}
	var shift uint
	switch strings.TrimSuffix(strings.TrimSuffix(unit, "B"), "I") {
	case "", "M":
		shift = 20
	case "K":
		shift = 10
	case "G":
		shift = 30
	case "T":
		shift = 40
	default:
		return 0, fmt.Errorf("size %q: unknown unit %q (use K, M, G or T)", s, unit)
	}
	if unit == "B" {
		shift = 0
	}
	if n > (1<<64-1)>>shift {
		return 0, fmt.Errorf("size %q overflows", s)
	}
	return n << shift, nil
}

// FormatSize prints a byte count the way ParseSize reads it back.
func FormatSize(n uint64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%dG", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%dM", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%dK", n>>10)
	}
	return fmt.Sprintf("%dB", n)
}
