package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/voltvmm/volt/bench"
	"github.com/voltvmm/volt/guest/agent"
	pc "github.com/voltvmm/volt/pool/client"
)

// cmdPool drives voltpool as a FaaS caller does: acquire → one agent
// request over vsock → answer → release, at each caller count, beside the
// cold-restore path and a cold boot of the same guest.
func cmdPool(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := pflag.NewFlagSet("voltbench pool", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	socket := fs.String("socket", "", "use the voltpool daemon on this socket (with --template); default: start one of our own")
	template := fs.String("template", "", "with --socket: the warm template (its warm target at least the largest --callers)")
	coldTemplate := fs.String("cold-template", "", "with --socket: a template of the same snapshot with none warm (cold-restore arm)")
	voltpool := fs.String("voltpool", "bin/voltpool", "voltpool binary, for a daemon of our own")
	vmmBin := fs.String("vmm-bin", bench.DefaultVMMBin, "volt-vmm binary")
	kernel := fs.String("kernel", bench.DefaultProbe, "guest kernel (the probe)")
	memory := fs.Int64("memory", 64, "guest memory, MiB")
	useAgent := fs.Bool("agent", true, "the guest has a vsock agent (the probe with probe.agent): first-answer is its answer over vsock")
	callers := fs.String("callers", "1,8,64", "concurrent callers, comma-separated")
	samples := fs.Int("samples", 100, "cycles per arm and caller count (rounded up to whole rounds of all callers; p99 needs 100)")
	coldBoot := fs.Bool("cold-boot", true, "add the cold-boot arm (a fresh volt-vmm per cycle)")
	coldRestore := fs.Bool("cold-restore", true, "add the cold-restore arm (a template with no warm VMs)")
	metricsAddr := fs.String("metrics-listen", "", "serve Prometheus metrics of the run on this address")
	timeout := fs.Duration("timeout", 30*time.Second, "per-cycle limit")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	var counts []int
	maxCallers := 0
	for _, f := range strings.Split(*callers, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > 1024 {
			fmt.Fprintf(stderr, "voltbench pool: --callers: %q is not a count from 1 to 1024\n", f)
			return exitUsage
		}
		counts = append(counts, n)
		maxCallers = max(maxCallers, n)
	}
	if *socket != "" && *template == "" {
		fmt.Fprintln(stderr, "voltbench pool: --socket needs --template")
		return exitUsage
	}
	root, err := bench.RepoRoot()
	if err != nil && (*socket == "" || *coldBoot) {
		fmt.Fprintf(stderr, "voltbench pool: %v\n", err)
		return exitError
	}
	abs := func(p string) string {
		if filepath.IsAbs(p) || root == "" {
			return p
		}
		return filepath.Join(root, p)
	}
	work, err := os.MkdirTemp("", "vbpool")
	if err != nil {
		fmt.Fprintf(stderr, "voltbench pool: %v\n", err)
		return exitError
	}
	defer os.RemoveAll(work)
	cmdline := "console=ttyS0 reboot=k panic=1"
	if *useAgent {
		cmdline += " probe.agent"
	}
	client := pc.New(*socket)
	warmName, coldName := *template, *coldTemplate
	if *socket == "" {
		sock := filepath.Join(work, "pool.sock")
		stop, err := startPoolDaemon(abs(*voltpool), abs(*vmmBin), sock, filepath.Join(work, "s"), stderr)
		if err != nil {
			fmt.Fprintf(stderr, "voltbench pool: %v\n", err)
			return exitError
		}
		defer stop()
		client = pc.New(sock)
		warmName, coldName = "bench", ""
		fmt.Fprintf(stderr, "voltbench pool: creating template %s (%s, %d MiB, vsock agent %v, %d warm)\n", warmName, *kernel, *memory, *useAgent, maxCallers)
		tctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		_, err = client.CreateTemplate(tctx, pc.TemplateSpec{Name: warmName, Kernel: abs(*kernel), Cmdline: cmdline, MemoryMiB: *memory, CPUs: 1, Vsock: *useAgent, Warm: maxCallers})
		if err == nil && *coldRestore {
			coldName = "bench-cold"
			_, err = client.CreateTemplate(tctx, pc.TemplateSpec{Name: coldName, FromSnapshot: filepath.Join(work, "s", "templates", warmName, "snapshot"), Vsock: *useAgent, Warm: 0})
		}
		cancel()
		if err != nil {
			fmt.Fprintf(stderr, "voltbench pool: %v\n", err)
			return exitError
		}
	}
	if !*coldRestore {
		coldName = ""
	}
	spec := bench.PoolSpec{Client: client, Warm: warmName, Cold: coldName, Callers: counts, Samples: *samples,
		Ask: agent.Request{Args: []string{"echo", "answer"}}, Agent: *useAgent, Timeout: *timeout}
	if *coldBoot {
		spec.Boot = &bench.PoolColdBoot{VMMBin: abs(*vmmBin), Kernel: abs(*kernel), Agent: *useAgent, ReadyLine: "volt-probe: ready", Dir: work,
			Args: []string{"--memory", strconv.FormatInt(*memory, 10) + "M", "--cmdline", cmdline}}
	}
	if *metricsAddr != "" {
		m := bench.NewPoolMetrics()
		spec.Observe = m.Observe
		ln, err := net.Listen("tcp", *metricsAddr)
		if err != nil {
			fmt.Fprintf(stderr, "voltbench pool: metrics: %v\n", err)
			return exitError
		}
		srv := &http.Server{Handler: promhttp.HandlerFor(m.Registry(), promhttp.HandlerOpts{}), ReadHeaderTimeout: 10 * time.Second}
		go srv.Serve(ln)
		defer srv.Close()
	}
	total := 0
	for _, n := range counts {
		arms := 1
		if spec.Cold != "" {
			arms++
		}
		if spec.Boot != nil {
			arms++
		}
		total += n * bench.PoolRounds(*samples, n) * arms
	}
	if f, ok := stderr.(*os.File); ok {
		if _, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS); err == nil {
			spec.Progress = func(done int) { fmt.Fprintf(stderr, "\rvoltbench pool: %d/%d cycles", done, total) }
		}
	}
	fmt.Fprintf(stdout, "load average at start: %s\n", loadAvg())
	rep, err := bench.RunPool(ctx, spec)
	if spec.Progress != nil {
		fmt.Fprintln(stderr)
	}
	if rep != nil {
		if !*useAgent {
			fmt.Fprintln(stdout, "no guest agent (--agent=false): first-answer is measured for the cold boot only (its console's ready line)")
		}
		bench.WritePool(stdout, rep)
		fmt.Fprintf(stdout, "load average at end: %s\n", loadAvg())
	}
	if err != nil {
		fmt.Fprintf(stderr, "voltbench pool: %v\n", err)
		return exitError
	}
	return exitOK
}

// startPoolDaemon runs voltpool serve for this run; stop ends it (SIGTERM,
// drain 0) and waits.
func startPoolDaemon(voltpool, vmm, socket, state string, stderr io.Writer) (func(), error) {
	log, err := os.Create(filepath.Join(filepath.Dir(socket), "voltpool.log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(voltpool, "serve", "--socket", socket, "--state-dir", state, "--vmm", vmm, "--drain-timeout", "0s", "--max-vms", "512")
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
