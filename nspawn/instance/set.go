package instance

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/voltvmm/volt/cas"
)

// Set is every instance of one kind under one state root: what ls, stop,
// rm and logs work on, the same for containers and VMs.
type Set struct {
	Root     string
	Kind     Kind
	StoreDir string
	Manager  Manager
}

// Dir validates name and returns its directory.
func (s *Set) Dir(name string) (Dir, error) { return NewDir(s.Root, s.Kind, name) }

// Existing returns the directory of an instance that exists, or an error
// wrapping ErrNotFound.
func (s *Set) Existing(name string) (Dir, error) {
	d, err := s.Dir(name)
	if err != nil {
		return Dir{}, err
	}
	ok, err := d.Exists()
	if err != nil {
		return Dir{}, err
	}
	if !ok {
		return Dir{}, fmt.Errorf("%w: %s %s", ErrNotFound, s.Kind, name)
	}
	return d, nil
}

// Names lists the instances.
func (s *Set) Names() ([]string, error) { return List(s.Root, s.Kind) }

// CheckNameFree explains why a name cannot be used for a new instance.
func (s *Set) CheckNameFree(ctx context.Context, d Dir) error {
	ok, err := d.Exists()
	if err != nil || !ok {
		return err
	}
	st := d.Observe(ctx, s.Manager)
	if st.State.Live() {
		since := ""
		if !st.Record.StartedAt.IsZero() {
			since = " since " + st.Record.StartedAt.Local().Format(time.DateTime)
		}
		return fmt.Errorf("%w: %s %s is %s%s; stop it first (volt %s stop %s)", ErrExists, s.Kind, d.Name, st.State, since, s.Kind, d.Name)
	}
	return fmt.Errorf("%w: %s %s exists (%s); remove it first (volt %s rm %s) or pick another name", ErrExists, s.Kind, d.Name, st.State, s.Kind, d.Name)
}

// Create makes a new instance: its directory, spec.json, its volume over
// base and the ref that keeps base alive. It returns the directory locked
// for operations and a function to call when the start has been tried:
// with launched false (nothing ran) it removes every trace of the attempt.
func (s *Set) Create(ctx context.Context, name string, store *cas.Store, base cas.Digest, spec any) (Dir, func(launched bool), error) {
	d, err := s.Dir(name)
	if err != nil {
		return Dir{}, nil, err
	}
	if err := s.CheckNameFree(ctx, d); err != nil {
		return Dir{}, nil, err
	}
	if err := d.Create(); err != nil {
		if errors.Is(err, ErrExists) {
			if e := s.CheckNameFree(ctx, d); e != nil {
				return Dir{}, nil, e
			}
		}
		return Dir{}, nil, err
	}
	unlock, err := d.OpsLock()
	if err != nil {
		d.Remove()
		return Dir{}, nil, err
	}
	done := func(launched bool) {
		if !launched {
			store.RemoveRef(d.CASRef())
			d.Remove()
		}
		unlock()
	}
	if err := WriteJSON(d.SpecPath(), spec); err != nil {
		done(false)
		return Dir{}, nil, err
	}
	if err := Prepare(ctx, d, store, base); err != nil {
		done(false)
		return Dir{}, nil, err
	}
	return d, done, nil
}

// Stop stops a live instance (see the package function Stop).
func (s *Set) Stop(ctx context.Context, name string, timeout time.Duration) (Status, error) {
	d, err := s.Existing(name)
	if err != nil {
		return Status{}, err
	}
	return Stop(ctx, d, s.Manager, timeout)
}

// Remove removes a stopped instance (force: stop it first).
func (s *Set) Remove(ctx context.Context, name string, force bool, timeout time.Duration) error {
	d, err := s.Existing(name)
	if err != nil {
		return err
	}
	store, err := cas.OpenExisting(s.StoreDir)
	if err != nil {
		return err
	}
	return Remove(ctx, d, store, s.Manager, force, timeout)
}

// Logs writes an instance's log to w.
func (s *Set) Logs(ctx context.Context, name string, follow bool, w io.Writer) error {
	d, err := s.Existing(name)
	if err != nil {
		return err
	}
	return Logs(ctx, d, s.Manager, follow, w)
}
