package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/voltvmm/volt/bench/trace"
	"github.com/voltvmm/volt/guest/probe"
)

// VMM kinds voltbench knows how to drive.
const (
	VMMVolt = "volt"
	VMMQEMU = "qemu"
)

// Guest kinds.
const (
	GuestProbe = "probe" // guest/probe: ready line on COM1, then "poweroff" on stdin
	GuestLinux = "linux" // our kernel and volt-init: powers off when volt.run ends
)

// DefaultLinuxCmdline boots straight into volt-init, which runs a trivial
// workload and powers the VM off.
const DefaultLinuxCmdline = "console=ttyS0 reboot=k panic=1 volt.run=/bin/true"

// Config says how to boot one guest under one VMM.
type Config struct {
	VMM       string // VMMVolt or VMMQEMU
	VMMBin    string // path of volt-vmm or of qemu-system-x86_64
	Guest     string // GuestProbe or GuestLinux
	Kernel    string
	Initrd    string // Linux only
	Cmdline   string // Linux only
	Memory    string // e.g. "128M"
	CPUs      int
	ExtraArgs []string      // appended to the VMM's command line
	Timeout   time.Duration // per boot; the VMM is killed after it

	// RestoreDir, when set, resumes the snapshot in this directory
	// (volt-vmm --restore) instead of booting Kernel.
	RestoreDir string
	// Ask, when set, is written to the probe's console as soon as the VMM
	// starts, and the run powers the guest off once it answered with the
	// line Answer. A restored probe has booted already and prints no ready
	// line, so this is how a restore is driven; a cold boot driven the same
	// way is its like-for-like peer.
	Ask, Answer string
	// Rows are the stages timed; nil means Stages.
	Rows []Stage
}

// rows returns the stages this configuration is timed by.
func (c Config) rows() []Stage {
	if c.Rows == nil {
		return Stages
	}
	return c.Rows
}

// Validate checks the fields a boot cannot do without.
func (c Config) Validate() error {
	var errs []error
	if c.VMM != VMMVolt && c.VMM != VMMQEMU {
		errs = append(errs, fmt.Errorf("vmm %q is not %s or %s", c.VMM, VMMVolt, VMMQEMU))
	}
	if c.Guest != GuestProbe && c.Guest != GuestLinux {
		errs = append(errs, fmt.Errorf("guest %q is not %s or %s", c.Guest, GuestProbe, GuestLinux))
	}
	if c.VMMBin == "" {
		errs = append(errs, errors.New("no VMM binary"))
	}
	switch {
	case c.RestoreDir != "" && c.VMM != VMMVolt:
		errs = append(errs, fmt.Errorf("restore under %s: only volt-vmm restores volt snapshots", c.VMM))
	case c.RestoreDir != "" && c.Guest != GuestProbe:
		errs = append(errs, errors.New("restore: only the probe guest can be driven after a restore"))
	case c.RestoreDir == "" && c.Kernel == "":
		errs = append(errs, errors.New("no kernel"))
	}
	if (c.Ask == "") != (c.Answer == "") {
		errs = append(errs, errors.New("a question to the guest needs its answer, and an answer its question"))
	}
	if c.RestoreDir != "" && c.Ask == "" {
		errs = append(errs, errors.New("restore: nothing to ask the restored guest"))
	}
	if c.CPUs < 1 {
		errs = append(errs, fmt.Errorf("%d vCPUs", c.CPUs))
	}
	if c.Timeout <= 0 {
		errs = append(errs, errors.New("no boot timeout"))
	}
	return errors.Join(errs...)
}

// Args returns the VMM command line (without the binary).
func (c Config) Args() []string {
	var a []string
	switch {
	case c.RestoreDir != "":
		// The snapshot carries memory size and vCPUs.
		a = []string{"--restore", c.RestoreDir, "--console", "stdio"}
	case c.VMM == VMMVolt:
		a = []string{"--kernel", c.Kernel, "--memory", c.Memory, "--cpus", fmt.Sprint(c.CPUs), "--console", "stdio"}
		if c.Initrd != "" {
			a = append(a, "--initrd", c.Initrd)
		}
		if c.Cmdline != "" {
			a = append(a, "--cmdline", c.Cmdline)
		}
	case c.VMM == VMMQEMU:
		a = []string{"-M", "microvm", "-enable-kvm", "-m", c.Memory, "-smp", fmt.Sprint(c.CPUs),
			"-kernel", c.Kernel, "-nographic", "-no-reboot"}
		if c.Initrd != "" {
			a = append(a, "-initrd", c.Initrd)
		}
		if c.Cmdline != "" {
			a = append(a, "-append", c.Cmdline)
		}
	}
	return append(a, c.ExtraArgs...)
}

// Boot is the outcome of one boot.
type Boot struct {
	VMM    string
	Stages map[string]StageTime
	Record trace.Record
	Stderr string // the VMM's stderr, its last 64 KiB
	Err    error  // timeout, crash, missing ready line, …
}

// ErrTimeout marks a boot that the per-boot timeout cut short.
var ErrTimeout = errors.New("boot timed out")

// Runner boots guests with one tracer. Boots run one at a time, so that
// they do not disturb each other's timings.
type Runner struct {
	tracer *trace.Tracer
	mu     sync.Mutex
}

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

// Boot boots the guest once and returns its stage times.
func (r *Runner) Boot(ctx context.Context, cfg Config) Boot {
	r.mu.Lock()
	defer r.mu.Unlock()
	b := Boot{VMM: cfg.VMM}
	if err := cfg.Validate(); err != nil {
		b.Err = fmt.Errorf("config: %w", err)
		return b
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	g := trace.Command(ctx, cfg.VMMBin, cfg.Args()...)
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
	driveErr := drive(cfg, stdout, stdin, console)
	waitErr := g.Cmd.Wait()
	stdin.Close()
	rec, recErr := r.tracer.Collect(pid)
	b.Stderr = stderr.String()
	switch {
	case ctx.Err() != nil:
		b.Err = fmt.Errorf("%w after %v (killed); console tail: %q", ErrTimeout, cfg.Timeout, console.String())
	case waitErr != nil:
		b.Err = fmt.Errorf("%s exited: %w; stderr: %s", filepath.Base(cfg.VMMBin), waitErr, strings.TrimSpace(b.Stderr))
	case driveErr != nil:
		b.Err = fmt.Errorf("%w; console tail: %q", driveErr, console.String())
	case recErr != nil:
		b.Err = recErr
	}
	if b.Err != nil {
		return b
	}
	b.Record = rec
	b.Stages = stageTimesFor(rec, cfg.rows())
	return b
}

// drive plays the guest's side of the protocol on the console: for the
// probe, wait for the ready line (or, with cfg.Ask, ask at once and wait
// for the answer) and ask it to power off (the same bytes for every VMM,
// for fairness); a Linux guest powers off by itself. Output is drained to
// EOF either way so the VMM never blocks on a full pipe.
func drive(cfg Config, stdout io.Reader, stdin io.WriteCloser, console io.Writer) error {
	br := bufio.NewReader(io.TeeReader(stdout, console))
	var err error
	if cfg.Guest == GuestProbe {
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

// RepoRoot finds the repository by walking up from the working directory to
// Volt's go.mod; the default paths (bin/volt-vmm, build/guest/…) are
// relative to it.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find repository root: %w", err)
	}
	for {
		if data, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && bytes.Contains(data, []byte("module github.com/voltvmm/volt\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("find repository root: no go.mod of github.com/voltvmm/volt above the working directory; pass --vmm-bin and --kernel")
		}
		dir = parent
	}
}
