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

	"github.com/voltvmm/volt/cas"
	"github.com/voltvmm/volt/internal/jailpath"
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
	ID        string      `json:"id"`
	Template  string      `json:"template"`
	PID       int         `json:"pid"`        // volt-vmm
	StartTime uint64      `json:"start_time"` // /proc/PID/stat starttime
	State     vmState     `json:"state"`
	APISock   string      `json:"api_sock"`
	VsockUDS  string      `json:"vsock_uds,omitempty"`
	Jail      *jailRecord `json:"jail,omitempty"`
}

// jailRecord is what a restarted daemon needs to adopt a jailed VMM.
type jailRecord struct {
	SupervisorPID   int    `json:"supervisor_pid"` // volt-jailer, volt-vmm's parent
	SupervisorStart uint64 `json:"supervisor_start_time"`
	UID             int    `json:"uid"`
	Dir             string `json:"dir"` // <chroot base>/volt-vmm/<id>
	// Manifest is the CAS memory manifest the pool leases for the VMM
	// (which cannot lease it in the store itself); "" for none.
	Manifest string `json:"manifest,omitempty"`
}

// vm is one VMM the pool owns. Fields after proc are guarded by Pool.mu.
type vm struct {
	id, template string
	dir          string
	api          *client.Client
	vsockUDS     string // the host's path of the vsock socket
	netns        string
	proc         *process
	jail         *vmJail // nil: not jailed

	state vmState
	lease *pc.Lease
}

// vmJail is a jailed VMM's share of the host.
type vmJail struct {
	dir  string // <chroot base>/volt-vmm/<id>
	uid  int
	root string // dir/root: the VMM's /
	// casLease keeps the VMM's memory manifest from GC (see jail.go);
	// manifest is what it leases. Guarded by Pool.mu.
	casLease *cas.Lease
	manifest cas.Digest
}

// hostPath is where the host sees path of the VMM's file system.
func (v *vm) hostPath(path string) string {
	if v.jail == nil {
		return path
	}
	return filepath.Join(v.jail.root, path)
}

// pid is volt-vmm's pid.
func (v *vm) pid() int { return v.proc.vmmPID() }

func (v *vm) record() vmRecord {
	r := vmRecord{ID: v.id, Template: v.template, PID: v.proc.vmmPID(), StartTime: v.proc.vmmStart(), State: v.state,
		APISock: v.api.Socket(), VsockUDS: v.vsockUDS}
	if j := v.jail; j != nil {
		r.Jail = &jailRecord{SupervisorPID: v.proc.pid, SupervisorStart: v.proc.start, UID: j.uid, Dir: j.dir}
		if !j.manifest.IsZero() {
			r.Jail.Manifest = j.manifest.String()
		}
	}
	return r
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
	// jail, when set, starts the VMM through volt-jailer; the uid it
	// names is the VM's until the VM is reaped (see releaseJail).
	jail *jailSpawn
}

// spawn starts a VMM serving its API in dir, in its own network namespace
// with the template's TAP when it has a network, and waits for its API.
// Jailed, the VMM's sockets are in its chroot and extraArgs name paths
// inside it. An error with a nil vm means nothing was started and
// nothing is left (a jail's uid included); with a vm, the caller owns it.
func spawn(ctx context.Context, s spawnSpec) (*vm, error) {
	if err := os.Mkdir(s.dir, 0o750); err != nil {
		return nil, fmt.Errorf("VM directory: %w", err)
	}
	api := filepath.Join(s.dir, vmAPISock)
	vsock := ""
	if s.vsock {
		vsock = filepath.Join(s.dir, vmVsockSock)
	}
	var vj *vmJail
	if j := s.jail; j != nil {
		dir := jailpath.Dir(j.cfg.ChrootBase, s.vmmBin, j.id)
		vj = &vmJail{dir: dir, uid: j.uid, root: jailpath.Root(dir)}
		api = filepath.Join(vj.root, vmAPISock)
		if s.vsock {
			vsock = filepath.Join(vj.root, vmVsockSock)
		}
	}
	cleanup := func() {
		os.RemoveAll(s.dir)
		if vj != nil {
			removeJailDir(vj.dir)
		}
	}
	if len(api) > maxSunPath || len(vsock)+len("_4294967295") > maxSunPath {
		os.RemoveAll(s.dir)
		return nil, fmt.Errorf("VM directory %s: socket paths would exceed %d bytes: use a shorter --state-dir", filepath.Dir(api), maxSunPath)
	}
	log, err := os.OpenFile(filepath.Join(s.dir, vmLogFile), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		os.RemoveAll(s.dir)
		return nil, fmt.Errorf("VMM log: %w", err)
	}
	var argv []string
	if vj != nil {
		if _, err := os.Lstat(vj.dir); err == nil {
			log.Close()
			os.RemoveAll(s.dir)
			return nil, fmt.Errorf("jail %s exists already", vj.dir)
		}
		if err := prepareChroot(vj.dir, s.jail); err != nil {
			log.Close()
			cleanup()
			return nil, err
		}
		argv = jailerArgv(s.jail, s.vmmBin, append([]string{"--api-sock", jailAPISock}, s.extraArgs...))
	} else {
		argv = append([]string{s.vmmBin, "--api-sock", api, "--id", "pool-" + s.id}, s.extraArgs...)
	}
	p, err := startProcess(argv, log, s.network != nil, s.background, vj != nil)
	log.Close()
	if err != nil {
		cleanup()
		return nil, err
	}
	v := &vm{id: s.id, template: s.template, dir: s.dir, api: client.New(api), vsockUDS: vsock, proc: p, state: vmStarting, jail: vj}
	if s.network != nil {
		// The jailer's supervisor and volt-vmm share the namespace
		// the supervisor was started in.
		owner := -1
		if vj != nil {
			owner = vj.uid
		}
		if err := createTAPIn(p.pid, s.network.HostDevName, owner); err != nil {
			return v, fmt.Errorf("clone network: %w", err)
		}
	}
	if vj != nil {
		deadline := time.Now().Add(30 * time.Second)
		if d, ok := ctx.Deadline(); ok {
			deadline = d
		}
		r, err := waitJailedVMM(p, vj.dir, s.vmmBin, deadline)
		if err != nil {
			if tail := logTail(v.dir); tail != "" {
				err = fmt.Errorf("%w: %s", err, tail)
			}
			return v, err
		}
		p.setVMM(r)
	}
	if s.network != nil {
		v.netns = "/proc/" + strconv.Itoa(v.pid()) + "/ns/net"
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
			msg := fmt.Sprintf("VMM %d exited before its API answered", v.pid())
			if tail := logTail(v.dir); tail != "" {
				msg += ": " + tail
			}
			return errors.New(msg)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("VMM %d: API socket never answered: %w (last: %v)", v.pid(), ctx.Err(), last)
		case <-time.After(time.Millisecond):
		}
	}
}

// load restores snap into a freshly spawned VMM, paused unless resume; the
// vsock (if any) gets this VM's own socket path. A jailed VMM finds the
// snapshot where restoreBinds put it.
func (v *vm) load(ctx context.Context, snap Snapshot, resume bool) error {
	state, mem, store, vsock := snap.StatePath, snap.MemPath, snap.CASStore, v.vsockUDS
	if v.jail != nil {
		state, mem, vsock = jailSnapshotDir+"/"+types.SnapshotStateFile, jailSnapshotDir+"/"+types.SnapshotMemFile, jailVsockSock
		if store != "" {
			store = jailCAS
		}
	}
	p := types.SnapshotLoadParams{SnapshotPath: state, ResumeVM: resume}
	if store != "" {
		p.MemBackend = &types.MemoryBackend{BackendType: types.MemBackendCas, BackendPath: store}
	} else {
		p.MemBackend = &types.MemoryBackend{BackendType: types.MemBackendFile, BackendPath: mem}
	}
	if v.vsockUDS != "" {
		p.VsockOverride = &types.VsockOverride{UDSPath: vsock}
	}
	if err := v.api.LoadSnapshot(ctx, p); err != nil {
		return fmt.Errorf("load snapshot into VMM %d: %w", v.pid(), err)
	}
	return nil
}

// prime runs a VM that load left paused through one agent ping and pauses
// it again (TemplateSpec.Prime). A restored guest's first answer pays for
// every page it touches on the way (each a fault into the snapshot's
// mapping) and for its post-restore work; primed, the caller who acquires
// it pays for neither. It runs in the refill, at the refill's priority.
func (v *vm) prime(ctx context.Context, timeout time.Duration) error {
	if err := v.api.Resume(ctx); err != nil {
		return fmt.Errorf("prime VMM %d: resume: %w", v.pid(), err)
	}
	if err := pingAgent(ctx, v.vsockUDS, timeout); err != nil {
		return fmt.Errorf("prime VMM %d: the guest's agent did not answer its ping: %w", v.pid(), err)
	}
	if err := v.api.Pause(ctx); err != nil {
		return fmt.Errorf("prime VMM %d: pause: %w", v.pid(), err)
	}
	return nil
}

// restoreBinds shows snap to a jailed VMM: the state file and the memory
// file under /snapshot (memory in the CAS is shown by jailFor's view).
func restoreBinds(snap Snapshot) []jailBind {
	bs := []jailBind{{host: snap.StatePath, jail: jailSnapshotDir + "/" + types.SnapshotStateFile}}
	if snap.CASStore != "" {
		return bs
	}
	return append(bs, jailBind{host: snap.MemPath, jail: jailSnapshotDir + "/" + types.SnapshotMemFile})
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
