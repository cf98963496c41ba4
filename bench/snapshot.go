package bench

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/voltvmm/volt/guest/probe"
	"github.com/voltvmm/volt/vmm/api/client"
	"github.com/voltvmm/volt/vmm/api/types"
)

// SnapshotSpec says which probe VM to boot and snapshot.
type SnapshotSpec struct {
	VMMBin     string
	Kernel     string // the probe
	Memory     string // e.g. "128M"
	CPUs       int
	TouchPages int           // pages the probe writes before the snapshot, so memory has content
	Dir        string        // existing directory the snapshot is written to
	Timeout    time.Duration // for the whole preparation
}

// Validate checks the spec before anything starts.
func (s SnapshotSpec) Validate() error {
	var errs []error
	if s.VMMBin == "" {
		errs = append(errs, errors.New("no volt-vmm binary"))
	}
	if s.Kernel == "" {
		errs = append(errs, errors.New("no probe kernel"))
	}
	if s.CPUs < 1 {
		errs = append(errs, fmt.Errorf("%d vCPUs", s.CPUs))
	}
	if s.TouchPages < 0 {
		errs = append(errs, fmt.Errorf("touch %d pages", s.TouchPages))
	}
	if s.Dir == "" {
		errs = append(errs, errors.New("no snapshot directory"))
	}
	if s.Timeout <= 0 {
		errs = append(errs, errors.New("no timeout"))
	}
	return errors.Join(errs...)
}

// Snapshot is a prepared snapshot directory.
type Snapshot struct {
	Dir        string
	Memory     string
	CPUs       int
	TouchPages int
	// TouchSum is the probe's checksum of the touched pages ("0x…"), which
	// `sum TouchPages` must repeat in every restore; "" without a touch.
	TouchSum string
	// The memory file: its length, and the bytes it occupies on disk
	// (st_blocks × 512; zero pages are holes).
	MemFileBytes, MemFileAllocated int64
	Took                           time.Duration // boot, touch, pause, snapshot
}

// MemPath is the memory file's path.
func (s *Snapshot) MemPath() string { return filepath.Join(s.Dir, types.SnapshotMemFile) }

// PrepareSnapshot boots the probe under volt-vmm with its API on a socket
// in spec.Dir, waits for it to be ready, optionally touches pages, pauses
// it, snapshots it into spec.Dir and stops that VMM.
func PrepareSnapshot(ctx context.Context, spec SnapshotSpec) (*Snapshot, error) {
	if err := spec.Validate(); err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, spec.Timeout)
	defer cancel()
	start := time.Now()
	sock := filepath.Join(spec.Dir, "api.sock")
	con, err := startConsole(spec.VMMBin, "--api-sock", sock, "--kernel", spec.Kernel,
		"--memory", spec.Memory, "--cpus", strconv.Itoa(spec.CPUs), "--console", "stdio")
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	defer con.close()
	api := client.New(sock)
	defer api.Close()
	if err := waitForAPI(ctx, api, con); err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	if err := api.Start(ctx); err != nil {
		return nil, fmt.Errorf("snapshot: start the probe: %w", err)
	}
	if _, err := con.expect(ctx, probe.ReadyLine); err != nil {
		return nil, fmt.Errorf("snapshot: boot the probe: %w", err)
	}
	snap := &Snapshot{Dir: spec.Dir, Memory: spec.Memory, CPUs: spec.CPUs, TouchPages: spec.TouchPages}
	if spec.TouchPages > 0 {
		line, err := con.ask(ctx, fmt.Sprintf("touch %d", spec.TouchPages), fmt.Sprintf("touched %d ", spec.TouchPages))
		if err != nil {
			return nil, fmt.Errorf("snapshot: %w", err)
		}
		if snap.TouchSum, err = probeSum(line); err != nil {
			return nil, fmt.Errorf("snapshot: touch: %w", err)
		}
	}
	if err := api.Pause(ctx); err != nil {
		return nil, fmt.Errorf("snapshot: pause: %w", err)
	}
	if err := api.CreateSnapshot(ctx, types.SnapshotCreateParams{
		SnapshotPath: filepath.Join(spec.Dir, types.SnapshotStateFile),
		MemFilePath:  filepath.Join(spec.Dir, types.SnapshotMemFile),
	}); err != nil {
		return nil, fmt.Errorf("snapshot: create: %w", err)
	}
	con.terminate(2 * time.Second)
	snap.Took = time.Since(start)
	var st unix.Stat_t
	if err := unix.Stat(snap.MemPath(), &st); err != nil {
		return nil, fmt.Errorf("snapshot: memory file: %w", err)
	}
	snap.MemFileBytes, snap.MemFileAllocated = st.Size, st.Blocks*512
	return snap, nil
}

// probeSum takes the checksum out of a `touched N sum=0x…` or
// `sum N sum=0x…` reply.
func probeSum(line string) (string, error) {
	_, sum, ok := strings.Cut(line, " sum=")
	if !ok || !strings.HasPrefix(sum, "0x") || len(sum) < 3 {
		return "", fmt.Errorf("no checksum in %q", line)
	}
	return sum, nil
}

// waitForAPI waits until the socket answers GET /, or the VMM exits first:
// volt-vmm creates the socket a few milliseconds after its exec.
func waitForAPI(ctx context.Context, api *client.Client, con *guestConsole) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		select {
		case <-con.exited:
			cancel()
		case <-stop:
		}
	}()
	defer func() { close(stop); <-done }()
	_, err := api.WaitReady(ctx, 5*time.Millisecond)
	select {
	case <-con.exited:
		return fmt.Errorf("volt-vmm exited before its API answered: %v; stderr %q", con.waitErr, strings.TrimSpace(con.stderr.String()))
	default:
	}
	return err
}
