package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/voltvmm/volt/bench/results"
	"github.com/voltvmm/volt/bench/trace"
	"github.com/voltvmm/volt/guest/marker"
	"github.com/voltvmm/volt/guest/probe"
)

// Boot is the outcome of one boot (or one run of a floor helper).
type Boot struct {
	VMM    string
	Stages map[string]StageTime
	Record trace.Record
	Stderr string // the VMM's stderr, its last 64 KiB
	Err    error  // timeout, non-zero exit, missing stage, no clean power-off, …
	// KVMExitsUntraced: the tracer could not attach kvm:kvm_exit, so the
	// KVM exit counts are unknown rather than zero.
	KVMExitsUntraced bool
	// A jailed boot's: the supervisor's record (Record is the jail
	// process's, which ran the VMM), and what was seen of the VMM while
	// its guest ran.
	JailerRecord *trace.Record
	Jail         *JailCheck
}

// Observation is what a results.Run records of the boot.
func (b Boot) Observation() results.Observation {
	return results.Observation{Failed: b.Err != nil, Stages: b.Stages, KVMExitsUntraced: b.KVMExitsUntraced}
}

// Why a boot failed, for callers that branch on it (errors.Is); the
// message says more.
var (
	ErrTimeout = errors.New("boot timed out")
	// ErrExitStatus: the VMM exited with a status other than 0. Only 0
	// is a clean power-off; volt-vmm uses other statuses for a reset
	// without the shutdown marker, a guest panic, a dead guest, …
	ErrExitStatus = errors.New("VMM exited with a failure status")
	// ErrGuestPanic: the guest wrote the kernel-panic boot marker.
	ErrGuestPanic = errors.New("guest kernel panicked")
	// ErrNoShutdown: the guest never wrote the shutdown marker, so
	// whatever ended the VM was not the orderly power-off asked for
	// (QEMU with -no-reboot exits 0 on any reset).
	ErrNoShutdown = errors.New("guest did not power off")
	// ErrMissingStage: a row of the boot was never reached.
	ErrMissingStage = errors.New("stage never reached")
)

// Runner boots guests with one tracer. Boots run one at a time, so that
// they do not disturb each other's timings, except in RunThroughput.
type Runner struct {
	tracer *trace.Tracer
	mu     sync.Mutex
}

// bootSeq numbers the boots of this process, for jail ids: unique across
// runners (each test has its own), so two never name the same chroot or
// cgroup.
var bootSeq atomic.Uint64

// NewRunner loads the eBPF tracer; errors wrap trace.ErrUnsupported when
// this machine or user cannot trace.
func NewRunner() (*Runner, error) {
	t, err := trace.New()
	if err != nil {
		return nil, err
	}
	return &Runner{tracer: t}, nil
}

// Close unloads the tracer.
func (r *Runner) Close() error { return r.tracer.Close() }

// Boot boots the guest once and returns its stage times. The boot
// succeeds only when the VMM exits 0, the guest powered off (wrote the
// shutdown marker, no panic marker) and every row of cfg was reached.
func (r *Runner) Boot(ctx context.Context, cfg Config) Boot {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.boot(ctx, cfg)
}

// boot is Boot without the lock: RunThroughput runs several at once.
func (r *Runner) boot(ctx context.Context, cfg Config) Boot {
	b := Boot{VMM: cfg.VMM}
	if err := cfg.Validate(); err != nil {
		b.Err = fmt.Errorf("config: %w", err)
		return b
	}
	traced, _ := r.tracer.KVMExitsTraced()
	b.KVMExitsUntraced = !traced
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	bin, args, jailID := cfg.command(bootSeq.Add(1))
	g := trace.Command(ctx, bin, args...)
	// The jailer's first child is the jail's process, which execs the VMM.
	g.Follow = cfg.Jail != nil
	// Pipes stay open in grandchildren (none expected) no longer than this.
	g.Cmd.WaitDelay = 2 * time.Second
	stdin, err := g.Cmd.StdinPipe()
	if err != nil {
		b.Err = fmt.Errorf("stdin pipe: %w", err)
		return b
	}
	stdout, err := g.Cmd.StdoutPipe()
	if err != nil {
		b.Err = fmt.Errorf("stdout pipe: %w", err)
		return b
	}
	stderr := &tailBuffer{max: 64 << 10}
	g.Cmd.Stderr = stderr
	if err := r.tracer.Start(g); err != nil {
		b.Err = err
		return b
	}
	pid := g.Cmd.Process.Pid
	console := &tailBuffer{max: 4 << 10}
	var jailErr error
	var onAnswer func()
	if cfg.Jail != nil {
		// While the guest runs, so the VMM is there to be looked at; the
		// two reads of /proc delay the poweroff (the exit row) by as
		// long.
		onAnswer = func() {
			ck, err := r.checkJailOf(pid, cfg)
			b.Jail, jailErr = &ck, err
		}
	}
	driveErr := drive(cfg, stdout, stdin, console, onAnswer)
	waitErr := g.Cmd.Wait()
	stdin.Close()
	rec, recErr := r.tracer.Collect(pid)
	if cfg.Jail != nil {
		sup := rec
		b.JailerRecord = &sup
		if recErr == nil {
			if rec.Child == 0 {
				recErr = fmt.Errorf("volt-jailer (pid %d) forked no jail process", pid)
			} else {
				rec, recErr = r.tracer.Collect(rec.Child)
			}
		}
		if jailID != "" {
			if err := cfg.removeJail(jailID); err != nil && recErr == nil {
				recErr = err
			}
		}
		if jailErr == nil && b.Jail == nil && driveErr == nil && cfg.bootsAGuest() {
			jailErr = errors.New("jail check: never ran (no answer from the guest)")
		}
	}
	b.Stderr = stderr.String()
	b.Record = rec
	name := filepath.Base(bin)
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		b.Err = fmt.Errorf("%w after %v (killed); console tail: %q", ErrTimeout, cfg.Timeout, console.String())
	case ctx.Err() != nil:
		b.Err = fmt.Errorf("stopped: %w", ctx.Err())
	case waitErr != nil:
		b.Err = exitError(name, waitErr, rec, b.Stderr)
	case driveErr != nil:
		b.Err = fmt.Errorf("%w; console tail: %q", driveErr, console.String())
	case recErr != nil:
		b.Err = recErr
	case jailErr != nil:
		b.Err = jailErr
	default:
		if cfg.Jail != nil {
			b.Stages = jailedStages(*b.JailerRecord, rec, cfg.rows())
		} else {
			b.Stages = stageTimesFor(rec, cfg.rows())
		}
		b.Err = checkRecord(cfg, rec, b.Stages, console.String())
	}
	if b.Err != nil {
		b.Stages = nil
	}
	return b
}

// checkJailOf finds the jail's process of the jailer pid and checks it.
func (r *Runner) checkJailOf(pid int, cfg Config) (JailCheck, error) {
	child, err := r.tracer.Child(pid)
	if err != nil {
		return JailCheck{}, fmt.Errorf("jail check: %w", err)
	}
	if child == 0 {
		return JailCheck{}, fmt.Errorf("jail check: volt-jailer (pid %d) has forked no jail process", pid)
	}
	return checkJail(child, cfg.Jail, cfg.VMMBin)
}

// exitError describes a VMM that exited with a failure status: the status
// (or signal), what its guest's markers say, and its stderr.
func exitError(name string, waitErr error, rec trace.Record, stderr string) error {
	status := waitErr.Error()
	var ee *exec.ExitError
	if errors.As(waitErr, &ee) && ee.Exited() {
		status = fmt.Sprintf("status %d", ee.ExitCode())
	}
	var guest string
	if sawMarker(rec, marker.KernelPanic) {
		guest = "; the guest wrote the kernel-panic marker (0x5f)"
	}
	return fmt.Errorf("%w: %s exited with %s (only 0, a clean power-off, is a successful boot)%s; stderr: %s",
		ErrExitStatus, name, status, guest, strings.TrimSpace(stderr))
}

// checkRecord fails a boot whose VMM exited 0 but whose guest did not boot
// and power off as expected.
func checkRecord(cfg Config, rec trace.Record, stages map[string]StageTime, console string) error {
	if cfg.bootsAGuest() {
		if sawMarker(rec, marker.KernelPanic) {
			return fmt.Errorf("%w: it wrote the kernel-panic marker (0x5f); console tail: %q", ErrGuestPanic, console)
		}
		if !sawMarker(rec, marker.Shutdown) {
			return fmt.Errorf("%w: it never wrote the shutdown marker (0x6f), so the VM ended by a reset or a crash; console tail: %q", ErrNoShutdown, console)
		}
	}
	var missing []string
	for _, s := range cfg.rows() {
		if _, ok := stages[s.Name]; !ok {
			missing = append(missing, s.Name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: %s (milestones seen: %s); console tail: %q", ErrMissingStage, strings.Join(missing, ", "), seen(rec), console)
	}
	return nil
}

func sawMarker(rec trace.Record, s marker.Stage) bool {
	m, ok := trace.Marker(s)
	if !ok {
		return false
	}
	_, ok = rec.At(m)
	return ok
}

func seen(rec trace.Record) string {
	var names []string
	for _, p := range rec.Points {
		names = append(names, p.Milestone.String())
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, " ")
}

// drive plays the guest's side of the protocol on the console: for the
// probe, wait for the ready line (or, with cfg.Ask, ask at once and wait
// for the answer) and ask it to power off (the same bytes for every VMM,
// for fairness); a Linux guest powers off by itself. Output is drained to
// EOF either way so the VMM never blocks on a full pipe.
//
// onAnswer, when set, is called once the awaited line arrived, before the
// poweroff is sent (a Linux guest's: once its first line arrived).
func drive(cfg Config, stdout io.Reader, stdin io.WriteCloser, console io.Writer, onAnswer func()) error {
	br := bufio.NewReader(io.TeeReader(stdout, console))
	var err error
	if cfg.VMM != VMMFloor && cfg.Guest == GuestProbe {
		want := probe.ReadyLine
		if cfg.Ask != "" {
			// Sent before the guest can read it: the VMM's UART queues
			// input, so the probe answers the moment it runs.
			want = cfg.Answer
			if _, werr := io.WriteString(stdin, cfg.Ask+"\n"); werr != nil {
				io.Copy(io.Discard, br)
				return fmt.Errorf("send %q: %w", cfg.Ask, werr)
			}
		}
		err = fmt.Errorf("console closed before %q", want)
		for {
			line, rerr := br.ReadString('\n')
			if strings.TrimRight(line, "\r\n") == want {
				if onAnswer != nil {
					onAnswer()
				}
				if _, werr := io.WriteString(stdin, "poweroff\n"); werr != nil {
					err = fmt.Errorf("send poweroff: %w", werr)
				} else {
					err = nil
				}
				break
			}
			if rerr != nil {
				break
			}
		}
	}
	if cfg.VMM != VMMFloor && cfg.Guest != GuestProbe && onAnswer != nil {
		// A Linux guest is asked nothing: its first console line is
		// the moment it surely runs.
		if _, rerr := br.ReadString('\n'); rerr == nil {
			onAnswer()
		}
	}
	io.Copy(io.Discard, br)
	return err
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
	max int
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf.Write(p)
	if over := t.buf.Len() - t.max; over > 0 {
		t.buf.Next(over)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.buf.String()
}
