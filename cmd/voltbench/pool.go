package main

import (
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/voltvmm/volt/bench"
	"github.com/voltvmm/volt/guest/agent"
	"github.com/voltvmm/volt/internal/hostfile"
	pc "github.com/voltvmm/volt/pool/client"
)

// poolOptions is what `voltbench pool`'s flags ask for, the guest's
// defaults filled in and every value checked: parsing apart from running,
// so that tests reach it without a daemon.
type poolOptions struct {
	socket, template, coldTemplate string
	primedTemplate                 string
	voltpool, vmmBin               string
	guest                          string // bench.GuestProbe or bench.GuestLinux
	kernel, initrd, cmdline        string // relative paths are the repository's
	guestProfile                   string
	vsockConnectTimeout            time.Duration // 0: voltpool's (volt-vmm's) default
	memoryMiB                      int64
	agent                          bool
	callers                        []int
	maxCallers                     int
	samples                        int
	ask                            agent.Request
	retries                        int
	coldBoot, coldRestore          bool
	primed                         bool
	bootSamples                    int   // 0: samples
	bootCallers                    []int // nil: every caller count
	bootPoll                       time.Duration
	metricsAddr                    string
	csvOut                         string
	timeout, bootTimeout           time.Duration
	readyTimeout                   time.Duration
}

// poolGuest holds what differs between the guests when a flag is not
// given. A Linux guest here boots for a minute or two (ring 0 emulated)
// and answers its first request after a restore in seconds, so its
// limits are minutes and its cold-boot arm is a few boots at one caller.
type poolGuest struct {
	kernel, initrd       string
	memoryMiB            int64
	timeout, bootTimeout time.Duration
	readyTimeout         time.Duration
	bootSamples          int   // 0: --samples
	bootCallers          []int // nil: --callers
	bootPoll             time.Duration
	cmdline              func(agent bool) string
	readyLine            string
}

var poolGuests = map[string]poolGuest{
	bench.GuestProbe: {
		kernel: bench.DefaultProbe, memoryMiB: 64,
		timeout: 30 * time.Second, bootTimeout: 30 * time.Second, readyTimeout: 2 * time.Minute,
		bootPoll: 200 * time.Microsecond,
		cmdline: func(agent bool) string {
			if agent {
				return "console=ttyS0 reboot=k panic=1 probe.agent"
			}
			return "console=ttyS0 reboot=k panic=1"
		},
		readyLine: "volt-probe: ready",
	},
	bench.GuestLinux: {
		kernel: bench.DefaultLinuxKernel, initrd: bench.DefaultLinuxInitrd, memoryMiB: 128,
		timeout: 5 * time.Minute, bootTimeout: 15 * time.Minute, readyTimeout: 15 * time.Minute,
		bootSamples: 3, bootCallers: []int{1}, bootPoll: 20 * time.Millisecond,
		cmdline:   func(bool) string { return bench.PoolLinuxCmdline },
		readyLine: bench.LinuxReadyLine,
	},
}

// errPoolUsage marks a bad command line (exit status 2).
var errPoolUsage = errors.New("usage")

func poolUsagef(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errPoolUsage}, args...)...)
}

// parsePoolArgs reads `voltbench pool`'s flags; pflag.ErrHelp for --help,
// an error wrapping errPoolUsage for anything it refuses.
func parsePoolArgs(args []string, stderr io.Writer) (poolOptions, error) {
	var o poolOptions
	fs := pflag.NewFlagSet("voltbench pool", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.socket, "socket", "", "use the voltpool daemon on this socket (with --template); default: start one of our own")
	fs.StringVar(&o.template, "template", "", "with --socket: the warm template (its warm target at least the largest --callers)")
	fs.StringVar(&o.coldTemplate, "cold-template", "", "with --socket: a template of the same snapshot with none warm (cold-restore arm)")
	fs.StringVar(&o.primedTemplate, "primed-template", "", "with --socket: a template of the same snapshot with prime set and the same warm target (warm-primed arm)")
	fs.StringVar(&o.voltpool, "voltpool", "bin/voltpool", "voltpool binary, for a daemon of our own")
	fs.StringVar(&o.vmmBin, "vmm-bin", bench.DefaultVMMBin, "volt-vmm binary")
	fs.StringVar(&o.guest, "guest", bench.GuestProbe, "guest: probe ("+bench.DefaultProbe+") or linux ("+bench.DefaultLinuxKernel+" + "+bench.DefaultLinuxInitrd+", volt-init's agent)")
	fs.StringVar(&o.kernel, "kernel", "", "guest kernel (default: by --guest; a Linux bzImage works too)")
	fs.StringVar(&o.initrd, "initrd", "", "initramfs for --guest linux (default: "+bench.DefaultLinuxInitrd+")")
	fs.StringVar(&o.cmdline, "cmdline", "", "kernel command line, whole (default: the probe's with probe.agent; for linux "+bench.PoolLinuxCmdline+")")
	fs.StringVar(&o.guestProfile, "guest-profile", "", "volt-vmm --guest-profile for the template boot and the cold boots (nested-pvm for Linux on nested, software-assisted KVM)")
	fs.Int64Var(&o.memoryMiB, "memory", 0, "guest memory, MiB (default: probe 64, linux 128)")
	fs.BoolVar(&o.agent, "agent", true, "the guest has a vsock agent (the probe with probe.agent, volt-init): first-answer is its answer over vsock")
	callers := fs.String("callers", "1,8,64", "concurrent callers, comma-separated")
	fs.IntVar(&o.samples, "samples", 100, "cycles per arm and caller count (rounded up to whole rounds of all callers; p99 needs 100)")
	ask := fs.String("ask", "echo answer", "the agent request of each cycle, split at blanks (\"\": a ping, no command run)")
	fs.IntVar(&o.retries, "retries", 2, "ask the agent again up to this many times when a request fails before its answer (counted; the first answer includes them)")
	fs.BoolVar(&o.coldBoot, "cold-boot", true, "add the cold-boot arm (a fresh volt-vmm per cycle)")
	fs.BoolVar(&o.coldRestore, "cold-restore", true, "add the cold-restore arm (a template with no warm VMs)")
	fs.BoolVar(&o.primed, "primed", true, "add the warm-primed arm (a template whose warm VMMs answered a ping once; needs --agent)")
	fs.IntVar(&o.bootSamples, "cold-boot-samples", 0, "cycles of the cold-boot arm per caller count (default: --samples; linux 3)")
	bootCallers := fs.String("cold-boot-callers", "", "caller counts at which the cold-boot arm runs, a subset of --callers (default: all; linux 1)")
	fs.StringVar(&o.metricsAddr, "metrics-listen", "", "serve Prometheus metrics of the run on this address")
	fs.StringVar(&o.csvOut, "csv", "", "write every cycle's stage times to this CSV file (arm,callers,stage,us), also after an interrupted run")
	fs.DurationVar(&o.timeout, "timeout", 0, "per-cycle limit of the warm and cold-restore arms (default: probe 30s, linux 5m)")
	fs.DurationVar(&o.bootTimeout, "cold-boot-timeout", 0, "per-cycle limit of the cold-boot arm (default: probe 30s, linux 15m)")
	fs.DurationVar(&o.vsockConnectTimeout, "vsock-connect-timeout", 0, "for a daemon of our own: voltpool serve --vsock-connect-timeout, how long each VMM waits for the guest to answer a CONNECT (default: volt-vmm's, Firecracker's 2s; crowded Linux guests on emulating cores need minutes)")
	fs.DurationVar(&o.readyTimeout, "ready-timeout", 0, "how long the template boot may take to be ready (default: probe 2m, linux 15m)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return o, err
		}
		return o, poolUsagef("%v", err)
	}
	if fs.NArg() > 0 {
		return o, poolUsagef("unexpected argument %q", fs.Arg(0))
	}
	g, ok := poolGuests[o.guest]
	if !ok {
		return o, poolUsagef("--guest %q: want %s or %s", o.guest, bench.GuestProbe, bench.GuestLinux)
	}
	var err error
	if o.callers, err = parseCallerList("--callers", *callers); err != nil {
		return o, err
	}
	for _, n := range o.callers {
		o.maxCallers = max(o.maxCallers, n)
	}
	if o.initrd != "" && o.guest != bench.GuestLinux {
		return o, poolUsagef("--initrd is for --guest linux (the probe has none)")
	}
	if o.socket != "" && o.template == "" {
		return o, poolUsagef("--socket needs --template")
	}
	if o.socket == "" && (o.template != "" || o.coldTemplate != "" || o.primedTemplate != "") {
		return o, poolUsagef("--template, --cold-template and --primed-template name templates of a daemon of yours: give its --socket")
	}
	if o.primedTemplate != "" && !o.primed {
		return o, poolUsagef("--primed-template is the warm-primed arm's: not with --primed=false")
	}
	if !o.agent {
		if o.primedTemplate != "" || (fs.Changed("primed") && o.primed) {
			return o, poolUsagef("the warm-primed arm primes through the agent: not with --agent=false")
		}
		o.primed = false
	}
	if o.samples < 1 {
		return o, poolUsagef("--samples %d: at least one", o.samples)
	}
	if o.memoryMiB < 0 {
		return o, poolUsagef("--memory %d: a size in MiB", o.memoryMiB)
	}
	if o.retries < 0 || o.retries > 100 {
		return o, poolUsagef("--retries %d: from 0 to 100", o.retries)
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{{"--timeout", &o.timeout, g.timeout}, {"--cold-boot-timeout", &o.bootTimeout, g.bootTimeout}, {"--ready-timeout", &o.readyTimeout, g.readyTimeout}} {
		if fs.Changed(d.name[2:]) && *d.v <= 0 {
			return o, poolUsagef("%s %v: a positive duration", d.name, *d.v)
		}
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if fs.Changed("vsock-connect-timeout") {
		switch {
		case o.socket != "":
			return o, poolUsagef("--vsock-connect-timeout is for a daemon of our own; give it to your daemon's voltpool serve")
		case o.vsockConnectTimeout <= 0 || o.vsockConnectTimeout > time.Hour:
			return o, poolUsagef("--vsock-connect-timeout %v: more than 0, at most 1h (volt-vmm's limit)", o.vsockConnectTimeout)
		}
	}
	if o.readyTimeout > time.Hour {
		return o, poolUsagef("--ready-timeout %v: at most 1h (voltpool's limit)", o.readyTimeout)
	}
	if !o.coldBoot && (fs.Changed("cold-boot-samples") || fs.Changed("cold-boot-callers") || fs.Changed("cold-boot-timeout")) {
		return o, poolUsagef("--cold-boot-samples, --cold-boot-callers and --cold-boot-timeout shape the cold-boot arm: not with --cold-boot=false")
	}
	if fs.Changed("cold-boot-samples") && o.bootSamples < 1 {
		return o, poolUsagef("--cold-boot-samples %d: at least one (--cold-boot=false skips the arm)", o.bootSamples)
	}
	if !fs.Changed("cold-boot-samples") {
		o.bootSamples = g.bootSamples
	}
	if fs.Changed("cold-boot-callers") {
		if o.bootCallers, err = parseCallerList("--cold-boot-callers", *bootCallers); err != nil {
			return o, err
		}
		for _, n := range o.bootCallers {
			if !slices.Contains(o.callers, n) {
				return o, poolUsagef("--cold-boot-callers: %d is not one of --callers %s", n, *callers)
			}
		}
	} else if g.bootCallers != nil {
		// The guest's default, kept to the counts this run has: with
		// none of them, the arm runs at the smallest.
		for _, n := range g.bootCallers {
			if slices.Contains(o.callers, n) {
				o.bootCallers = append(o.bootCallers, n)
			}
		}
		if o.bootCallers == nil {
			o.bootCallers = []int{slices.Min(o.callers)}
		}
	}
	o.bootPoll = g.bootPoll
	if o.kernel == "" {
		o.kernel = g.kernel
	}
	if o.initrd == "" {
		o.initrd = g.initrd
	}
	if !fs.Changed("cmdline") {
		o.cmdline = g.cmdline(o.agent)
	}
	if o.memoryMiB == 0 {
		o.memoryMiB = g.memoryMiB
	}
	if o.csvOut != "" {
		if err := hostfile.CheckCreateTarget("--csv", o.csvOut); err != nil {
			return o, poolUsagef("%v", err)
		}
	}
	if f := strings.Fields(*ask); len(f) > 0 {
		o.ask = agent.Request{Args: f}
	}
	if err := o.ask.Validate(); err != nil {
		return o, poolUsagef("--ask %q: %v", *ask, err)
	}
	return o, nil
}

// parseCallerList reads a comma-separated list of caller counts, each
// from 1 to 1024 and given once.
func parseCallerList(flag, list string) ([]int, error) {
	var counts []int
	for _, f := range strings.Split(list, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > 1024 {
			return nil, poolUsagef("%s: %q is not a count from 1 to 1024", flag, f)
		}
		if slices.Contains(counts, n) {
			return nil, poolUsagef("%s: %d given twice", flag, n)
		}
		counts = append(counts, n)
	}
	return counts, nil
}

// templateSpec is the warm template a daemon of our own boots.
func (o poolOptions) templateSpec(name string, abs func(string) string) pc.TemplateSpec {
	spec := pc.TemplateSpec{Name: name, Kernel: abs(o.kernel), Cmdline: o.cmdline, MemoryMiB: o.memoryMiB, CPUs: 1,
		GuestProfile: o.guestProfile, Vsock: o.agent, Warm: o.maxCallers, ReadyTimeout: o.readyTimeout.String()}
	if o.initrd != "" {
		spec.Initrd = abs(o.initrd)
	}
	return spec
}

// coldBootSpec is the cold-boot arm: the same guest, kernel, initramfs,
// command line, memory and profile as the template boot.
func (o poolOptions) coldBootSpec(vmmBin string, abs func(string) string, dir string) *bench.PoolColdBoot {
	if !o.coldBoot {
		return nil
	}
	b := &bench.PoolColdBoot{VMMBin: vmmBin, Kernel: abs(o.kernel), Agent: o.agent, ReadyLine: poolGuests[o.guest].readyLine, Dir: dir,
		Args:    []string{"--memory", strconv.FormatInt(o.memoryMiB, 10) + "M", "--cmdline", o.cmdline},
		Poll:    o.bootPoll,
		Timeout: o.bootTimeout, Samples: o.bootSamples, Callers: o.bootCallers}
	if o.initrd != "" {
		b.Initrd = abs(o.initrd)
	}
	if o.guestProfile != "" {
		b.Args = append(b.Args, "--guest-profile", o.guestProfile)
	}
	return b
}

// cmdPool drives voltpool as a FaaS caller does: acquire → one agent
// request over vsock → answer → release, at each caller count, beside the
// cold-restore path and a cold boot of the same guest.
func cmdPool(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, err := parsePoolArgs(args, stderr)
	switch {
	case errors.Is(err, pflag.ErrHelp):
		return exitOK
	case err != nil:
		fmt.Fprintf(stderr, "voltbench pool: %v\n", strings.TrimPrefix(err.Error(), errPoolUsage.Error()+": "))
		return exitUsage
	}
	root, err := bench.RepoRoot()
	if err != nil && (o.socket == "" || o.coldBoot) {
		fmt.Fprintf(stderr, "voltbench pool: %v\n", err)
		return exitError
	}
	abs := func(p string) string {
		if filepath.IsAbs(p) || root == "" {
			return p
		}
		return filepath.Join(root, p)
	}
	for _, f := range []struct{ what, path string }{{"kernel", o.kernel}, {"initrd", o.initrd}} {
		if f.path == "" || (o.socket != "" && !o.coldBoot) {
			continue
		}
		if err := regularFile(abs(f.path)); err != nil {
			fmt.Fprintf(stderr, "voltbench pool: %s: %v (scripts/setup builds build/guest/)\n", f.what, err)
			return exitError
		}
	}
	work, err := os.MkdirTemp("", "vbpool")
	if err != nil {
		fmt.Fprintf(stderr, "voltbench pool: %v\n", err)
		return exitError
	}
	defer os.RemoveAll(work)
	client := pc.New(o.socket)
	warmName, coldName, primedName := o.template, o.coldTemplate, o.primedTemplate
	if o.socket == "" {
		sock := filepath.Join(work, "pool.sock")
		stop, err := startPoolDaemon(abs(o.voltpool), abs(o.vmmBin), sock, filepath.Join(work, "s"), o.vsockConnectTimeout, stderr)
		if err != nil {
			fmt.Fprintf(stderr, "voltbench pool: %v\n", err)
			return exitError
		}
		defer stop()
		client = pc.New(sock)
		warmName, coldName = "bench", ""
		spec := o.templateSpec(warmName, abs)
		fmt.Fprintf(stderr, "voltbench pool: creating template %s (%s guest, %s, %d MiB, vsock agent %v, %d warm; ready within %v)\n",
			warmName, o.guest, spec.Kernel, o.memoryMiB, o.agent, o.maxCallers, o.readyTimeout)
		tctx, cancel := context.WithTimeout(ctx, o.readyTimeout+time.Minute)
		tpl, err := client.CreateTemplate(tctx, spec)
		if err == nil {
			fmt.Fprintf(stdout, "template boot to ready: %.3f s\n", tpl.BootToReady.Seconds())
		}
		snapshot := filepath.Join(work, "s", "templates", warmName, "snapshot")
		if err == nil && o.coldRestore {
			coldName = "bench-cold"
			_, err = client.CreateTemplate(tctx, pc.TemplateSpec{Name: coldName, FromSnapshot: snapshot, Vsock: o.agent, Warm: 0})
		}
		if err == nil && o.primed {
			primedName = "bench-primed"
			_, err = client.CreateTemplate(tctx, pc.TemplateSpec{Name: primedName, FromSnapshot: snapshot, Vsock: true, Prime: true, Warm: o.maxCallers})
		}
		cancel()
		if err != nil {
			fmt.Fprintf(stderr, "voltbench pool: %v\n", err)
			return exitError
		}
	}
	if !o.coldRestore {
		coldName = ""
	}
	if !o.primed {
		primedName = ""
	}
	spec := bench.PoolSpec{Client: client, Warm: warmName, Cold: coldName, Primed: primedName, Callers: o.callers, Samples: o.samples,
		Ask: o.ask, Agent: o.agent, Retries: o.retries, Timeout: o.timeout, Boot: o.coldBootSpec(abs(o.vmmBin), abs, work)}
	var observers []func(string, int, string, time.Duration)
	samples := &poolSamples{}
	if o.csvOut != "" {
		observers = append(observers, samples.observe)
		defer func() {
			if err := samples.write(o.csvOut); err != nil {
				fmt.Fprintf(stderr, "voltbench pool: %v\n", err)
			}
		}()
	}
	if o.metricsAddr != "" {
		m := bench.NewPoolMetrics()
		observers = append(observers, m.Observe)
		ln, err := net.Listen("tcp", o.metricsAddr)
		if err != nil {
			fmt.Fprintf(stderr, "voltbench pool: metrics: %v\n", err)
			return exitError
		}
		srv := &http.Server{Handler: promhttp.HandlerFor(m.Registry(), promhttp.HandlerOpts{}), ReadHeaderTimeout: 10 * time.Second}
		served := make(chan struct{})
		go func() {
			defer close(served)
			srv.Serve(ln)
		}()
		defer func() {
			srv.Close()
			<-served
		}()
	}
	if len(observers) > 0 {
		spec.Observe = func(arm string, callers int, stage string, d time.Duration) {
			for _, f := range observers {
				f(arm, callers, stage, d)
			}
		}
	}
	total := 0
	for _, n := range o.callers {
		for _, a := range bench.PoolArmRounds(spec, n) {
			total += n * a.Rounds
		}
	}
	if f, ok := stderr.(*os.File); ok {
		if _, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS); err == nil {
			spec.Progress = func(done int) { fmt.Fprintf(stderr, "\rvoltbench pool: %d/%d cycles", done, total) }
		}
	}
	if o.socket != "" {
		fmt.Fprintf(stdout, "templates %s (warm), %q (warm, primed) and %q (cold restore) of the daemon on %s\n", warmName, primedName, coldName, o.socket)
	}
	if o.socket == "" || spec.Boot != nil {
		what := "template and cold boots"
		if o.socket != "" {
			what = "cold boots"
		}
		fmt.Fprintf(stdout, "%s: %s guest, %s", what, o.guest, abs(o.kernel))
		if o.initrd != "" {
			fmt.Fprintf(stdout, " + %s", abs(o.initrd))
		}
		fmt.Fprintf(stdout, ", %d MiB, 1 vCPU, profile %q, cmdline %q\n", o.memoryMiB, o.guestProfile, o.cmdline)
	}
	if o.ask.Args == nil {
		fmt.Fprintln(stdout, "agent request: ping")
	} else {
		fmt.Fprintf(stdout, "agent request: %q\n", o.ask.Args)
	}
	if b := spec.Boot; b != nil {
		fmt.Fprintf(stdout, "cold-boot arm: %s at callers %v, its answer polled every %v\n", bootSamplesText(o), bootCallersText(o), b.Poll)
	}
	fmt.Fprintf(stdout, "load average at start: %s\n", loadAvg())
	rep, err := bench.RunPool(ctx, spec)
	if spec.Progress != nil {
		fmt.Fprintln(stderr)
	}
	if rep != nil {
		if !o.agent {
			fmt.Fprintln(stdout, "no guest agent (--agent=false): first-answer is measured for the cold boot only (its console's ready line)")
		}
		bench.WritePool(stdout, rep)
		fmt.Fprintf(stdout, "load average at end: %s\n", loadAvg())
	}
	if err != nil {
		fmt.Fprintf(stderr, "voltbench pool: %v\n", err)
		return exitError
	}
	// A cycle that failed is in no figure: the run is not a success.
	failed := 0
	if rep != nil {
		for _, c := range rep.Cells {
			failed += c.Errors
		}
	}
	if failed > 0 {
		fmt.Fprintf(stderr, "voltbench pool: %d cycles failed (listed above); their times are in no figure\n", failed)
		return exitError
	}
	return exitOK
}

func bootSamplesText(o poolOptions) string {
	if o.bootSamples == 0 {
		return fmt.Sprintf("%d cycles (--samples)", o.samples)
	}
	return fmt.Sprintf("%d cycles (--cold-boot-samples)", o.bootSamples)
}

func bootCallersText(o poolOptions) string {
	if o.bootCallers == nil {
		return fmt.Sprint(o.callers)
	}
	return fmt.Sprint(o.bootCallers)
}

// poolSamples keeps every stage time of a run for --csv.
type poolSamples struct {
	mu   sync.Mutex
	rows [][]string
}

func (p *poolSamples) observe(arm string, callers int, stage string, d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rows = append(p.rows, []string{arm, strconv.Itoa(callers), stage, strconv.FormatInt(d.Microseconds(), 10)})
}

// write replaces path with the samples: a temporary file beside it,
// renamed into place once complete.
func (p *poolSamples) write(path string) error {
	if err := hostfile.CheckCreateTarget("--csv", path); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("--csv: %w", err)
	}
	defer os.Remove(tmp.Name())
	w := csv.NewWriter(tmp)
	w.Write([]string{"arm", "callers", "stage", "us"})
	p.mu.Lock()
	w.WriteAll(p.rows)
	p.mu.Unlock()
	if err := errors.Join(w.Error(), tmp.Chmod(0o644), tmp.Close()); err != nil {
		return fmt.Errorf("--csv %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("--csv: %w", err)
	}
	return nil
}

// regularFile checks that path names a regular file without opening it:
// a FIFO or a device at a user's path is refused, never waited on.
func regularFile(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s: not a regular file (%s)", path, fi.Mode().Type())
	}
	return nil
}

// poolServeArgs is the voltpool command line of a daemon of our own.
func poolServeArgs(vmm, socket, state string, vsockConnectTimeout time.Duration) []string {
	args := []string{"serve", "--socket", socket, "--state-dir", state, "--vmm", vmm, "--drain-timeout", "0s", "--max-vms", "512"}
	if vsockConnectTimeout > 0 {
		args = append(args, "--vsock-connect-timeout", vsockConnectTimeout.String())
	}
	return args
}

// startPoolDaemon runs voltpool serve for this run; stop ends it (SIGTERM,
// drain 0) and waits.
func startPoolDaemon(voltpool, vmm, socket, state string, vsockConnectTimeout time.Duration, stderr io.Writer) (func(), error) {
	log, err := os.Create(filepath.Join(filepath.Dir(socket), "voltpool.log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(voltpool, poolServeArgs(vmm, socket, state, vsockConnectTimeout)...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, fmt.Errorf("start %s: %w (build it: go build -o bin/voltpool ./cmd/voltpool)", voltpool, err)
	}
	stop := func() {
		cmd.Process.Signal(unix.SIGTERM)
		cmd.Wait()
		log.Close()
	}
	c := pc.New(socket)
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := c.Status(context.Background()); err == nil {
			return stop, nil
		}
		if time.Now().After(deadline) {
			stop()
			b, _ := os.ReadFile(log.Name())
			return nil, fmt.Errorf("voltpool did not answer: %s", strings.TrimSpace(string(b)))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// loadAvg is /proc/loadavg's first three fields: the figures of a shared
// machine mean little without them.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}
