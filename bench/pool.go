package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/voltvmm/volt/bench/smaps"
	"github.com/voltvmm/volt/guest/agent"
	pc "github.com/voltvmm/volt/pool/client"
)

// Arms of a pool run.
const (
	PoolArmWarm        = "warm"         // acquire from the warm pool
	PoolArmWarmPrimed  = "warm-primed"  // acquire from a warm pool whose VMMs answered a ping once (TemplateSpec.Prime)
	PoolArmColdRestore = "cold-restore" // acquire from a template with no warm VMs
	PoolArmColdBoot    = "cold-boot"    // a fresh volt-vmm booting the guest
)

// PoolLinuxCmdline is the Linux guest's command line for a pool template:
// volt-init's workload must outlive the template boot and every clone's
// lease (it powers the VM off when the workload ends), so it sleeps;
// the agent is on by default and listens once the guest has a vsock
// device.
const PoolLinuxCmdline = `console=ttyS0 reboot=k panic=1 volt.run="/bin/sleep 2147483647"`

// LinuxReadyLine starts the console line volt-init writes when it is ready
// ("volt-init: ready cpus=1 mem=…", guest/init).
const LinuxReadyLine = "volt-init: ready"

// Stages of one pool cycle, in order.
const (
	PoolStageAcquire     = "acquire"      // acquire request → lease (a boot has none)
	PoolStageFirstAnswer = "first-answer" // lease → the agent's answer (boot: exec → answer)
	PoolStageRelease     = "release"      // release request → answered (boot: SIGKILL → reaped)
	PoolStageTotal       = "total"        // acquire request → answer (what a caller waits for)
)

// PoolStages lists the stages in table order.
var PoolStages = []string{PoolStageAcquire, PoolStageFirstAnswer, PoolStageTotal, PoolStageRelease}

// PoolColdBoot is how the cold-boot arm starts the same guest: a volt-vmm
// per cycle, its agent reached through its own vsock socket (or, without
// an agent, its serial console's ReadyLine).
type PoolColdBoot struct {
	VMMBin, Kernel string
	Initrd         string   // a Linux guest's initramfs ("" for the probe)
	Args           []string // more volt-vmm flags (memory, cmdline, guest profile, …)
	Agent          bool
	// ReadyLine, without Agent, is the start of the console line that is
	// the answer (the probe's "volt-probe: ready"; volt-init's "volt-init:
	// ready", which goes on with the vCPU and memory counts).
	ReadyLine string
	Dir       string // for the vsock sockets
	// Poll is how often the agent is tried until it answers (default
	// 200 µs, right for the probe's ~65 ms boot). A Linux guest here
	// boots for a minute: polling it every 20 ms as voltpool's template
	// boot does costs little and bounds the error to that.
	Poll time.Duration
	// Timeout bounds one boot (default PoolSpec.Timeout).
	Timeout time.Duration
	// Samples is the arm's cycles per caller count (0: PoolSpec.Samples),
	// rounded up to whole rounds, which RunPool spreads evenly among the
	// other arms' rounds; a Linux boot takes a minute here.
	Samples int
	// Callers are the caller counts at which the arm runs (nil: all of
	// PoolSpec.Callers): 64 Linux guests booting at once on two cores
	// would take the better part of an hour.
	Callers []int
}

// runsAt reports whether the cold-boot arm runs at n callers.
func (b *PoolColdBoot) runsAt(n int) bool {
	if b.Callers == nil {
		return true
	}
	for _, c := range b.Callers {
		if c == n {
			return true
		}
	}
	return false
}

// PoolSpec is one `voltbench pool` run.
type PoolSpec struct {
	Client *pc.Client
	// Warm is a template whose warm target is at least the largest
	// Callers; Cold one of the same snapshot with none warm ("" skips
	// the cold-restore arm).
	Warm, Cold string
	// Primed is a template of the same snapshot with Prime set and the
	// same warm target ("" skips the warm-primed arm).
	Primed  string
	Callers []int
	// Samples is the number of cycles per arm and caller count, rounded up
	// to whole rounds (each round every caller does one cycle).
	Samples int
	// Ask is the agent request of each cycle (a ping when it has no
	// Args); with Agent false there is no agent and first-answer is not
	// measured.
	Ask   agent.Request
	Agent bool
	// Retries is how many times a cycle asks the agent again when its
	// request failed before an answer (connection refused, reset or
	// closed): a Linux clone just resumed can reset a first connection
	// that reaches it before it has handled the vsock transport reset
	// (guest/README.md (e)), and its callers are told to retry. The
	// first answer then includes the failed tries; each is counted.
	Retries int
	Boot    *PoolColdBoot // nil skips the cold-boot arm
	// Timeout bounds a cycle's acquire and agent request (the dial, the
	// CONNECT handshake and the answer's reads all end at its deadline;
	// default 30 s).
	Timeout time.Duration
	// ReleaseTimeout bounds a cycle's release (default 10 s), WarmTimeout
	// the wait before a warm round until the pool has refilled enough warm
	// VMMs for every caller (default 2 min).
	ReleaseTimeout, WarmTimeout time.Duration
	Observe                     func(arm string, callers int, stage string, d time.Duration)
	Progress                    func(done int)
}

// Defaults of PoolSpec's timeouts.
const (
	DefaultPoolReleaseTimeout = 10 * time.Second
	DefaultPoolWarmTimeout    = 2 * time.Minute
)

// PoolCell is one arm at one caller count.
type PoolCell struct {
	Arm      string
	Callers  int
	Stages   map[string]*hdrhistogram.Histogram // µs
	Paths    map[string]int
	Errors   int
	FirstErr string
	// Retries counts agent requests asked again (PoolSpec.Retries);
	// FirstRetry is the failure that caused the first of them.
	Retries    int
	FirstRetry string
}

// PoolReport is the outcome of RunPool.
type PoolReport struct {
	Cells []*PoolCell
	// PSS (kB) of each warm VMM (paused, restored) and of each leased
	// one after it answered (without an agent: right after the acquire),
	// at the largest caller count; Primed… the same for the warm-primed
	// arm, whose warm VMMs have answered once.
	WarmPSS, LeasedPSS             []uint64
	PrimedWarmPSS, PrimedLeasedPSS []uint64
	Agent                          bool
}

// poolHistMaxUS is the longest stage time a cell's histograms hold (µs):
// an hour, beyond any cycle limit. It was 2 minutes, and the eight Linux
// answers of an 8-caller round (292-399 s) were dropped from the table
// without a word while the CSV had them.
const poolHistMaxUS = 3_600_000_000

func newPoolCell(arm string, callers int) *PoolCell {
	c := &PoolCell{Arm: arm, Callers: callers, Stages: map[string]*hdrhistogram.Histogram{}, Paths: map[string]int{}}
	for _, s := range PoolStages {
		c.Stages[s] = hdrhistogram.New(1, poolHistMaxUS, 3)
	}
	return c
}

func (c *PoolCell) record(stage string, d time.Duration, obs func(string, int, string, time.Duration)) {
	c.Stages[stage].RecordValue(min(max(1, d.Microseconds()), poolHistMaxUS))
	if obs != nil {
		obs(c.Arm, c.Callers, stage, d)
	}
}

// RunPool measures each arm at each caller count, arms interleaved round
// by round so that the machine's drift hits them alike. An arm with fewer
// rounds than the others (the cold boot's Samples) has them spread evenly
// over the run at that caller count.
func RunPool(ctx context.Context, spec PoolSpec) (*PoolReport, error) {
	if spec.Client == nil || spec.Warm == "" || len(spec.Callers) == 0 || spec.Samples < 1 {
		return nil, errors.New("pool bench: need a client, a warm template, caller counts and at least one sample")
	}
	if spec.Timeout <= 0 {
		spec.Timeout = 30 * time.Second
	}
	if spec.ReleaseTimeout <= 0 {
		spec.ReleaseTimeout = DefaultPoolReleaseTimeout
	}
	if spec.WarmTimeout <= 0 {
		spec.WarmTimeout = DefaultPoolWarmTimeout
	}
	if spec.Retries < 0 {
		return nil, fmt.Errorf("pool bench: %d retries", spec.Retries)
	}
	if spec.Boot != nil && spec.Boot.Samples < 0 {
		return nil, fmt.Errorf("pool bench: %d cold-boot samples", spec.Boot.Samples)
	}
	rep := &PoolReport{Agent: spec.Agent}
	maxCallers := 0
	for _, n := range spec.Callers {
		if n < 1 {
			return nil, fmt.Errorf("pool bench: %d callers", n)
		}
		maxCallers = max(maxCallers, n)
	}
	done := 0
	for _, n := range spec.Callers {
		arms := PoolArmRounds(spec, n)
		total := 0
		for i := range arms {
			arms[i].cell = newPoolCell(arms[i].Arm, n)
			rep.Cells = append(rep.Cells, arms[i].cell)
			total = max(total, arms[i].Rounds)
		}
		for r := 0; r < total; r++ {
			for _, a := range arms {
				if !roundDue(r, a.Rounds, total) {
					continue
				}
				cell := a.cell
				if err := ctx.Err(); err != nil {
					return rep, err
				}
				warmArm := cell.Arm == PoolArmWarm || cell.Arm == PoolArmWarmPrimed
				if warmArm {
					if err := waitWarm(ctx, spec.Client, spec.template(cell.Arm), n, spec.WarmTimeout); err != nil {
						return rep, err
					}
				}
				warm, leased := &rep.WarmPSS, &rep.LeasedPSS
				if cell.Arm == PoolArmWarmPrimed {
					warm, leased = &rep.PrimedWarmPSS, &rep.PrimedLeasedPSS
				}
				measurePSS := warmArm && n == maxCallers && r == total-1
				if measurePSS {
					*warm = warmPSS(ctx, spec.Client, spec.template(cell.Arm))
				}
				pss := runRound(ctx, spec, cell, measurePSS)
				if measurePSS {
					*leased = pss
				}
				done += n
				if spec.Progress != nil {
					spec.Progress(done)
				}
			}
		}
	}
	return rep, nil
}

// PoolArm is one arm's share of a caller count: its rounds of callers.
type PoolArm struct {
	Arm    string
	Rounds int
	cell   *PoolCell
}

// PoolArmRounds lists the arms spec runs at n callers, in the order each
// round takes them, and how many rounds each has (every caller does one
// cycle per round).
func PoolArmRounds(spec PoolSpec, n int) []PoolArm {
	rounds := PoolRounds(spec.Samples, n)
	arms := []PoolArm{{Arm: PoolArmWarm, Rounds: rounds}}
	if spec.Primed != "" {
		arms = append(arms, PoolArm{Arm: PoolArmWarmPrimed, Rounds: rounds})
	}
	if spec.Cold != "" {
		arms = append(arms, PoolArm{Arm: PoolArmColdRestore, Rounds: rounds})
	}
	if b := spec.Boot; b != nil && b.runsAt(n) {
		br := rounds
		if b.Samples > 0 {
			br = PoolRounds(b.Samples, n)
		}
		arms = append(arms, PoolArm{Arm: PoolArmColdBoot, Rounds: br})
	}
	return arms
}

// template is the template an arm acquires from.
func (spec PoolSpec) template(arm string) string {
	switch arm {
	case PoolArmWarmPrimed:
		return spec.Primed
	case PoolArmColdRestore:
		return spec.Cold
	}
	return spec.Warm
}

// PoolRounds is how many rounds of callers give at least samples cycles.
func PoolRounds(samples, callers int) int { return (samples + callers - 1) / callers }

// roundDue reports whether an arm of k rounds runs in round r of total:
// exactly k of the total rounds, evenly spaced, the first among them
// (round r is due when r·k/total reaches the next whole number).
func roundDue(r, k, total int) bool {
	if k >= total {
		return true
	}
	return r*k%total < k
}

// waitWarm waits until template has at least n warm VMMs (the warm arm
// measures the warm path, not a refill race).
func waitWarm(ctx context.Context, c *pc.Client, template string, n int, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		st, err := c.Status(ctx)
		if err != nil {
			if ctx.Err() != nil {
				// The wait's deadline cut the status request short: say
				// what was being waited for, not only the request.
				return fmt.Errorf("waiting for %d warm VMs of %s: %w (%v)", n, template, ctx.Err(), err)
			}
			return err
		}
		for _, t := range st.Templates {
			if t.Template == template {
				if t.Target < n {
					return fmt.Errorf("template %s keeps %d warm, fewer than %d callers: raise it (voltpool template warm)", template, t.Target, n)
				}
				if t.Warm >= n {
					return nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %d warm VMs of %s: %w", n, template, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func warmPSS(ctx context.Context, c *pc.Client, template string) []uint64 {
	vms, err := c.VMs(ctx)
	if err != nil {
		return nil
	}
	var out []uint64
	for _, v := range vms {
		if v.Template == template && v.State == "warm" {
			if r, err := smaps.ReadRollup(v.PID); err == nil {
				out = append(out, r.Pss)
			}
		}
	}
	return out
}

// runRound has cell.Callers callers do one cycle each, started together.
func runRound(ctx context.Context, spec PoolSpec, cell *PoolCell, pss bool) []uint64 {
	var mu sync.Mutex
	var wg sync.WaitGroup
	var pssOut []uint64
	start := make(chan struct{})
	for range cell.Callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			timeout := spec.Timeout
			if cell.Arm == PoolArmColdBoot && spec.Boot.Timeout > 0 {
				timeout = spec.Boot.Timeout
			}
			cctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			var st map[string]time.Duration
			var path string
			var kb uint64
			var tries []error
			var err error
			if cell.Arm == PoolArmColdBoot {
				st, err = bootCycle(cctx, spec.Boot, spec.Ask)
				path = "boot"
			} else {
				st, path, kb, tries, err = poolCycle(cctx, spec, spec.template(cell.Arm), pss)
			}
			mu.Lock()
			defer mu.Unlock()
			cell.Retries += len(tries)
			if len(tries) > 0 && cell.FirstRetry == "" {
				cell.FirstRetry = tries[0].Error()
			}
			if err != nil {
				cell.Errors++
				if cell.FirstErr == "" {
					cell.FirstErr = err.Error()
				}
				return
			}
			cell.Paths[path]++
			for s, d := range st {
				cell.record(s, d, spec.Observe)
			}
			if kb > 0 {
				pssOut = append(pssOut, kb)
			}
		}()
	}
	close(start)
	wg.Wait()
	return pssOut
}

// poolCycle is what a caller does: acquire, one agent request (asked
// again up to spec.Retries times if it fails before an answer), release.
// tries are the failures that were retried.
func poolCycle(ctx context.Context, spec PoolSpec, template string, pss bool) (st map[string]time.Duration, path string, kb uint64, tries []error, err error) {
	st = map[string]time.Duration{}
	t0 := time.Now()
	lease, err := spec.Client.Acquire(ctx, template, spec.leaseTTL())
	st[PoolStageAcquire] = time.Since(t0)
	if err != nil {
		return nil, "", 0, nil, err
	}
	var runErr error
	if spec.Agent {
		t1 := time.Now()
		var res agent.Result
		for {
			res, runErr = pc.RunOn(ctx, lease, spec.Ask, nil)
			// A request the cycle's deadline cut short is not asked
			// again: its context is spent (the error says so before
			// ctx.Err() may).
			if runErr == nil || ctx.Err() != nil || errors.Is(runErr, context.DeadlineExceeded) || len(tries) == spec.Retries {
				break
			}
			tries = append(tries, runErr)
			select {
			case <-ctx.Done():
			case <-time.After(retryPause):
			}
		}
		if runErr == nil && !res.Success() {
			runErr = fmt.Errorf("agent answered %v", res.Status)
		}
		st[PoolStageFirstAnswer] = time.Since(t1)
		st[PoolStageTotal] = time.Since(t0)
	}
	if pss {
		if r, err := smaps.ReadRollup(lease.PID); err == nil {
			kb = r.Pss
		}
	}
	t2 := time.Now()
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), spec.ReleaseTimeout)
	relErr := spec.Client.Release(rctx, lease.ID)
	cancel()
	st[PoolStageRelease] = time.Since(t2)
	if err := errors.Join(runErr, relErr); err != nil {
		return nil, "", 0, tries, err
	}
	return st, lease.Path, kb, tries, nil
}

// leaseTTL outlasts a cycle: the pool must never end a lease (and kill its
// VMM) while the bench still waits for the answer, which a Linux clone
// sharing two cores with seven others took more than a minute to give.
func (spec PoolSpec) leaseTTL() time.Duration {
	return max(time.Minute, spec.Timeout+30*time.Second)
}

// retryPause is the wait before an agent request is asked again: long
// enough not to spin on a guest that resets connections, short beside a
// Linux clone's answer (seconds here).
const retryPause = 5 * time.Millisecond

// bootCycle boots the guest in a fresh volt-vmm and waits for its answer:
// the agent's over vsock, or the console's ready line.
func bootCycle(ctx context.Context, b *PoolColdBoot, ask agent.Request) (map[string]time.Duration, error) {
	dir, err := os.MkdirTemp(b.Dir, "boot")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	args := []string{"--kernel", b.Kernel}
	if b.Initrd != "" {
		args = append(args, "--initrd", b.Initrd)
	}
	args = append(args, b.Args...)
	uds := filepath.Join(dir, "v.sock")
	if b.Agent {
		args = append(args, "--vsock", "cid=3,uds="+uds, "--console", "none")
	} else {
		args = append(args, "--console", "stdio")
	}
	cmd := exec.Command(b.VMMBin, args...)
	var out io.ReadCloser
	if !b.Agent {
		if out, err = cmd.StdoutPipe(); err != nil {
			return nil, err
		}
	}
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", b.VMMBin, err)
	}
	// A boot has no acquire: its first answer counts from the exec.
	st := map[string]time.Duration{}
	// With an agent nothing reads the VMM's output, so a VMM that dies
	// (a guest that never comes up) is noticed through its exit, not
	// only at the cycle's timeout; the console's reader sees EOF instead.
	exited := make(chan struct{})
	var waitErr error
	reaped := false
	reap := func() {
		if reaped {
			return
		}
		reaped = true
		cmd.Process.Kill()
		if b.Agent {
			<-exited
		} else {
			cmd.Wait()
		}
	}
	defer reap()
	if b.Agent {
		go func() {
			waitErr = cmd.Wait()
			close(exited)
		}()
	}
	poll := b.Poll
	if poll <= 0 {
		poll = 200 * time.Microsecond
	}
	if b.Agent {
		for {
			res, err := runAgentOnce(ctx, uds, ask)
			if err == nil {
				if !res.Success() {
					return nil, fmt.Errorf("agent answered %v", res.Status)
				}
				break
			}
			if ctx.Err() != nil {
				return nil, fmt.Errorf("cold boot: no agent answer: %w (last: %v)", ctx.Err(), err)
			}
			select {
			case <-ctx.Done():
			case <-exited:
				reaped = true
				return nil, fmt.Errorf("cold boot: %s exited before its agent answered (%v; last: %v)", b.VMMBin, waitErr, err)
			case <-time.After(poll):
			}
		}
	} else {
		if err := waitLine(ctx, out, b.ReadyLine); err != nil {
			return nil, fmt.Errorf("cold boot: %w", err)
		}
	}
	st[PoolStageFirstAnswer] = time.Since(t0)
	st[PoolStageTotal] = st[PoolStageFirstAnswer]
	t1 := time.Now()
	reap()
	st[PoolStageRelease] = time.Since(t1)
	return st, nil
}

func runAgentOnce(ctx context.Context, uds string, ask agent.Request) (agent.Result, error) {
	conn, err := agent.DialHybrid(ctx, uds, agent.Port)
	if err != nil {
		return agent.Result{}, err
	}
	defer conn.Close()
	var c agent.Client
	return c.Run(ctx, conn, ask)
}

func waitLine(ctx context.Context, r io.Reader, want string) error {
	lines := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			if strings.HasPrefix(strings.TrimSpace(sc.Text()), want) {
				lines <- nil
				io.Copy(io.Discard, r)
				return
			}
		}
		lines <- fmt.Errorf("console ended before %q", want)
	}()
	select {
	case err := <-lines:
		return err
	case <-ctx.Done():
		return fmt.Errorf("no %q on the console: %w", want, ctx.Err())
	}
}

// WritePool prints, per caller count, p50/p90/p99/max of every stage for
// each arm side by side.
func WritePool(w io.Writer, rep *PoolReport) error {
	byCallers := map[int][]*PoolCell{}
	var counts []int
	for _, c := range rep.Cells {
		if byCallers[c.Callers] == nil {
			counts = append(counts, c.Callers)
		}
		byCallers[c.Callers] = append(byCallers[c.Callers], c)
	}
	sort.Ints(counts)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	for _, n := range counts {
		cells := byCallers[n]
		fmt.Fprintf(tw, "%d callers (ms)\t", n)
		for _, c := range cells {
			fmt.Fprintf(tw, "%s p50\tp90\tp99\tmax\t", c.Arm)
		}
		fmt.Fprintln(tw)
		for _, s := range PoolStages {
			fmt.Fprintf(tw, "%s\t", s)
			for _, c := range cells {
				h := c.Stages[s]
				if h.TotalCount() == 0 {
					fmt.Fprint(tw, "n/a\tn/a\tn/a\tn/a\t")
					continue
				}
				p90, p99 := "n/a", "n/a"
				if h.TotalCount() >= 10 {
					p90 = fmtUS(h.ValueAtQuantile(90))
				}
				if h.TotalCount() >= 100 {
					p99 = fmtUS(h.ValueAtQuantile(99))
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t", fmtUS(h.ValueAtQuantile(50)), p90, p99, fmtUS(h.Max()))
			}
			fmt.Fprintln(tw)
		}
		fmt.Fprint(tw, "cycles (paths; errors; retries)\t")
		for _, c := range cells {
			var parts []string
			for p, k := range c.Paths {
				parts = append(parts, fmt.Sprintf("%s %d", p, k))
			}
			sort.Strings(parts)
			fmt.Fprintf(tw, "%s; %d; %d\t\t\t\t", strings.Join(parts, ", "), c.Errors, c.Retries)
		}
		fmt.Fprintln(tw)
		fmt.Fprintln(tw)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, c := range rep.Cells {
		if c.FirstErr != "" {
			fmt.Fprintf(w, "%s at %d callers: %d errors, first: %s\n", c.Arm, c.Callers, c.Errors, c.FirstErr)
		}
		if c.FirstRetry != "" {
			fmt.Fprintf(w, "%s at %d callers: %d requests asked again, first after: %s\n", c.Arm, c.Callers, c.Retries, c.FirstRetry)
		}
	}
	if len(rep.WarmPSS) > 0 || len(rep.LeasedPSS) > 0 {
		when := "after its answer"
		if !rep.Agent {
			when = "right after its acquire"
		}
		fmt.Fprintf(w, "PSS per warm VMM: %s; per leased VMM (%s): %s\n", pssSummary(rep.WarmPSS), when, pssSummary(rep.LeasedPSS))
	}
	if len(rep.PrimedWarmPSS) > 0 || len(rep.PrimedLeasedPSS) > 0 {
		fmt.Fprintf(w, "PSS per primed warm VMM: %s; per leased primed VMM: %s\n", pssSummary(rep.PrimedWarmPSS), pssSummary(rep.PrimedLeasedPSS))
	}
	return nil
}

// p99 needs 100 samples (stats.TailMinSamples' rule), p90 ten by the same
// reasoning; below them the column says n/a rather than repeat the max.
func fmtUS(us int64) string { return fmt.Sprintf("%.3f", float64(us)/1000) }

func pssSummary(kb []uint64) string {
	if len(kb) == 0 {
		return "n/a"
	}
	s := append([]uint64(nil), kb...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return fmt.Sprintf("median %d kB (min %d, max %d, n=%d)", s[len(s)/2], s[0], s[len(s)-1], len(s))
}

// Pool metric names, exported by voltbench pool --metrics-listen.
const MetricPoolStageSeconds = "volt_bench_pool_stage_seconds"

// PoolMetrics exports every cycle's stages as a histogram by arm, callers
// and stage.
type PoolMetrics struct {
	reg   *prometheus.Registry
	stage *prometheus.HistogramVec
}

// NewPoolMetrics registers the pool bench's series in a registry of its own.
func NewPoolMetrics() *PoolMetrics {
	m := &PoolMetrics{reg: prometheus.NewRegistry()}
	m.stage = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    MetricPoolStageSeconds,
		Help:    "voltbench pool: time of each stage of a caller's cycle (acquire, first answer, release, total) by arm and concurrent callers.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
	}, []string{"arm", "callers", "stage"})
	m.reg.MustRegister(m.stage)
	return m
}

// Registry is the bench's registry (tests, promtool, serving).
func (m *PoolMetrics) Registry() *prometheus.Registry { return m.reg }

// Observe is a PoolSpec.Observe.
func (m *PoolMetrics) Observe(arm string, callers int, stage string, d time.Duration) {
	m.stage.WithLabelValues(arm, fmt.Sprint(callers), stage).Observe(d.Seconds())
}
