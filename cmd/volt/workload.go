package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/voltvmm/volt/nspawn/instance"
)

// workloadFlags are the flags every image, container and vm command takes.
type workloadFlags struct {
	fs       *pflag.FlagSet
	stateDir string
	store    string
	manager  string
	json     bool
}

func newWorkloadFlags(e *env, path, synopsis, about string) *workloadFlags {
	f := &workloadFlags{fs: pflag.NewFlagSet(path, pflag.ContinueOnError)}
	f.fs.SetOutput(e.stderr)
	f.fs.SortFlags = false
	stateDef := instance.DefaultRoot
	if v := os.Getenv("VOLT_STATE_DIR"); v != "" {
		stateDef = v
	}
	storeDef := defaultStore
	if v := os.Getenv("VOLT_CAS_STORE"); v != "" {
		storeDef = v
	}
	f.fs.StringVar(&f.stateDir, "state-dir", stateDef, "state directory of containers and VMs (default from $VOLT_STATE_DIR if set)")
	f.fs.StringVar(&f.store, "store", storeDef, "CAS store directory (default from $VOLT_CAS_STORE if set)")
	f.fs.StringVar(&f.manager, "manager", instance.ChooseAuto, "who runs workloads: auto (systemd where it is PID 1, else a supervised child), systemd or supervisor")
	f.fs.BoolVar(&f.json, "json", false, "print the result as JSON, for scripts")
	f.fs.Usage = func() {
		fmt.Fprintf(e.stderr, "usage: %s %s\n\n%s\n\nflags:\n", path, synopsis, about)
		f.fs.PrintDefaults()
		fmt.Fprintf(e.stderr, "\nExit status: 0 success, 1 failure, 2 bad usage.\n")
	}
	return f
}

// parse parses args into positional arguments and, after "--", a command.
// A non-negative rc is the exit status to return.
func (f *workloadFlags) parse(e *env, path string, args []string, minArgs, maxArgs int, wantCmd bool) (pos, cmd []string, rc int) {
	if err := f.fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil, nil, exitOK
		}
		return nil, nil, usageError(e, path, "%v", err)
	}
	pos = f.fs.Args()
	if dash := f.fs.ArgsLenAtDash(); dash >= 0 {
		pos, cmd = pos[:dash], pos[dash:]
		if !wantCmd {
			return nil, nil, usageError(e, path, "unexpected arguments after --")
		}
	}
	switch {
	case len(pos) < minArgs:
		return nil, nil, usageError(e, path, "missing arguments")
	case maxArgs >= 0 && len(pos) > maxArgs:
		return nil, nil, usageError(e, path, "unexpected argument %q", pos[maxArgs])
	}
	if !filepath.IsAbs(f.stateDir) {
		abs, err := filepath.Abs(f.stateDir)
		if err != nil {
			return nil, nil, failure(e, path, err)
		}
		f.stateDir = abs
	}
	return pos, cmd, -1
}

// openManager picks the manager and says so when it is not systemd.
func (f *workloadFlags) openManager(ctx context.Context, e *env, path string, announce bool) (instance.Manager, int) {
	m, note, err := instance.Detect(ctx, f.manager)
	if err != nil {
		return nil, failure(e, path, err)
	}
	if note != "" && announce && !f.json {
		fmt.Fprintf(e.stderr, "%s: %s\n", path, note)
	}
	return m, -1
}

// selfCommand is how a supervisor is started: this very binary.
func selfCommand(args ...string) ([]string, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find volt's own path for the supervisor: %w", err)
	}
	return append([]string{exe}, args...), nil
}

// parseCPUs parses --cpus: a positive number, fractions allowed.
func parseCPUs(s string) (float64, error) {
	if s == "" {
		return 0, nil
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || v <= 0 {
		return 0, fmt.Errorf("--cpus %q: want a positive number such as 1 or 0.5", s)
	}
	return v, nil
}

// parseMemory parses --memory with parseSize's suffixes; a plain number is
// MiB, as volt-vmm's --memory.
func parseMemory(s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	t := s
	if _, err := strconv.ParseInt(t, 10, 64); err == nil {
		t += "M"
	}
	n, err := parseSize(t)
	if err != nil {
		return 0, fmt.Errorf("--memory %q: %v", s, err)
	}
	return n, nil
}

func formatAge(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := time.Since(t).Round(time.Second)
	switch {
	case d < time.Minute:
		return d.String() + " ago"
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return t.Local().Format(time.DateOnly)
}

// stateText renders a status for ls: "running", "exited (0)", "failed".
func stateText(st instance.Status) string {
	s := string(st.State)
	if st.State == instance.StateExited {
		switch {
		case st.Record.ExitCode != nil:
			s += fmt.Sprintf(" (%d)", *st.Record.ExitCode)
		case st.Record.Signal != "":
			s += " (" + st.Record.Signal + ")"
		}
	}
	return s
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}
