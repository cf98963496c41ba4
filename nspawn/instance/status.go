package instance

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// SupervisorLock is the lock a supervisor holds for its whole life. The
// kernel drops it when the process dies, however it dies, which is what
// lets ls tell a live supervisor from a record it left behind.
type SupervisorLock struct{ f *os.File }

// ErrLocked is returned when another supervisor holds the instance.
var ErrLocked = errors.New("instance is held by a live supervisor")

// LockSupervisor takes the instance's supervisor lock, or fails with
// ErrLocked at once. The descriptor is close-on-exec, so the workload does
// not inherit it: only the supervisor's own life holds it.
func (d Dir) LockSupervisor() (*SupervisorLock, error) {
	f, err := os.OpenFile(d.LockPath(), os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, ErrLocked
		}
		return nil, err
	}
	return &SupervisorLock{f: f}, nil
}

// Release drops the lock.
func (l *SupervisorLock) Release() {
	if l != nil && l.f != nil {
		l.f.Close()
		l.f = nil
	}
}

// SupervisorAlive reports whether some process holds the supervisor lock.
func (d Dir) SupervisorAlive() (bool, error) {
	f, err := os.OpenFile(d.LockPath(), os.O_RDONLY|unix.O_CLOEXEC, 0)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer f.Close()
	err = unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB)
	if errors.Is(err, unix.EWOULDBLOCK) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	return false, nil // we got it: nobody holds it (closing drops ours)
}

// State is what ls shows.
type State string

const (
	StateCreated  State = "created"  // a directory, never started (or its run was interrupted)
	StateStarting State = "starting" // supervisor alive, workload not yet running
	StateRunning  State = "running"
	StateStopping State = "stopping"
	StateExited   State = "exited"
	StateFailed   State = "failed"
	// StateDead: the record says it runs, but its supervisor is gone and so
	// is the workload: a crash (kill -9, OOM, a reboot) before the
	// supervisor could record the end.
	StateDead State = "dead"
	// StateOrphaned: the supervisor is gone but the workload still runs.
	StateOrphaned State = "orphaned"
	StateDamaged  State = "damaged" // state.json cannot be read
)

// Live reports whether the instance may still be running something.
func (s State) Live() bool {
	switch s {
	case StateStarting, StateRunning, StateStopping, StateOrphaned:
		return true
	}
	return false
}

// UnitState is what systemd says of a unit.
type UnitState struct {
	Name        string `json:"name"`
	ActiveState string `json:"active_state"` // active, activating, deactivating, inactive, failed, or "" if unknown to systemd
	SubState    string `json:"sub_state,omitempty"`
	Result      string `json:"result,omitempty"`
	MainPID     int    `json:"main_pid,omitempty"`
	// MemoryCurrent is the unit's cgroup memory, when systemd accounts it.
	MemoryCurrent uint64 `json:"memory_current,omitempty"`
}

// UnitQuerier asks a service manager about a unit.
type UnitQuerier interface {
	UnitState(ctx context.Context, unit string) (UnitState, error)
}

// Status is an instance's observed status.
type Status struct {
	Name   string     `json:"name"`
	Kind   Kind       `json:"kind"`
	State  State      `json:"state"`
	Detail string     `json:"detail,omitempty"`
	Record Record     `json:"record"`
	Unit   *UnitState `json:"unit,omitempty"`
}

// Observe works out an instance's status from its record, its supervisor
// lock and process identities, and (when the record says systemd runs it
// and q is given) from systemd itself. It never trusts a "running" record
// on its own: a record is only what the supervisor last wrote.
func (d Dir) Observe(ctx context.Context, q UnitQuerier) Status {
	st := Status{Name: d.Name, Kind: d.Kind}
	rec, err := d.ReadRecord()
	if err != nil {
		st.State, st.Detail = StateDamaged, err.Error()
		return st
	}
	st.Record = rec
	switch rec.Phase {
	case "":
		st.State = StateCreated
		return st
	case PhaseExited:
		st.State = StateExited
		return st
	case PhaseFailed:
		st.State, st.Detail = StateFailed, rec.Error
		return st
	case PhaseStarting, PhaseRunning, PhaseStopping:
	default:
		st.State, st.Detail = StateDamaged, fmt.Sprintf("unknown phase %q", rec.Phase)
		return st
	}
	live := State(rec.Phase)
	if rec.Manager == ManagerSystemd && q != nil && rec.Unit != "" {
		us, err := q.UnitState(ctx, rec.Unit)
		if err == nil {
			st.Unit = &us
			switch us.ActiveState {
			case "active", "reloading", "deactivating":
				st.State = live
				return st
			case "activating":
				st.State = StateStarting
				return st
			}
			// inactive, failed, or gone: fall through to the lock, which
			// tells whether the supervisor somehow still lives.
		} else {
			st.Detail = "systemd: " + err.Error()
		}
	}
	alive, err := d.SupervisorAlive()
	if err != nil {
		st.State, st.Detail = StateDamaged, err.Error()
		return st
	}
	if alive {
		st.State = live
		return st
	}
	if rec.Payload.Alive() {
		st.State = StateOrphaned
		st.Detail = fmt.Sprintf("supervisor %d is gone but the workload (pid %d) still runs; volt stop kills it", rec.Supervisor.PID, rec.Payload.PID)
		return st
	}
	if pids := CgroupProcs(cgroupDirs(rec)); len(pids) > 0 {
		st.State = StateOrphaned
		st.Detail = fmt.Sprintf("supervisor %d is gone but %d of the workload's processes still run; volt stop kills them", rec.Supervisor.PID, len(pids))
		return st
	}
	st.State = StateDead
	st.Detail = fmt.Sprintf("supervisor %d died without recording an exit", rec.Supervisor.PID)
	if st.Unit != nil && st.Unit.Result != "" && st.Unit.Result != "success" {
		st.Detail += " (systemd: " + st.Unit.Result + ")"
	}
	return st
}

func sleep(ms int) { time.Sleep(time.Duration(ms) * time.Millisecond) }
