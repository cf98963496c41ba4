package instance

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// Session is a supervisor's hold on its instance: the supervisor lock, the
// record it keeps up to date, and (without systemd) its cgroup. Both
// workload kinds' supervisors are built on it, so their records and
// readiness protocol are the same.
type Session struct {
	Dir     Dir
	rec     Record
	lock    *SupervisorLock
	cgroup  *Cgroup
	Manager string
}

// BeginSession takes the instance's supervisor lock and records the
// starting phase. A second supervisor for the same instance gets ErrLocked.
func BeginSession(d Dir) (*Session, error) {
	lock, err := d.LockSupervisor()
	if err != nil {
		if errors.Is(err, ErrLocked) {
			return nil, fmt.Errorf("%s %s: %w", d.Kind, d.Name, err)
		}
		return nil, err
	}
	self, err := Self()
	if err != nil {
		lock.Release()
		return nil, err
	}
	mgr := os.Getenv(EnvManager)
	if mgr != ManagerSystemd {
		mgr = ManagerSupervisor
	}
	s := &Session{Dir: d, lock: lock, Manager: mgr}
	s.rec = Record{Phase: PhaseStarting, Manager: mgr, Supervisor: self, StartedAt: time.Now().UTC(), Details: map[string]string{}}
	if mgr == ManagerSystemd {
		s.rec.Unit = d.Unit()
	}
	if err := d.WriteRecord(s.rec); err != nil {
		lock.Release()
		return nil, err
	}
	return s, nil
}

// Record is a copy of the current record.
func (s *Session) Record() Record { return s.rec }

// JoinCgroup puts the supervisor into its own cgroup with the limits, when
// no systemd unit does that already.
func (s *Session) JoinCgroup(l Limits) error {
	if s.Manager == ManagerSystemd {
		// systemd has made the unit's cgroup, with the limits, and
		// delegated it. On the unified hierarchy a cgroup with processes
		// cannot enable controllers for its children, which nspawn
		// --keep-unit makes (payload, supervisor): step aside into a leaf
		// of our own.
		return leaveDelegatedRoot()
	}
	cg, err := JoinCgroup(s.Dir, l)
	if err != nil {
		return err
	}
	s.cgroup = cg
	s.rec.Details[cgroupDetail] = strings.Join(cg.Dirs(), ",")
	return s.Dir.WriteRecord(s.rec)
}

// SetDetail records a fact for ls (a loop device, a TAP name).
func (s *Session) SetDetail(k, v string) { s.rec.Details[k] = v }

// Running records that the workload runs and tells the manager READY=1.
func (s *Session) Running(payload Proc) error {
	s.rec.Phase = PhaseRunning
	s.rec.Payload = payload
	s.rec.ReadyAt = time.Now().UTC()
	if err := s.Dir.WriteRecord(s.rec); err != nil {
		return err
	}
	_, err := daemon.SdNotify(false, "READY=1\nSTATUS=running")
	return err
}

// Stopping records that a stop was asked for.
func (s *Session) Stopping() error {
	if s.rec.Phase != PhaseRunning {
		return nil
	}
	s.rec.Phase = PhaseStopping
	daemon.SdNotify(false, "STOPPING=1")
	return s.Dir.WriteRecord(s.rec)
}

// Fail records that the instance could not start (or the supervisor
// failed) and tells the manager why.
func (s *Session) Fail(err error) error {
	s.rec.Phase = PhaseFailed
	s.rec.Error = err.Error()
	s.rec.FinishedAt = time.Now().UTC()
	daemon.SdNotify(false, "STATUS="+firstLine(err.Error()))
	return s.Dir.WriteRecord(s.rec)
}

// Exited records the workload's end: code is its exit status, sig the
// signal that killed it, problem any trouble cleaning up.
func (s *Session) Exited(code *int, sig string, problem error) error {
	s.rec.Phase = PhaseExited
	s.rec.ExitCode = code
	s.rec.Signal = sig
	if problem != nil {
		s.rec.Error = problem.Error()
	}
	s.rec.FinishedAt = time.Now().UTC()
	return s.Dir.WriteRecord(s.rec)
}

// Close leaves the cgroup and releases the lock. The record must have been
// finished (Fail or Exited) first.
func (s *Session) Close() error {
	var err error
	if s.cgroup != nil {
		err = s.cgroup.Leave()
		s.cgroup = nil
	}
	s.lock.Release()
	return err
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}

// StopRequest is stop.json: how long a stop lets the workload take before
// the supervisor kills it. volt stop writes it before signalling.
type StopRequest struct {
	TimeoutMillis int64 `json:"timeout_ms"`
}

// DefaultStopTimeout is the stop grace period when nobody said otherwise.
const DefaultStopTimeout = 10 * time.Second

// StopTimeout reads stop.json, or returns DefaultStopTimeout.
func (d Dir) StopTimeout() time.Duration {
	var r StopRequest
	if err := ReadJSON(d.File("stop.json"), &r); err != nil || r.TimeoutMillis < 0 {
		return DefaultStopTimeout
	}
	return time.Duration(r.TimeoutMillis) * time.Millisecond
}
