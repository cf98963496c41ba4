// Package client is the Go client of voltpool's API (HTTP/JSON on a Unix
// socket) and the definition of its bodies, shared by the daemon, its CLI
// and voltbench.
package client

import "time"

// Paths of acquire.
const (
	PathWarm = "warm" // a pre-restored, paused VMM was resumed
	PathCold = "cold" // the pool was empty: restored on demand
)

// Lease is a running VM handed to a caller until it is released or its
// time runs out.
type Lease struct {
	ID        string    `json:"id"`
	Template  string    `json:"template"`
	VsockUDS  string    `json:"vsock_uds,omitempty"` // the VMM's hybrid vsock socket (guest CID 3); empty when the template has no vsock
	APISock   string    `json:"api_sock"`
	ExpiresAt time.Time `json:"expires_at"`
	Path      string    `json:"path"` // PathWarm or PathCold
	PID       int       `json:"pid"`
	// Netns is /proc/PID/ns/net of the VMM when the template has a
	// network (its TAP lives there); empty otherwise.
	Netns      string    `json:"netns,omitempty"`
	AcquiredAt time.Time `json:"acquired_at"`
	OwnerUID   uint32    `json:"owner_uid"`
}

// AcquireRequest is the body of POST /v1/leases.
type AcquireRequest struct {
	Template string `json:"template"`
	TTL      string `json:"ttl,omitempty"` // a Go duration ("60s"); default 60s
}

// RenewRequest is the body of POST /v1/leases/{id}/renew.
type RenewRequest struct {
	TTL string `json:"ttl"`
}

// Network is the one TAP a template's guest was booted with. Every clone
// gets a network namespace of its own holding a TAP of this name, so that
// clones never share a TAP (or a MAC or IP on the host side).
type Network struct {
	IfaceID     string `json:"iface_id"`
	HostDevName string `json:"host_dev_name"`
	GuestMAC    string `json:"guest_mac,omitempty"`
}

// TemplateSpec is what POST /v1/templates creates: either a guest to boot
// once and snapshot (Kernel…), or an existing snapshot directory to adopt
// (FromSnapshot).
type TemplateSpec struct {
	Name         string   `json:"name"`
	Kernel       string   `json:"kernel,omitempty"`
	Initrd       string   `json:"initrd,omitempty"`
	Rootfs       string   `json:"rootfs,omitempty"`
	Cmdline      string   `json:"cmdline,omitempty"`
	MemoryMiB    int64    `json:"memory_mib,omitempty"`
	CPUs         int64    `json:"cpus,omitempty"`
	GuestProfile string   `json:"guest_profile,omitempty"` // volt-vmm --guest-profile for the boot
	Vsock        bool     `json:"vsock"`                   // the guest has a vsock device (CID 3) and an agent
	Network      *Network `json:"network,omitempty"`
	// FromSnapshot is a directory holding vm.state and vm.mem; they are
	// copied into the pool's store.
	FromSnapshot string `json:"from_snapshot,omitempty"`
	Warm         int    `json:"warm"` // VMMs kept restored and paused
	// Prime has each warm VMM, once restored, resumed, asked one agent
	// ping and paused again before it counts as warm: the guest's first
	// touches of the pages its agent needs, and its post-restore work
	// (new generation ID, vsock transport reset), are then behind it when
	// a caller acquires it. Needs Vsock.
	Prime bool `json:"prime,omitempty"`
	// ReadyTimeout bounds the template boot (a Go duration; default 60s).
	ReadyTimeout string `json:"ready_timeout,omitempty"`
}

// Template is a stored template.
type Template struct {
	TemplateSpec
	CreatedAt time.Time `json:"created_at"`
	// BootToReady is how long the template boot took to be ready (zero
	// for a template adopted from a snapshot).
	BootToReady time.Duration `json:"boot_to_ready_ns,omitempty"`
	MemBytes    int64         `json:"mem_bytes"` // the memory file's size (logical)
}

// WarmRequest is the body of PUT /v1/templates/{name}/warm.
type WarmRequest struct {
	Warm int `json:"warm"`
}

// TemplateStatus is one template's row of GET /v1/status.
type TemplateStatus struct {
	Template  string `json:"template"`
	Warm      int    `json:"warm"`
	Starting  int    `json:"starting"`
	Leased    int    `json:"leased"`
	Target    int    `json:"target"`
	Restores  uint64 `json:"restores"`
	Failures  uint64 `json:"failures"`
	Deaths    uint64 `json:"deaths"`
	Expiries  uint64 `json:"expiries"`
	ColdPaths uint64 `json:"cold_acquires"`
}

// Status is the body of GET /v1/status.
type Status struct {
	Templates []TemplateStatus `json:"templates"`
	VMMs      int              `json:"vmms"` // VMM processes the pool owns now
	Draining  bool             `json:"draining"`
}

// Error is the body of every 4xx/5xx answer.
type Error struct {
	Error string `json:"error"`
}

// VMInfo describes one VMM the pool owns (GET /v1/vms): warm, starting,
// leased or stopping.
type VMInfo struct {
	ID       string `json:"id"`
	Template string `json:"template"`
	State    string `json:"state"`
	PID      int    `json:"pid"`
	APISock  string `json:"api_sock"`
}
