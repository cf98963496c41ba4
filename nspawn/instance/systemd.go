package instance

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"time"

	sd "github.com/coreos/go-systemd/v22/dbus"
	"github.com/godbus/dbus/v5"
)

// Systemd starts each supervisor as a transient service unit over D-Bus,
// the way systemd-run does: systemd is the process manager, applies the
// cgroup limits, and is asked for the state. The unit is the one
// systemd-nspawn@.service would be for a container (Delegate=yes,
// KillMode=mixed, machine.slice), with our supervisor as its main process
// and systemd-nspawn --keep-unit under it.
type Systemd struct {
	conn *sd.Conn
}

var _ Manager = (*Systemd)(nil)

// NewSystemd connects to systemd: its private socket as root (no D-Bus
// daemon needed), else the system bus.
func NewSystemd(ctx context.Context) (*Systemd, error) {
	var conn *sd.Conn
	var err error
	if os.Geteuid() == 0 {
		conn, err = sd.NewSystemdConnectionContext(ctx)
	}
	if conn == nil {
		var err2 error
		conn, err2 = sd.NewSystemConnectionContext(ctx)
		if err2 != nil {
			if err == nil {
				err = err2
			}
			return nil, fmt.Errorf("connect to systemd: %w", err)
		}
	}
	return &Systemd{conn: conn}, nil
}

func (*Systemd) Name() string { return ManagerSystemd }

// Close closes the D-Bus connection.
func (s *Systemd) Close() { s.conn.Close() }

// UnitProperties returns the transient unit's properties for l: what
// systemd-run --unit=... -p ... would send.
func UnitProperties(l Launch) []sd.Property {
	env := append([]string{EnvManager + "=" + ManagerSystemd}, l.Env...)
	p := []sd.Property{
		sd.PropDescription(l.Description),
		sd.PropExecStart(l.Argv, true),
		sd.PropType("notify"),
		prop("NotifyAccess", "main"),
		// SIGTERM to the supervisor alone, which stops the workload in
		// order and records it; SIGKILL to what is left after the timeout.
		prop("KillMode", "mixed"),
		// systemd-nspawn --keep-unit manages the cgroup subtree under the
		// unit, as in systemd-nspawn@.service.
		prop("Delegate", true),
		sd.PropSlice("machine.slice"),
		// The supervisor's FUSE and root mounts stay in the unit's own
		// mount namespace and vanish with it.
		prop("PrivateMounts", true),
		prop("Environment", env),
		prop("StandardInput", "null"),
		prop("StandardOutputFileToAppend", l.Dir.LogPath()),
		prop("StandardErrorFileToAppend", l.Dir.LogPath()),
		prop("TimeoutStartUSec", uint64(l.ReadyTimeout/time.Microsecond)),
		// A stop waits for the supervisor; volt stop escalates itself.
		prop("TimeoutStopUSec", uint64(5*time.Minute/time.Microsecond)),
		// The supervisor records the exit in state.json; systemd need
		// not keep a failed unit around (it would block the name).
		prop("CollectMode", "inactive-or-failed"),
		prop("MemoryAccounting", true),
		prop("CPUAccounting", true),
		prop("TasksAccounting", true),
	}
	if l.Limits.MemoryBytes > 0 {
		p = append(p, prop("MemoryMax", uint64(l.Limits.MemoryBytes)))
	}
	if l.Limits.CPUs > 0 {
		p = append(p, prop("CPUQuotaPerSecUSec", uint64(math.Round(l.Limits.CPUs*1e6))))
	}
	return p
}

func prop(name string, v any) sd.Property {
	return sd.Property{Name: name, Value: dbus.MakeVariant(v)}
}

// Start implements Manager: StartTransientUnit in mode "fail" (an existing
// unit of that name is an error, never replaced), then the job's result,
// which for Type=notify arrives with READY=1.
func (s *Systemd) Start(ctx context.Context, l Launch) error {
	if err := l.validate(); err != nil {
		return err
	}
	// systemd opens the log itself; it must exist with our mode.
	f, err := os.OpenFile(l.Dir.LogPath(), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	f.Close()
	unit := l.Dir.Unit()
	ch := make(chan string, 1)
	if _, err := s.conn.StartTransientUnitContext(ctx, unit, "fail", UnitProperties(l), ch); err != nil {
		return fmt.Errorf("start unit %s: %w", unit, err)
	}
	select {
	case result := <-ch:
		if result == "done" {
			return nil
		}
		return fmt.Errorf("%s %s did not start: unit %s: job %s: %s", l.Dir.Kind, l.Dir.Name, unit, result, failureMessage(l.Dir, ""))
	case <-ctx.Done():
		return fmt.Errorf("%s %s: interrupted waiting for unit %s: %w", l.Dir.Kind, l.Dir.Name, unit, ctx.Err())
	}
}

// Signal implements Manager through systemd: to the main process (the
// supervisor) for SIGTERM, to every process of the unit for SIGKILL.
func (s *Systemd) Signal(ctx context.Context, d Dir, rec Record, sig Signal) error {
	who := sd.Main
	if sig == SignalKill {
		who = sd.All
	}
	unit := rec.Unit
	if unit == "" {
		unit = d.Unit()
	}
	if err := s.conn.KillUnitWithTarget(ctx, unit, who, int32(sig)); err != nil {
		var de dbus.Error
		if errors.As(err, &de) && de.Name == "org.freedesktop.systemd1.NoSuchUnit" {
			return fmt.Errorf("%s %s: unit %s is not loaded", d.Kind, d.Name, unit)
		}
		return fmt.Errorf("signal unit %s: %w", unit, err)
	}
	return nil
}

// UnitState implements UnitQuerier.
func (s *Systemd) UnitState(ctx context.Context, unit string) (UnitState, error) {
	props, err := s.conn.GetUnitPropertiesContext(ctx, unit)
	if err != nil {
		return UnitState{}, err
	}
	us := UnitState{Name: unit}
	us.ActiveState, _ = props["ActiveState"].(string)
	us.SubState, _ = props["SubState"].(string)
	if load, _ := props["LoadState"].(string); load == "not-found" {
		us.ActiveState = ""
	}
	svc, err := s.conn.GetUnitTypePropertiesContext(ctx, unit, "Service")
	if err == nil {
		us.Result, _ = svc["Result"].(string)
		if pid, ok := svc["MainPID"].(uint32); ok {
			us.MainPID = int(pid)
		}
		if mem, ok := svc["MemoryCurrent"].(uint64); ok && mem != math.MaxUint64 {
			us.MemoryCurrent = mem
		}
	}
	return us, nil
}
