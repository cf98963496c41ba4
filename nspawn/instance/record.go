package instance

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Phase is where a supervisor says its instance is.
type Phase string

const (
	PhaseStarting Phase = "starting" // the supervisor is preparing the disk or the workload
	PhaseRunning  Phase = "running"  // the workload runs
	PhaseStopping Phase = "stopping" // asked to stop, cleaning up
	PhaseExited   Phase = "exited"   // the workload ended; ExitCode says how
	PhaseFailed   Phase = "failed"   // it never ran, or the supervisor failed; Error says why
)

// Proc identifies a process beyond its pid, which the kernel reuses: the
// start time in clock ticks since boot (field 22 of /proc/PID/stat).
type Proc struct {
	PID        int    `json:"pid,omitempty"`
	StartTicks uint64 `json:"start_ticks,omitempty"`
}

// Self is the calling process's identity.
func Self() (Proc, error) { return ProcOf(os.Getpid()) }

// ProcOf reads pid's identity.
func ProcOf(pid int) (Proc, error) {
	t, err := startTicks(pid)
	if err != nil {
		return Proc{}, err
	}
	return Proc{PID: pid, StartTicks: t}, nil
}

// Alive reports whether the process p names still runs (and is not a
// zombie): the same pid with the same start time.
func (p Proc) Alive() bool {
	if p.PID <= 0 {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.PID))
	if err != nil {
		return false
	}
	state, ticks, err := parseStat(b)
	return err == nil && ticks == p.StartTicks && state != 'Z' && state != 'X'
}

// Signal sends sig to p if it is still the same process.
func (p Proc) Signal(sig unix.Signal) error {
	if !p.Alive() {
		return fmt.Errorf("process %d: %w", p.PID, os.ErrProcessDone)
	}
	return unix.Kill(p.PID, sig)
}

func startTicks(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	_, t, err := parseStat(b)
	return t, err
}

// parseStat reads the state (field 3) and start time (field 22) of a
// /proc/PID/stat line. The command name (field 2) is in parentheses and may
// hold anything, spaces and ')' included, so fields count from the last ')'.
func parseStat(b []byte) (state byte, start uint64, err error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return 0, 0, errors.New("malformed /proc stat")
	}
	fields := strings.Fields(string(b[i+1:]))
	// fields[0] is field 3 (state); field 22 is fields[19].
	if len(fields) < 20 || len(fields[0]) != 1 {
		return 0, 0, errors.New("malformed /proc stat")
	}
	start, err = strconv.ParseUint(fields[19], 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("malformed /proc stat: %w", err)
	}
	return fields[0][0], start, nil
}

// Record is state.json: the supervisor's account of its instance. Only the
// supervisor writes it (and stop or rm, for one whose supervisor is gone).
type Record struct {
	Phase   Phase  `json:"phase"`
	Manager string `json:"manager"`        // "systemd" or "supervisor"
	Unit    string `json:"unit,omitempty"` // with systemd
	// Supervisor is the process that holds the lock and owns the disk.
	Supervisor Proc `json:"supervisor"`
	// Payload is systemd-nspawn or volt-vmm.
	Payload    Proc      `json:"payload"`
	StartedAt  time.Time `json:"started_at"`
	ReadyAt    time.Time `json:"ready_at,omitzero"`
	FinishedAt time.Time `json:"finished_at,omitzero"`
	// ExitCode is the payload's exit status; nil until it exits, and when
	// it was killed by a signal (Signal names it).
	ExitCode *int   `json:"exit_code,omitempty"`
	Signal   string `json:"signal,omitempty"`
	Error    string `json:"error,omitempty"`
	// Details are kind-specific facts (a loop device, a TAP name).
	Details map[string]string `json:"details,omitempty"`
}

// WriteJSON replaces path with v's JSON atomically: a temp file in the same
// directory, fsync, rename, fsync of the directory. A reader sees the old
// file or the new one, never a torn one, and a crash keeps one of them.
func WriteJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			os.Remove(tmp)
		}
	}()
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	ok = true
	return syncDir(dir)
}

// MaxRecordSize bounds what ReadJSON reads.
const MaxRecordSize = 1 << 20

// ReadJSON decodes path into v, strictly: unknown fields and trailing data
// are errors, so a damaged or foreign file is reported, not half-read.
func ReadJSON(path string, v any) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxRecordSize+1))
	if err != nil {
		return err
	}
	if len(b) > MaxRecordSize {
		return fmt.Errorf("%s: larger than %d bytes", path, MaxRecordSize)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if dec.More() {
		return fmt.Errorf("%s: trailing data", path)
	}
	return nil
}

// ReadRecord reads state.json; a missing one is a zero Record and no error
// (the instance was created but never started).
func (d Dir) ReadRecord() (Record, error) {
	var r Record
	err := ReadJSON(d.StatePath(), &r)
	if errors.Is(err, os.ErrNotExist) {
		return Record{}, nil
	}
	return r, err
}

// WriteRecord replaces state.json.
func (d Dir) WriteRecord(r Record) error { return WriteJSON(d.StatePath(), r) }
