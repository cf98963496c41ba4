package instance

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/voltvmm/volt/cas"
	"github.com/voltvmm/volt/cas/volume"
)

// Prepare gives a new instance directory its copy-on-write volume over
// base and a CAS ref that keeps base alive while the volume is closed.
func Prepare(ctx context.Context, d Dir, store *cas.Store, base cas.Digest) error {
	ss, err := store.Begin(ctx)
	if err != nil {
		return err
	}
	defer ss.Close()
	if err := ss.SetRef(d.CASRef(), base); err != nil {
		return err
	}
	if err := ss.Close(); err != nil {
		return err
	}
	return volume.Create(ctx, store, d.VolumePath(), base, volume.Options{})
}

// ManagerFor returns the manager that can signal an instance whose record
// names manager rec: the one given if it is the same kind, else a new one.
func ManagerFor(ctx context.Context, rec Record, given Manager) (Manager, func(), error) {
	if given != nil && given.Name() == rec.Manager {
		return given, func() {}, nil
	}
	switch rec.Manager {
	case ManagerSystemd:
		s, err := NewSystemd(ctx)
		if err != nil {
			return nil, nil, fmt.Errorf("it runs under systemd, which cannot be reached: %w", err)
		}
		return s, s.Close, nil
	default:
		return &Supervisor{}, func() {}, nil
	}
}

// Stop stops a live instance: it tells the supervisor how long the
// workload may take (stop.json), sends it SIGTERM (through systemd when
// systemd runs it), and waits for it to record the end. The supervisor
// asks the workload to stop and kills it after timeout; if the supervisor
// itself does not finish within timeout plus a grace period, every process
// of the instance is killed and the record says so. An orphaned instance
// (supervisor gone) is killed at once.
func Stop(ctx context.Context, d Dir, mgr Manager, timeout time.Duration) (Status, error) {
	unlock, err := d.OpsLock()
	if err != nil {
		return Status{}, err
	}
	defer unlock()
	st := d.Observe(ctx, mgr)
	if !st.State.Live() {
		return st, fmt.Errorf("%s %s is not running (%s)", d.Kind, d.Name, st.State)
	}
	rec := st.Record
	if st.State == StateOrphaned {
		return killRemains(ctx, d, mgr, rec, "stop: its supervisor was gone; killed what was left")
	}
	m, done, err := ManagerFor(ctx, rec, mgr)
	if err != nil {
		return st, err
	}
	defer done()
	if err := WriteJSON(d.File("stop.json"), StopRequest{TimeoutMillis: timeout.Milliseconds()}); err != nil {
		return st, err
	}
	if err := m.Signal(ctx, d, rec, SignalTerm); err != nil {
		return st, err
	}
	const grace = 15 * time.Second
	if waitSupervisor(ctx, d, timeout+grace) {
		return d.Observe(ctx, m), nil
	}
	if ctx.Err() != nil {
		return st, ctx.Err()
	}
	m.Signal(ctx, d, rec, SignalKill)
	return killRemains(ctx, d, m, rec, fmt.Sprintf("stop: the supervisor did not finish within %v; killed", timeout+grace))
}

// waitSupervisor waits until no process holds the supervisor lock.
func waitSupervisor(ctx context.Context, d Dir, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		alive, err := d.SupervisorAlive()
		if err == nil && !alive {
			return true
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// killRemains kills what is left of an instance whose supervisor is gone
// or stuck, and records the end in its place.
func killRemains(ctx context.Context, d Dir, mgr Manager, rec Record, why string) (Status, error) {
	if rec.Supervisor.Alive() {
		rec.Supervisor.Signal(9)
	}
	if rec.Payload.Alive() {
		rec.Payload.Signal(9)
	}
	var problem error
	if dirs := cgroupDirs(rec); len(dirs) > 0 {
		problem = KillCgroup(dirs, 10*time.Second)
		for _, dir := range dirs {
			os.Remove(dir)
		}
	}
	waitSupervisor(ctx, d, 5*time.Second)
	rec.Phase = PhaseExited
	rec.Signal = "SIGKILL"
	rec.Error = why
	if problem != nil {
		rec.Error += "; " + problem.Error()
	}
	rec.FinishedAt = time.Now().UTC()
	if err := d.WriteRecord(rec); err != nil {
		return Status{}, err
	}
	return d.Observe(ctx, mgr), problem
}

// Remove deletes a stopped instance: its directory (volume, log, records)
// and its CAS ref. A live one is refused unless force, which stops it
// first (killing it after timeout).
func Remove(ctx context.Context, d Dir, store *cas.Store, mgr Manager, force bool, timeout time.Duration) error {
	exists, err := d.Exists()
	if err != nil {
		return err
	}
	if !exists {
		return fmt.Errorf("%w: %s %s", ErrNotFound, d.Kind, d.Name)
	}
	st := d.Observe(ctx, mgr)
	if st.State.Live() {
		if !force {
			return fmt.Errorf("%s %s is %s: stop it first, or use --force", d.Kind, d.Name, st.State)
		}
		if _, err := Stop(ctx, d, mgr, timeout); err != nil && d.Observe(ctx, mgr).State.Live() {
			return err
		}
	}
	unlock, err := d.OpsLock()
	if err != nil {
		return err
	}
	defer unlock()
	// A supervisor that has recorded the end still has its cgroup and
	// lock to let go of.
	if !waitSupervisor(ctx, d, 10*time.Second) {
		return fmt.Errorf("%s %s: its supervisor (pid %d) still holds it", d.Kind, d.Name, d.Observe(ctx, mgr).Record.Supervisor.PID)
	}
	if err := store.RemoveRef(d.CASRef()); err != nil && !errors.Is(err, cas.ErrNotFound) {
		return err
	}
	// A supervisor that died leaves its (empty) cgroups behind.
	if rec, err := d.ReadRecord(); err == nil {
		for _, dir := range cgroupDirs(rec) {
			os.Remove(dir)
		}
	}
	return d.Remove()
}

// Logs copies the instance's log to w; with follow, it keeps copying what
// is appended until the instance stops or ctx ends.
func Logs(ctx context.Context, d Dir, q UnitQuerier, follow bool, w io.Writer) error {
	f, err := os.Open(d.LogPath())
	if errors.Is(err, os.ErrNotExist) {
		if ok, _ := d.Exists(); !ok {
			return fmt.Errorf("%w: %s %s", ErrNotFound, d.Kind, d.Name)
		}
		return nil // never started: no output yet
	}
	if err != nil {
		return err
	}
	defer f.Close()
	for {
		if _, err := io.Copy(w, f); err != nil {
			return err
		}
		if !follow {
			return nil
		}
		if !d.Observe(ctx, q).State.Live() {
			_, err := io.Copy(w, f) // what the last moments wrote
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Commit stores a stopped instance's volume (the image plus its writes)
// as a new object under ref, rebases the volume onto it, and points the
// instance's own ref at it. Only chunks the instance changed are hashed
// and stored again.
func Commit(ctx context.Context, d Dir, store *cas.Store, q UnitQuerier, ref string) (*volume.CommitResult, error) {
	unlock, err := d.OpsLock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	st := d.Observe(ctx, q)
	if st.State.Live() {
		return nil, fmt.Errorf("%s %s is %s: stop it first (its file system is mounted and changing)", d.Kind, d.Name, st.State)
	}
	if !waitSupervisor(ctx, d, 10*time.Second) {
		return nil, fmt.Errorf("%s %s: its supervisor (pid %d) still holds it", d.Kind, d.Name, st.Record.Supervisor.PID)
	}
	v, err := volume.Open(ctx, store, d.VolumePath())
	if err != nil {
		return nil, err
	}
	res, err := v.Commit(ctx, ref)
	if cerr := v.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	ss, err := store.Begin(ctx)
	if err != nil {
		return res, err
	}
	defer ss.Close()
	if err := ss.SetRef(d.CASRef(), res.Digest); err != nil {
		return res, err
	}
	return res, ss.Close()
}
