// Package types holds the bodies of the Firecracker-compatible API as Go
// types, their validation and their strict JSON decoding. It imports
// nothing but the standard library, so that callers of a VMM's API socket
// (the typed client, the pool, voltbench) share the server's definitions
// without linking the VMM.
//
// The types mirror Firecracker's swagger (src/firecracker/swagger/
// firecracker.yaml, version 1.17.0-dev at commit 004d9353). Fields a client
// may omit use omitempty so that responses are valid against the schema;
// `volt:"required"` marks the swagger's required properties, which the
// decoder enforces.
package types

// BootSource is the swagger BootSource.
type BootSource struct {
	KernelImagePath string `json:"kernel_image_path" volt:"required"`
	BootArgs        string `json:"boot_args,omitempty"`
	InitrdPath      string `json:"initrd_path,omitempty"`
}

// MachineConfiguration is the swagger MachineConfiguration, as PUT takes it
// and GET returns it.
type MachineConfiguration struct {
	VCPUCount       int64  `json:"vcpu_count" volt:"required"`
	MemSizeMib      int64  `json:"mem_size_mib" volt:"required"`
	SMT             bool   `json:"smt"`
	CPUTemplate     string `json:"cpu_template,omitempty" volt:"nonempty"`
	TrackDirtyPages bool   `json:"track_dirty_pages"`
	HugePages       string `json:"huge_pages,omitempty" volt:"nonempty"`
}

// MachineConfigurationPatch is the body of PATCH /machine-config: the same
// schema with every field optional; a nil field keeps its current value.
type MachineConfigurationPatch struct {
	VCPUCount       *int64  `json:"vcpu_count,omitempty"`
	MemSizeMib      *int64  `json:"mem_size_mib,omitempty"`
	SMT             *bool   `json:"smt,omitempty"`
	CPUTemplate     *string `json:"cpu_template,omitempty" volt:"nonempty"`
	TrackDirtyPages *bool   `json:"track_dirty_pages,omitempty"`
	HugePages       *string `json:"huge_pages,omitempty" volt:"nonempty"`
}

// Action types of InstanceActionInfo.
const (
	ActionInstanceStart  = "InstanceStart"
	ActionSendCtrlAltDel = "SendCtrlAltDel"
	ActionFlushMetrics   = "FlushMetrics"
)

// InstanceActionInfo is the swagger InstanceActionInfo (PUT /actions).
type InstanceActionInfo struct {
	ActionType string `json:"action_type" volt:"required"`
}

// Values of Vm.state.
const (
	VMPaused  = "Paused"
	VMResumed = "Resumed"
)

// VM is the swagger Vm (PATCH /vm).
type VM struct {
	State string `json:"state" volt:"required"`
}

// InstanceInfo is the swagger InstanceInfo (GET /).
type InstanceInfo struct {
	AppName    string `json:"app_name"`
	ID         string `json:"id"`
	State      string `json:"state"`
	VMMVersion string `json:"vmm_version"`
}

// FirecrackerVersion is the swagger FirecrackerVersion (GET /version).
type FirecrackerVersion struct {
	FirecrackerVersion string `json:"firecracker_version"`
}

// Logger is the swagger Logger (PUT /logger).
type Logger struct {
	LogPath       string `json:"log_path,omitempty"`
	Level         string `json:"level,omitempty"`
	ShowLevel     bool   `json:"show_level,omitempty"`
	ShowLogOrigin bool   `json:"show_log_origin,omitempty"`
	Module        string `json:"module,omitempty"`
}

// Metrics is the swagger Metrics (PUT /metrics).
type Metrics struct {
	MetricsPath string `json:"metrics_path" volt:"required"`
}

// TokenBucket is the swagger TokenBucket.
type TokenBucket struct {
	Size         int64  `json:"size" volt:"required"`
	OneTimeBurst *int64 `json:"one_time_burst,omitempty"`
	RefillTime   int64  `json:"refill_time" volt:"required"`
}

// RateLimiter is the swagger RateLimiter.
type RateLimiter struct {
	Bandwidth *TokenBucket `json:"bandwidth,omitempty"`
	Ops       *TokenBucket `json:"ops,omitempty"`
}

// Drive is the swagger Drive (PUT /drives/{drive_id}).
type Drive struct {
	DriveID      string       `json:"drive_id" volt:"required"`
	IsRootDevice bool         `json:"is_root_device" volt:"required"`
	PartUUID     string       `json:"partuuid,omitempty"`
	CacheType    string       `json:"cache_type,omitempty"`
	IsReadOnly   *bool        `json:"is_read_only,omitempty"`
	PathOnHost   string       `json:"path_on_host,omitempty"`
	RateLimiter  *RateLimiter `json:"rate_limiter,omitempty"`
	IOEngine     string       `json:"io_engine,omitempty"`
	Socket       string       `json:"socket,omitempty"`
}

// NetworkInterface is the swagger NetworkInterface
// (PUT /network-interfaces/{iface_id}).
type NetworkInterface struct {
	IfaceID       string       `json:"iface_id" volt:"required"`
	HostDevName   string       `json:"host_dev_name" volt:"required"`
	GuestMAC      string       `json:"guest_mac,omitempty"`
	MTU           *int64       `json:"mtu,omitempty"`
	RxRateLimiter *RateLimiter `json:"rx_rate_limiter,omitempty"`
	TxRateLimiter *RateLimiter `json:"tx_rate_limiter,omitempty"`
}

// Vsock is the swagger Vsock (PUT /vsock).
type Vsock struct {
	GuestCID int64  `json:"guest_cid" volt:"required"`
	UDSPath  string `json:"uds_path" volt:"required"`
	VsockID  string `json:"vsock_id,omitempty"` // deprecated in the swagger; accepted and ignored
}

// EntropyDevice is the swagger EntropyDevice (PUT /entropy).
type EntropyDevice struct {
	RateLimiter *RateLimiter `json:"rate_limiter,omitempty"`
}

// Snapshot types of SnapshotCreateParams.
const (
	SnapshotFull = "Full"
	SnapshotDiff = "Diff"
)

// SnapshotCreateParams is the swagger SnapshotCreateParams. mem_file_path is
// required there; volt-vmm also takes, instead of it, a Volt extension:
// mem_backend {"backend_type": "Cas", "backend_path": STORE}, which stores
// the memory in a CAS store (see docs/snapshots.md).
type SnapshotCreateParams struct {
	MemFilePath  string         `json:"mem_file_path,omitempty"`
	SnapshotPath string         `json:"snapshot_path" volt:"required"`
	SnapshotType string         `json:"snapshot_type,omitempty"`
	MemBackend   *MemoryBackend `json:"mem_backend,omitempty"`
}

// Memory backend types: Firecracker's File and Uffd, and Volt's Cas (the
// backend_path is a CAS store directory).
const (
	MemBackendFile = "File"
	MemBackendUffd = "Uffd"
	MemBackendCas  = "Cas"
)

// MemoryBackend is the swagger MemoryBackend.
type MemoryBackend struct {
	BackendType string `json:"backend_type" volt:"required"`
	BackendPath string `json:"backend_path" volt:"required"`
	// ChunkSize, volt-vmm's, is the chunk size in bytes of a memory
	// snapshot created in a CAS store (PUT /snapshot/create with
	// backend_type Cas): a power of two from 4 KiB to 64 MiB; 0 means the
	// VMM's default.
	ChunkSize int64 `json:"chunk_size,omitempty"`
}

// Chunk sizes a CAS memory snapshot may have (the CAS's own limits).
const (
	MinChunkSize = 4 << 10
	MaxChunkSize = 64 << 20
)

// NetworkOverride is the swagger NetworkOverride.
type NetworkOverride struct {
	IfaceID     string `json:"iface_id" volt:"required"`
	HostDevName string `json:"host_dev_name" volt:"required"`
}

// VsockOverride is the swagger VsockOverride.
type VsockOverride struct {
	UDSPath string `json:"uds_path" volt:"required"`
}

// SnapshotLoadParams is the swagger SnapshotLoadParams.
type SnapshotLoadParams struct {
	SnapshotPath        string            `json:"snapshot_path" volt:"required"`
	MemFilePath         string            `json:"mem_file_path,omitempty"`
	MemBackend          *MemoryBackend    `json:"mem_backend,omitempty"`
	EnableDiffSnapshots bool              `json:"enable_diff_snapshots,omitempty"`
	TrackDirtyPages     bool              `json:"track_dirty_pages,omitempty"`
	ResumeVM            bool              `json:"resume_vm,omitempty"`
	NetworkOverrides    []NetworkOverride `json:"network_overrides,omitempty"`
	VsockOverride       *VsockOverride    `json:"vsock_override,omitempty"`
	ClockRealtime       bool              `json:"clock_realtime,omitempty"`
}

// Error is the swagger Error, the body of every 4xx/5xx response.
type Error struct {
	FaultMessage string `json:"fault_message"`
}

// FullVMConfiguration is the swagger FullVmConfiguration (GET /vm/config).
// Sections volt-vmm does not implement (balloon, cpu-config, mmds-config,
// pmem, memory-hotplug) are never set.
type FullVMConfiguration struct {
	BootSource        *BootSource           `json:"boot-source,omitempty"`
	MachineConfig     *MachineConfiguration `json:"machine-config,omitempty"`
	Drives            []Drive               `json:"drives"`
	NetworkInterfaces []NetworkInterface    `json:"network-interfaces"`
	Logger            *Logger               `json:"logger,omitempty"`
	Metrics           *Metrics              `json:"metrics,omitempty"`
	Vsock             *Vsock                `json:"vsock,omitempty"`
	Entropy           *EntropyDevice        `json:"entropy,omitempty"`
}

// The files of a snapshot directory, as volt-vmm --restore DIR reads them
// and volt-snapshot and the pool write them.
const (
	SnapshotStateFile = "vm.state"
	SnapshotMemFile   = "vm.mem"
)
