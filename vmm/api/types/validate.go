package types

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"strings"
)

// Limits of the machine configuration.
const (
	// MaxVCPUs is Firecracker's limit (the swagger's vcpu_count maximum);
	// the boot loader could describe more, but callers validate against 32.
	MaxVCPUs = 32
	// MinMemMib is the smallest guest volt-vmm builds (vmm.MinMemory).
	MinMemMib = 2
	// MaxMemMib is the largest guest memory the VMM maps (memory.MaxSize,
	// 1 TiB; a test in package api keeps the two equal).
	MaxMemMib = 1 << 20
)

// Huge page settings of MachineConfiguration.huge_pages.
const (
	HugePagesNone = "None"
	HugePages2M   = "2M"
)

// CPU templates. Firecracker's names other than "None" mask CPUID to
// match an EC2 instance type; volt-vmm does not reproduce those masks and
// rejects them rather than boot a guest with a different CPU than asked.
// The Volt templates are accepted by their own names as an extension.
const CPUTemplateNone = "None"

// firecrackerTemplates are the swagger CpuTemplate values other than None.
var firecrackerTemplates = []string{"C3", "T2", "T2S", "T2CL", "T2A", "V1N1"}

// checkCPUTemplate accepts "None" (the host template), the Volt template
// names, and nothing else.
func checkCPUTemplate(name string, voltTemplates []string) error {
	if name == CPUTemplateNone || slices.Contains(voltTemplates, name) {
		return nil
	}
	if slices.Contains(firecrackerTemplates, name) {
		return fmt.Errorf("cpu_template %q is a Firecracker instance-type template that volt-vmm does not implement; use %q or one of the volt templates: %s",
			name, CPUTemplateNone, strings.Join(voltTemplates, ", "))
	}
	return fmt.Errorf("cpu_template %q is not a known template (use %q or one of the volt templates: %s)",
		name, CPUTemplateNone, strings.Join(voltTemplates, ", "))
}

// MaxBootArgs is the longest kernel command line, without its NUL: x86
// Linux's COMMAND_LINE_SIZE is 2048 with it (boot.DefaultCmdlineMax; a test
// in package api keeps the two equal). The kernel would cut a longer one.
const MaxBootArgs = 2047

// Validate checks a boot source's fields; whether the files exist is
// checked by the controller, which may touch the host.
func (b BootSource) Validate() error {
	if b.KernelImagePath == "" {
		return errors.New("kernel_image_path must not be empty")
	}
	if len(b.BootArgs) > MaxBootArgs {
		return fmt.Errorf("boot_args is %d bytes long, the kernel takes at most %d", len(b.BootArgs), MaxBootArgs)
	}
	if i := strings.IndexByte(b.BootArgs, 0); i >= 0 {
		return fmt.Errorf("boot_args contains a NUL byte at offset %d, which would end the command line there", i)
	}
	return checkPaths(map[string]string{"kernel_image_path": b.KernelImagePath, "initrd_path": b.InitrdPath})
}

// checkPaths rejects host paths the kernel would refuse anyway, with a
// message that names the field.
func checkPaths(paths map[string]string) error {
	for _, name := range slices.Sorted(maps.Keys(paths)) {
		if strings.IndexByte(paths[name], 0) >= 0 {
			return fmt.Errorf("%s contains a NUL byte", name)
		}
	}
	return nil
}

// Validate checks a complete machine configuration. voltTemplates lists
// the CPU templates the VMM knows.
func (m MachineConfiguration) Validate(voltTemplates []string) error {
	if m.VCPUCount < 1 || m.VCPUCount > MaxVCPUs {
		return fmt.Errorf("vcpu_count must be between 1 and %d, got %d", MaxVCPUs, m.VCPUCount)
	}
	if m.MemSizeMib < MinMemMib {
		return fmt.Errorf("mem_size_mib must be at least %d, got %d", MinMemMib, m.MemSizeMib)
	}
	if m.MemSizeMib > MaxMemMib {
		return fmt.Errorf("mem_size_mib must be at most %d, got %d", int64(MaxMemMib), m.MemSizeMib)
	}
	if m.SMT {
		// Volt's CPUID topology gives each vCPU its own core; claiming
		// sibling threads would mislead the guest's scheduler.
		return errors.New("smt cannot be enabled: volt-vmm presents every vCPU as its own core (set smt to false or omit it)")
	}
	if m.CPUTemplate != "" {
		if err := checkCPUTemplate(m.CPUTemplate, voltTemplates); err != nil {
			return err
		}
	}
	switch m.HugePages {
	case "", HugePagesNone:
	case HugePages2M:
		if m.MemSizeMib%2 != 0 {
			return fmt.Errorf("mem_size_mib must be a multiple of 2 with 2M huge pages, got %d", m.MemSizeMib)
		}
	case "Transparent":
		return errors.New(`huge_pages "Transparent" is not supported by volt-vmm; use "None" or "2M"`)
	default:
		return fmt.Errorf(`huge_pages must be "None" or "2M", got %q`, m.HugePages)
	}
	return nil
}

// Apply returns m with the fields set in p replaced.
func (p MachineConfigurationPatch) Apply(m MachineConfiguration) MachineConfiguration {
	if p.VCPUCount != nil {
		m.VCPUCount = *p.VCPUCount
	}
	if p.MemSizeMib != nil {
		m.MemSizeMib = *p.MemSizeMib
	}
	if p.SMT != nil {
		m.SMT = *p.SMT
	}
	if p.CPUTemplate != nil {
		m.CPUTemplate = *p.CPUTemplate
	}
	if p.TrackDirtyPages != nil {
		m.TrackDirtyPages = *p.TrackDirtyPages
	}
	if p.HugePages != nil {
		m.HugePages = *p.HugePages
	}
	return m
}

// Empty reports whether the patch sets no field.
func (p MachineConfigurationPatch) Empty() bool {
	return p == MachineConfigurationPatch{}
}

// Validate checks an action request.
func (a InstanceActionInfo) Validate() error {
	switch a.ActionType {
	case ActionInstanceStart, ActionSendCtrlAltDel, ActionFlushMetrics:
		return nil
	}
	return fmt.Errorf("action_type must be %s, %s or %s, got %q", ActionInstanceStart, ActionSendCtrlAltDel, ActionFlushMetrics, a.ActionType)
}

// Validate checks a VM state request.
func (v VM) Validate() error {
	switch v.State {
	case VMPaused, VMResumed:
		return nil
	}
	return fmt.Errorf("state must be %q or %q, got %q", VMPaused, VMResumed, v.State)
}

// Validate checks a logger configuration.
func (l Logger) Validate() error {
	if l.Level != "" {
		if _, err := ParseLevel(l.Level); err != nil {
			return err
		}
	}
	return checkPaths(map[string]string{"log_path": l.LogPath})
}

// Validate checks a metrics configuration.
func (m Metrics) Validate() error {
	if m.MetricsPath == "" {
		return errors.New("metrics_path must not be empty")
	}
	return checkPaths(map[string]string{"metrics_path": m.MetricsPath})
}

func (b *TokenBucket) validate(name string) error {
	if b == nil {
		return nil
	}
	if b.Size < 0 {
		return fmt.Errorf("%s.size must not be negative, got %d", name, b.Size)
	}
	if b.RefillTime < 0 {
		return fmt.Errorf("%s.refill_time must not be negative, got %d", name, b.RefillTime)
	}
	if b.OneTimeBurst != nil && *b.OneTimeBurst < 0 {
		return fmt.Errorf("%s.one_time_burst must not be negative, got %d", name, *b.OneTimeBurst)
	}
	return nil
}

func (r *RateLimiter) validate(name string) error {
	if r == nil {
		return nil
	}
	if err := r.Bandwidth.validate(name + ".bandwidth"); err != nil {
		return err
	}
	return r.Ops.validate(name + ".ops")
}

// maxIDLen bounds resource ids; Firecracker's ids are short names too.
const maxIDLen = 64

// checkID validates a resource id from the URL against the one in the body.
func checkID(field, body, fromPath string) error {
	if body == "" {
		return fmt.Errorf("%s must not be empty", field)
	}
	if len(body) > maxIDLen {
		return fmt.Errorf("%s is longer than %d bytes", field, maxIDLen)
	}
	for _, r := range body {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-') {
			return fmt.Errorf("%s %q may only hold letters, digits, '_' and '-'", field, body)
		}
	}
	if body != fromPath {
		return fmt.Errorf("%s %q in the body does not match %q in the path", field, body, fromPath)
	}
	return nil
}

// Validate checks a drive against the id in the request path.
func (d Drive) Validate(pathID string) error {
	if err := checkID("drive_id", d.DriveID, pathID); err != nil {
		return err
	}
	switch d.CacheType {
	case "", "Unsafe", "Writeback":
	default:
		return fmt.Errorf(`cache_type must be "Unsafe" or "Writeback", got %q`, d.CacheType)
	}
	switch d.IOEngine {
	case "", "Sync", "Async":
	default:
		return fmt.Errorf(`io_engine must be "Sync" or "Async", got %q`, d.IOEngine)
	}
	switch {
	case d.PathOnHost == "" && d.Socket == "":
		return errors.New("path_on_host is required (or socket, for a vhost-user drive)")
	case d.PathOnHost != "" && d.Socket != "":
		return errors.New("path_on_host and socket are mutually exclusive")
	case d.Socket != "" && (d.IsReadOnly != nil || d.IOEngine != "" || d.RateLimiter != nil):
		return errors.New("is_read_only, io_engine and rate_limiter do not apply to a vhost-user drive (socket)")
	}
	if d.PartUUID != "" && !d.IsRootDevice {
		return errors.New("partuuid is only used with is_root_device true")
	}
	if err := d.RateLimiter.validate("rate_limiter"); err != nil {
		return err
	}
	return checkPaths(map[string]string{"path_on_host": d.PathOnHost, "socket": d.Socket})
}

// maxIfNameLen is IFNAMSIZ less its NUL.
const maxIfNameLen = 15

// Validate checks a network interface against the id in the request path.
func (n NetworkInterface) Validate(pathID string) error {
	if err := checkID("iface_id", n.IfaceID, pathID); err != nil {
		return err
	}
	if n.HostDevName == "" || len(n.HostDevName) > maxIfNameLen || strings.ContainsAny(n.HostDevName, "/ \x00") {
		return fmt.Errorf("host_dev_name %q is not a host interface name (1 to %d bytes, no '/', space or NUL)", n.HostDevName, maxIfNameLen)
	}
	if n.GuestMAC != "" {
		mac, err := net.ParseMAC(n.GuestMAC)
		if err != nil || len(mac) != 6 {
			return fmt.Errorf("guest_mac %q is not a MAC address like 06:00:ac:10:00:02", n.GuestMAC)
		}
	}
	if n.MTU != nil && (*n.MTU < 68 || *n.MTU > 65535) {
		return fmt.Errorf("mtu must be between 68 and 65535, got %d", *n.MTU)
	}
	if err := n.RxRateLimiter.validate("rx_rate_limiter"); err != nil {
		return err
	}
	return n.TxRateLimiter.validate("tx_rate_limiter")
}

// Vsock CIDs 0–2 are reserved (hypervisor, local, host) and 2^32-1 is
// VMADDR_CID_ANY; a Unix socket path must fit sockaddr_un.sun_path.
const (
	minGuestCID = 3
	maxGuestCID = 1<<32 - 2
	// MaxSocketPath is the longest path a Unix socket can be bound to
	// (sockaddr_un.sun_path holds 108 bytes with the terminating NUL).
	MaxSocketPath = 107
)

// Validate checks a vsock device.
func (v Vsock) Validate() error {
	if v.GuestCID < minGuestCID || v.GuestCID > maxGuestCID {
		return fmt.Errorf("guest_cid must be between %d and %d, got %d", minGuestCID, int64(maxGuestCID), v.GuestCID)
	}
	if v.UDSPath == "" {
		return errors.New("uds_path must not be empty")
	}
	if len(v.UDSPath) > MaxSocketPath {
		return fmt.Errorf("uds_path is %d bytes, longer than a Unix socket path can be (%d)", len(v.UDSPath), MaxSocketPath)
	}
	return checkPaths(map[string]string{"uds_path": v.UDSPath})
}

// Validate checks an entropy device.
func (e EntropyDevice) Validate() error {
	return e.RateLimiter.validate("rate_limiter")
}

// Validate checks snapshot creation parameters.
func (s SnapshotCreateParams) Validate() error {
	if s.SnapshotPath == "" {
		return errors.New("snapshot_path must not be empty")
	}
	switch b := s.MemBackend; {
	case b == nil && s.MemFilePath == "":
		return errors.New("mem_file_path must not be empty")
	case b != nil && s.MemFilePath != "":
		return errors.New("mem_file_path and mem_backend are mutually exclusive")
	case b != nil && b.BackendType != MemBackendCas:
		return fmt.Errorf(`mem_backend.backend_type must be %q when creating a snapshot (or give mem_file_path), got %q`, MemBackendCas, b.BackendType)
	case b != nil && b.BackendPath == "":
		return errors.New("mem_backend.backend_path must name a CAS store")
	case b != nil && b.ChunkSize != 0 && (b.ChunkSize < MinChunkSize || b.ChunkSize > MaxChunkSize || b.ChunkSize&(b.ChunkSize-1) != 0):
		return fmt.Errorf("mem_backend.chunk_size must be a power of two from %d to %d, got %d", MinChunkSize, MaxChunkSize, b.ChunkSize)
	}
	if s.SnapshotPath == s.MemFilePath {
		return errors.New("snapshot_path and mem_file_path must be different files")
	}
	switch s.SnapshotType {
	case "", SnapshotFull, SnapshotDiff:
	default:
		return fmt.Errorf("snapshot_type must be %q or %q, got %q", SnapshotFull, SnapshotDiff, s.SnapshotType)
	}
	paths := map[string]string{"snapshot_path": s.SnapshotPath, "mem_file_path": s.MemFilePath}
	if s.MemBackend != nil {
		paths["mem_backend.backend_path"] = s.MemBackend.BackendPath
	}
	return checkPaths(paths)
}

// Validate checks snapshot load parameters.
func (s SnapshotLoadParams) Validate() error {
	if s.SnapshotPath == "" {
		return errors.New("snapshot_path must not be empty")
	}
	switch {
	case s.MemFilePath == "" && s.MemBackend == nil:
		return errors.New("one of mem_file_path and mem_backend is required")
	case s.MemFilePath != "" && s.MemBackend != nil:
		return errors.New("mem_file_path and mem_backend are mutually exclusive")
	}
	if b := s.MemBackend; b != nil {
		if b.BackendType != MemBackendFile && b.BackendType != MemBackendUffd && b.BackendType != MemBackendCas {
			return fmt.Errorf(`mem_backend.backend_type must be "File", "Uffd" or "Cas", got %q`, b.BackendType)
		}
		if b.BackendPath == "" {
			return errors.New("mem_backend.backend_path must not be empty")
		}
		if b.ChunkSize != 0 {
			return errors.New("mem_backend.chunk_size is for creating a snapshot; a load takes the manifest's")
		}
	}
	for i, o := range s.NetworkOverrides {
		if o.IfaceID == "" || o.HostDevName == "" {
			return fmt.Errorf("network_overrides[%d]: iface_id and host_dev_name must not be empty", i)
		}
	}
	if s.VsockOverride != nil && s.VsockOverride.UDSPath == "" {
		return errors.New("vsock_override.uds_path must not be empty")
	}
	paths := map[string]string{"snapshot_path": s.SnapshotPath, "mem_file_path": s.MemFilePath}
	if s.MemBackend != nil {
		paths["mem_backend.backend_path"] = s.MemBackend.BackendPath
	}
	return checkPaths(paths)
}
