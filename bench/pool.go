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
	PoolArmColdRestore = "cold-restore" // acquire from a template with no warm VMs
	PoolArmColdBoot    = "cold-boot"    // a fresh volt-vmm booting the guest
)

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
	Args           []string // more volt-vmm flags (memory, cmdline, …)
	Agent          bool
	ReadyLine      string // without Agent: the console line that is the answer
	Dir            string // for the vsock sockets
}

// PoolSpec is one `voltbench pool` run.
type PoolSpec struct {
	Client *pc.Client
	// Warm is a template whose warm target is at least the largest
	// Callers; Cold one of the same snapshot with none warm ("" skips
	// the cold-restore arm).
	Warm, Cold string
	Callers    []int
	// Samples is the number of cycles per arm and caller count, rounded up
	// to whole rounds (each round every caller does one cycle).
	Samples int
	// Ask is the agent request of each cycle (a ping when it has no
	// Args); with Agent false there is no agent and first-answer is not
	// measured.
	Ask      agent.Request
	Agent    bool
	Boot     *PoolColdBoot // nil skips the cold-boot arm
	Timeout  time.Duration // per cycle
	Observe  func(arm string, callers int, stage string, d time.Duration)
	Progress func(done int)
}

// PoolCell is one arm at one caller count.
type PoolCell struct {
	Arm      string
	Callers  int
	Stages   map[string]*hdrhistogram.Histogram // µs
	Paths    map[string]int
	Errors   int
	FirstErr string
}

// PoolReport is the outcome of RunPool.
type PoolReport struct {
	Cells []*PoolCell
	// PSS (kB) of each warm VMM (paused, restored) and of each leased
	// one after it answered (without an agent: right after the acquire),
	// at the largest caller count.
	WarmPSS, LeasedPSS []uint64
	Agent              bool
}

func newPoolCell(arm string, callers int) *PoolCell {
	c := &PoolCell{Arm: arm, Callers: callers, Stages: map[string]*hdrhistogram.Histogram{}, Paths: map[string]int{}}
	for _, s := range PoolStages {
		c.Stages[s] = hdrhistogram.New(1, 120_000_000, 3) // 1 µs to 2 min
	}
	return c
}

func (c *PoolCell) record(stage string, d time.Duration, obs func(string, int, string, time.Duration)) {
	c.Stages[stage].RecordValue(max(1, d.Microseconds()))
	if obs != nil {
		obs(c.Arm, c.Callers, stage, d)
	}
}

// RunPool measures each arm at each caller count, arms interleaved round
// by round so that the machine's drift hits them alike.
func RunPool(ctx context.Context, spec PoolSpec) (*PoolReport, error) {
	if spec.Client == nil || spec.Warm == "" || len(spec.Callers) == 0 || spec.Samples < 1 {
		return nil, errors.New("pool bench: need a client, a warm template, caller counts and at least one sample")
	}
	if spec.Timeout <= 0 {
		spec.Timeout = 30 * time.Second
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
		arms := []*PoolCell{newPoolCell(PoolArmWarm, n)}
		if spec.Cold != "" {
			arms = append(arms, newPoolCell(PoolArmColdRestore, n))
		}
		if spec.Boot != nil {
			arms = append(arms, newPoolCell(PoolArmColdBoot, n))
		}
		rep.Cells = append(rep.Cells, arms...)
		rounds := PoolRounds(spec.Samples, n)
		for r := 0; r < rounds; r++ {
			for _, cell := range arms {
				if err := ctx.Err(); err != nil {
					return rep, err
				}
				if cell.Arm == PoolArmWarm {
					if err := waitWarm(ctx, spec.Client, spec.Warm, n); err != nil {
						return rep, err
					}
				}
				measurePSS := cell.Arm == PoolArmWarm && n == maxCallers && r == rounds-1
				if measurePSS {
					rep.WarmPSS = warmPSS(ctx, spec.Client, spec.Warm)
				}
				pss := runRound(ctx, spec, cell, measurePSS)
				if measurePSS {
					rep.LeasedPSS = pss
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

// PoolRounds is how many rounds of callers give at least samples cycles.
func PoolRounds(samples, callers int) int { return (samples + callers - 1) / callers }

// waitWarm waits until template has at least n warm VMMs (the warm arm
// measures the warm path, not a refill race).
func waitWarm(ctx context.Context, c *pc.Client, template string, n int) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for {
		st, err := c.Status(ctx)
		if err != nil {
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
			cctx, cancel := context.WithTimeout(ctx, spec.Timeout)
			defer cancel()
			var st map[string]time.Duration
			var path string
			var kb uint64
			var err error
			if cell.Arm == PoolArmColdBoot {
				st, err = bootCycle(cctx, spec.Boot, spec.Ask)
				path = "boot"
			} else {
				tpl := spec.Warm
				if cell.Arm == PoolArmColdRestore {
					tpl = spec.Cold
				}
				st, path, kb, err = poolCycle(cctx, spec, tpl, pss)
			}
			mu.Lock()
			defer mu.Unlock()
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

// poolCycle is what a caller does: acquire, one agent request, release.
func poolCycle(ctx context.Context, spec PoolSpec, template string, pss bool) (map[string]time.Duration, string, uint64, error) {
	st := map[string]time.Duration{}
	t0 := time.Now()
	lease, err := spec.Client.Acquire(ctx, template, time.Minute)
	st[PoolStageAcquire] = time.Since(t0)
	if err != nil {
		return nil, "", 0, err
	}
	var runErr error
	if spec.Agent {
		t1 := time.Now()
		var res agent.Result
		res, runErr = pc.RunOn(ctx, lease, spec.Ask, nil)
		if runErr == nil && !res.Success() {
			runErr = fmt.Errorf("agent answered %v", res.Status)
		}
		st[PoolStageFirstAnswer] = time.Since(t1)
		st[PoolStageTotal] = time.Since(t0)
	}
	var kb uint64
	if pss {
		if r, err := smaps.ReadRollup(lease.PID); err == nil {
			kb = r.Pss
		}
	}
	t2 := time.Now()
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	relErr := spec.Client.Release(rctx, lease.ID)
	cancel()
	st[PoolStageRelease] = time.Since(t2)
	if err := errors.Join(runErr, relErr); err != nil {
		return nil, "", 0, err
	}
	return st, lease.Path, kb, nil
}

// bootCycle boots the guest in a fresh volt-vmm and waits for its answer:
// the agent's over vsock, or the console's ready line.
func bootCycle(ctx context.Context, b *PoolColdBoot, ask agent.Request) (map[string]time.Duration, error) {
	dir, err := os.MkdirTemp(b.Dir, "boot")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	args := append([]string{"--kernel", b.Kernel}, b.Args...)
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
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
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
			time.Sleep(200 * time.Microsecond)
		}
	} else {
		if err := waitLine(ctx, out, b.ReadyLine); err != nil {
			return nil, fmt.Errorf("cold boot: %w", err)
		}
	}
	st[PoolStageFirstAnswer] = time.Since(t0)
	st[PoolStageTotal] = st[PoolStageFirstAnswer]
	t1 := time.Now()
	cmd.Process.Kill()
	cmd.Wait()
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
			if strings.TrimSpace(sc.Text()) == want {
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

// WritePool prints, per caller count, p50/p99/max of every stage for each
// arm side by side, with each stage's ratio to the warm arm's p50.
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
			fmt.Fprintf(tw, "%s p50\tp99\tmax\t", c.Arm)
		}
		fmt.Fprintln(tw)
		for _, s := range PoolStages {
			fmt.Fprintf(tw, "%s\t", s)
			for _, c := range cells {
				h := c.Stages[s]
				if h.TotalCount() == 0 {
					fmt.Fprint(tw, "n/a\tn/a\tn/a\t")
					continue
				}
				p99 := "n/a"
				if h.TotalCount() >= 100 {
					p99 = fmtUS(h.ValueAtQuantile(99))
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t", fmtUS(h.ValueAtQuantile(50)), p99, fmtUS(h.Max()))
			}
			fmt.Fprintln(tw)
		}
		fmt.Fprint(tw, "cycles (paths; errors)\t")
		for _, c := range cells {
			var parts []string
			for p, k := range c.Paths {
				parts = append(parts, fmt.Sprintf("%s %d", p, k))
			}
			sort.Strings(parts)
			fmt.Fprintf(tw, "%s; %d\t\t\t", strings.Join(parts, ", "), c.Errors)
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
	}
	if len(rep.WarmPSS) > 0 || len(rep.LeasedPSS) > 0 {
		when := "after its answer"
		if !rep.Agent {
			when = "right after its acquire"
		}
		fmt.Fprintf(w, "PSS per warm VMM: %s; per leased VMM (%s): %s\n", pssSummary(rep.WarmPSS), when, pssSummary(rep.LeasedPSS))
	}
	return nil
}

// p99 needs 100 samples (stats.TailMinSamples' rule); below it the
// column says n/a rather than repeat the max.
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
