package pool

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	pc "github.com/voltvmm/volt/pool/client"
	"github.com/voltvmm/volt/vmm/api/client"
	"github.com/voltvmm/volt/vmm/api/types"
)

type vmState string

const (
	vmStarting vmState = "starting" // process started, snapshot loading
	vmWarm     vmState = "warm"     // restored and paused, waiting for an acquire
	vmLeased   vmState = "leased"   // resumed and handed out
	vmStopping vmState = "stopping" // killed, waiting to be reaped
)

// File names inside a VM's directory.
const (
	vmRecordFile = "vm.json"
	// leaseFile exists while the VM is leased. It is a file of its own so
	// that an acquire creates it (a rename onto a new name) rather than
	// replacing vm.json: on ext4 a rename over an existing file starts the
	// new file's writeback (auto_da_alloc), ~0.45 ms here against ~0.05 ms
	// for a new name, on the acquire's critical path.
	leaseFile   = "lease.json"
	vmAPISock   = "api.sock"
	vmVsockSock = "vsock.sock"
	vmLogFile   = "vmm.log"
	// maxSunPath is the longest Unix socket path (sun_path holds 108
	// bytes with its NUL); the hybrid vsock's "<uds>_<port>" names must
	// fit too.
	maxSunPath = 107
)

// vmRecord is vms/ID/vm.json: which process the VM is. Whether it is
// leased is lease.json beside it.
type vmRecord struct {
	ID        string  `json:"id"`
	Template  string  `json:"template"`
	PID       int     `json:"pid"`
	StartTime uint64  `json:"start_time"` // /proc/PID/stat starttime
	State     vmState `json:"state"`
	APISock   string  `json:"api_sock"`
	VsockUDS  string  `json:"vsock_uds,omitempty"`
}

// vm is one VMM the pool owns. Fields after proc are guarded by Pool.mu.
type vm struct {
	id, template string
	dir          string
	api          *client.Client
	vsockUDS     string
	netns        string
	proc         *process

	state vmState
	lease *pc.Lease
}

func (v *vm) record() vmRecord {
	return vmRecord{ID: v.id, Template: v.template, PID: v.proc.pid, StartTime: v.proc.start, State: v.state,
		APISock: v.api.Socket(), VsockUDS: v.vsockUDS}
}

// spawnSpec is how to start one VMM.
type spawnSpec struct {
	id, template string
	dir          string // created; holds the sockets, the log and the record
	vmmBin       string
	extraArgs    []string
	network      *pc.Network
	vsock        bool
	background   bool // restore at the lowest CPU priority (a refill)
}

// spawn starts a VMM serving its API in dir, in its own network namespace
// with the template's TAP when it has a network, and waits for its API.
func spawn(ctx context.Context, s spawnSpec) (*vm, error) {
	if err := os.Mkdir(s.dir, 0o750); err != nil {
		return nil, fmt.Errorf("VM directory: %w", err)
	}
	api := filepath.Join(s.dir, vmAPISock)
	vsock := ""
	if s.vsock {
		vsock = filepath.Join(s.dir, vmVsockSock)
	}
	if len(api) > maxSunPath || len(vsock)+len("_4294967295") > maxSunPath {
		os.RemoveAll(s.dir)
		return nil, fmt.Errorf("VM directory %s: socket paths would exceed %d bytes: use a shorter --state-dir", s.dir, maxSunPath)
	}
	log, err := os.OpenFile(filepath.Join(s.dir, vmLogFile), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		os.RemoveAll(s.dir)
		return nil, fmt.Errorf("VMM log: %w", err)
	}
	argv := append([]string{s.vmmBin, "--api-sock", api, "--id", "pool-" + s.id}, s.extraArgs...)
	p, err := startProcess(argv, log, s.network != nil, s.background)
	log.Close()
	if err != nil {
		os.RemoveAll(s.dir)
		return nil, err
	}
	v := &vm{id: s.id, template: s.template, dir: s.dir, api: client.New(api), vsockUDS: vsock, proc: p, state: vmStarting}
	if s.network != nil {
		v.netns = "/proc/" + strconv.Itoa(p.pid) + "/ns/net"
		if err := createTAPIn(p.pid, s.network.HostDevName); err != nil {
			return v, fmt.Errorf("clone network: %w", err)
		}
	}
	if err := waitAPI(ctx, v); err != nil {
		return v, err
	}
	return v, nil
}

// waitAPI polls the new VMM's API until it answers, the process exits (a
// bad flag, a missing /dev/kvm: no point waiting for the deadline) or ctx
// ends.
func waitAPI(ctx context.Context, v *vm) error {
	var last error
	for {
		actx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := v.api.Describe(actx)
		cancel()
		if err == nil {
			return nil
		}
		last = err
		if v.proc.hasExited() {
			msg := fmt.Sprintf("VMM %d exited before its API answered", v.proc.pid)
			if tail := logTail(v.dir); tail != "" {
				msg += ": " + tail
			}
			return errors.New(msg)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("VMM %d: API socket never answered: %w (last: %v)", v.proc.pid, ctx.Err(), last)
		case <-time.After(time.Millisecond):
		}
	}
}

// load restores snap into a freshly spawned VMM, paused unless resume; the
// vsock (if any) gets this VM's own socket path.
func (v *vm) load(ctx context.Context, snap Snapshot, resume bool) error {
	p := types.SnapshotLoadParams{
		SnapshotPath: snap.StatePath,
		MemBackend:   &types.MemoryBackend{BackendType: "File", BackendPath: snap.MemPath},
		ResumeVM:     resume,
	}
	if v.vsockUDS != "" {
		p.VsockOverride = &types.VsockOverride{UDSPath: v.vsockUDS}
	}
	if err := v.api.LoadSnapshot(ctx, p); err != nil {
		return fmt.Errorf("load snapshot into VMM %d: %w", v.proc.pid, err)
	}
	return nil
}

// logTail returns the last lines of the VMM's log, for error messages.
func logTail(dir string) string {
	b, err := os.ReadFile(filepath.Join(dir, vmLogFile))
	if err != nil || len(b) == 0 {
		return ""
	}
	if len(b) > 2048 {
		b = b[len(b)-2048:]
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	return strings.Join(lines, " | ")
}
