// Command voltpool is the pool daemon (voltpool serve) and its CLI: it keeps
// VMMs restored from template snapshots paused in advance and hands them out
// as leases, over an HTTP/JSON API on a Unix socket. This file holds flag
// parsing and wiring only; package pool does the work.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/voltvmm/volt/guest/agent"
	"github.com/voltvmm/volt/pool"
	pc "github.com/voltvmm/volt/pool/client"
)

const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

const usageText = `Usage: voltpool COMMAND [flags]   (every command takes --socket PATH, default ` + pc.DefaultSocket + `)

  serve                          run the daemon (--state-dir, --store CAS, --jail, --metrics-listen, ...)
  template create NAME [flags]   boot a guest once, wait until it is ready, snapshot it
                                 (--kernel --initrd|--rootfs --cmdline --memory --cpus --warm N
                                 --vsock --tap NAME --guest-profile), or adopt --from-snapshot DIR
  template ls | rm NAME | warm NAME N
  acquire TEMPLATE [--ttl 60s]   print the lease as JSON: {id, template, vsock_uds, api_sock, expires_at, path}
  release ID                     end a lease (its VMM stops)
  renew ID --ttl D               extend a lease to D from now
  ls                             list the live leases
  status                         per template: warm, leased, target, restores, failures
  run TEMPLATE [--ttl] [--timeout] -- CMD [ARG...]
                                 acquire, run CMD through the guest agent over vsock, print its
                                 output, release; exit with CMD's status
`

func main() {
	ctx, cancel := signal.NotifyContext(context.Background(), unix.SIGINT, unix.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	cancel()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usageText)
		return exitUsage
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "serve":
		return cmdServe(ctx, rest, stderr)
	case "template":
		return cmdTemplate(ctx, rest, stdout, stderr)
	case "acquire":
		return cmdAcquire(ctx, rest, stdout, stderr)
	case "release":
		return cmdRelease(ctx, rest, stdout, stderr)
	case "renew":
		return cmdRenew(ctx, rest, stdout, stderr)
	case "ls":
		return cmdLs(ctx, rest, stdout, stderr)
	case "status":
		return cmdStatus(ctx, rest, stdout, stderr)
	case "run":
		return cmdRun(ctx, rest, stdout, stderr)
	case "help", "--help", "-h":
		fmt.Fprint(stdout, usageText)
		return exitOK
	}
	fmt.Fprintf(stderr, "voltpool: unknown command %q\n%s", cmd, usageText)
	return exitUsage
}

// flags returns a flag set with --socket.
func flags(name string, stderr io.Writer) (*pflag.FlagSet, *string) {
	fs := pflag.NewFlagSet("voltpool "+name, pflag.ContinueOnError)
	fs.SetOutput(stderr)
	socket := fs.String("socket", envOr("VOLTPOOL_SOCKET", pc.DefaultSocket), "the daemon's API socket ($VOLTPOOL_SOCKET)")
	return fs, socket
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func parse(fs *pflag.FlagSet, args []string, nargs int, what string) ([]string, int) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil, exitOK
		}
		fmt.Fprintf(fs.Output(), "%s: %v\n", fs.Name(), err)
		return nil, exitUsage
	}
	if nargs >= 0 && fs.NArg() != nargs {
		fmt.Fprintf(fs.Output(), "%s: want %s\n", fs.Name(), what)
		return nil, exitUsage
	}
	return fs.Args(), -1
}

func fail(stderr io.Writer, err error) int {
	fmt.Fprintf(stderr, "voltpool: %v\n", err)
	return exitError
}

func cmdServe(ctx context.Context, args []string, stderr io.Writer) int {
	fs, socket := flags("serve", stderr)
	stateDir := fs.String("state-dir", "/var/lib/volt/pool", "templates, VM records and sockets")
	store := fs.String("store", "", "keep the templates' memory in this CAS store (e.g. /var/lib/volt/cas), mapped by every clone from its chunks; default: flat files under --state-dir")
	metrics := fs.String("metrics-listen", "", "serve Prometheus metrics on this address (e.g. 127.0.0.1:9465)")
	vmm := fs.String("vmm", "", "volt-vmm binary (default: beside voltpool, then $PATH)")
	snapTool := fs.String("volt-snapshot", "", "volt-snapshot binary, for --store and --jail (default: beside volt-vmm, beside voltpool, then $PATH)")
	jail := fs.Bool("jail", false, "start every VMM through volt-jailer: a chroot under --state-dir, new mount and PID namespaces, a uid of its own")
	jailer := fs.String("jailer", "", "volt-jailer binary (default: beside voltpool, then $PATH)")
	uidRange := fs.String("jail-uid-range", pool.DefaultUIDRange.String(), "uids (and gids) given to jailed VMMs, one per live VMM: FIRST-LAST, used by no account or subordinate id range")
	jailCgroups := fs.StringArray("jail-cgroup", nil, "cgroup setting of every jailed VMM, FILE=VALUE, as volt-jailer --cgroup (repeatable)")
	refill := fs.Int("refill-concurrency", 2, "warm restores in flight at most")
	maxVMs := fs.Int("max-vms", 256, "VMMs at most, warm and leased")
	drain := fs.Duration("drain-timeout", 30*time.Second, "on shutdown, how long to wait for leases to be released before ending them")
	defTTL := fs.Duration("default-ttl", 60*time.Second, "lease TTL when an acquire names none")
	maxTTL := fs.Duration("max-ttl", 24*time.Hour, "longest lease TTL")
	group := fs.String("socket-group", "", "group owning the API socket (mode 0660): its members may acquire VMs")
	verbose := fs.Bool("verbose", false, "log at debug level")
	vsockConnect := fs.Duration("vsock-connect-timeout", 0, "give every VMM volt-vmm --vsock-connect-timeout: how long a caller's CONNECT waits for the guest's answer (default: volt-vmm's, Firecracker's 2s; more for Linux guests on emulated or crowded cores)")
	if _, code := parse(fs, args, 0, "no arguments"); code >= 0 {
		return code
	}
	bin, err := findBinary(*vmm, "volt-vmm", "--vmm")
	if err != nil {
		return fail(stderr, err)
	}
	cfg := pool.Config{StateDir: *stateDir, StoreDir: *store, VMMBin: bin, RefillConcurrency: *refill,
		MaxVMs: *maxVMs, DefaultTTL: *defTTL, MaxTTL: *maxTTL, VsockConnectTimeout: *vsockConnect}
	if fs.Changed("vsock-connect-timeout") && (*vsockConnect <= 0 || *vsockConnect > pool.MaxVsockConnectTimeout) {
		fmt.Fprintf(stderr, "voltpool serve: --vsock-connect-timeout %v: more than 0 and at most %v\n", *vsockConnect, pool.MaxVsockConnectTimeout)
		return exitUsage
	}
	if *store != "" || *jail || *snapTool != "" {
		// volt-snapshot is built with volt-vmm: look beside it first.
		flag := *snapTool
		if flag == "" {
			if p := filepath.Join(filepath.Dir(bin), "volt-snapshot"); isExecutable(p) {
				flag = p
			}
		}
		if cfg.SnapshotTool, err = findBinary(flag, "volt-snapshot", "--volt-snapshot"); err != nil {
			return fail(stderr, err)
		}
	}
	if *jail {
		j := &pool.JailConfig{Cgroups: *jailCgroups}
		if j.Jailer, err = findBinary(*jailer, "volt-jailer", "--jailer"); err != nil {
			return fail(stderr, err)
		}
		if j.UIDs, err = pool.ParseUIDRange(*uidRange); err != nil {
			fmt.Fprintf(stderr, "voltpool serve: --jail-uid-range: %v\n", err)
			return exitUsage
		}
		cfg.Jail = j
	} else if fs.Changed("jailer") || fs.Changed("jail-uid-range") || fs.Changed("jail-cgroup") {
		fmt.Fprintln(stderr, "voltpool serve: --jailer, --jail-uid-range and --jail-cgroup need --jail")
		return exitUsage
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	cfg.Log = log
	err = pool.Serve(ctx, cfg, pool.ServerConfig{Socket: *socket, SocketGroup: *group, MetricsListen: *metrics, Drain: *drain})
	if err != nil {
		return fail(stderr, err)
	}
	return exitOK
}

// findBinary resolves a helper binary: the flag's path, or name beside
// voltpool, then in $PATH; always absolute (volt-jailer needs its
// --exec-file so).
func findBinary(flagValue, name, flagName string) (string, error) {
	if flagValue != "" {
		p, err := filepath.Abs(flagValue)
		if err != nil {
			return "", err
		}
		if !isExecutable(p) {
			return "", fmt.Errorf("%s %s: not an executable regular file", flagName, p)
		}
		return p, nil
	}
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), name)
		if isExecutable(p) {
			return p, nil
		}
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%s not found beside voltpool nor in $PATH: give %s PATH", name, flagName)
	}
	return filepath.Abs(p)
}

func isExecutable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular() && st.Mode().Perm()&0o111 != 0
}

func cmdTemplate(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, "voltpool template: want create, ls, rm or warm\n")
		return exitUsage
	}
	switch args[0] {
	case "create":
		return cmdTemplateCreate(ctx, args[1:], stdout, stderr)
	case "ls":
		fs, socket := flags("template ls", stderr)
		asJSON := fs.Bool("json", false, "print JSON")
		if _, code := parse(fs, args[1:], 0, "no arguments"); code >= 0 {
			return code
		}
		ts, err := pc.New(*socket).Templates(ctx)
		if err != nil {
			return fail(stderr, err)
		}
		if *asJSON {
			return printJSON(stdout, ts)
		}
		tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tWARM\tMEMORY\tVSOCK\tPRIME\tNETWORK\tCREATED\tBOOT→READY")
		for _, t := range ts {
			net := "-"
			if t.Network != nil {
				net = t.Network.HostDevName
			}
			ready := "-"
			if t.BootToReady > 0 {
				ready = t.BootToReady.Round(time.Millisecond).String()
			}
			fmt.Fprintf(tw, "%s\t%d\t%d MiB\t%v\t%v\t%s\t%s\t%s\n", t.Name, t.Warm, t.MemBytes>>20, t.Vsock, t.Prime, net, t.CreatedAt.Format(time.RFC3339), ready)
		}
		tw.Flush()
		return exitOK
	case "rm":
		fs, socket := flags("template rm", stderr)
		rest, code := parse(fs, args[1:], 1, "NAME")
		if code >= 0 {
			return code
		}
		if err := pc.New(*socket).RemoveTemplate(ctx, rest[0]); err != nil {
			return fail(stderr, err)
		}
		return exitOK
	case "warm":
		fs, socket := flags("template warm", stderr)
		rest, code := parse(fs, args[1:], 2, "NAME N")
		if code >= 0 {
			return code
		}
		n, err := strconv.Atoi(rest[1])
		if err != nil {
			fmt.Fprintf(stderr, "voltpool template warm: %q is not a number\n", rest[1])
			return exitUsage
		}
		t, err := pc.New(*socket).SetWarm(ctx, rest[0], n)
		if err != nil {
			return fail(stderr, err)
		}
		return printJSON(stdout, t)
	}
	fmt.Fprintf(stderr, "voltpool template: unknown subcommand %q (create, ls, rm, warm)\n", args[0])
	return exitUsage
}

func cmdTemplateCreate(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs, socket := flags("template create", stderr)
	var spec pc.TemplateSpec
	fs.StringVar(&spec.Kernel, "kernel", "", "guest kernel")
	fs.StringVar(&spec.Initrd, "initrd", "", "initial ramdisk")
	fs.StringVar(&spec.Rootfs, "rootfs", "", "root disk image (virtio-blk)")
	fs.StringVar(&spec.Cmdline, "cmdline", "", "kernel command line (volt-vmm's default if empty)")
	memory := fs.String("memory", "128M", "guest memory (K, M, G suffixes; a plain number is MiB)")
	fs.Int64Var(&spec.CPUs, "cpus", 1, "vCPUs")
	fs.IntVar(&spec.Warm, "warm", 1, "VMMs kept restored and paused")
	fs.BoolVar(&spec.Prime, "prime", false, "resume each warm VMM once, ping its agent and pause it again before it counts as warm (needs --vsock)")
	fs.StringVar(&spec.GuestProfile, "guest-profile", "", "volt-vmm --guest-profile for the template boot (nested-pvm on nested KVM)")
	fs.BoolVar(&spec.Vsock, "vsock", false, "give the guest a vsock device (CID 3); readiness is then the agent answering on port "+strconv.Itoa(agent.Port))
	tap := fs.String("tap", "", "the guest's network: a TAP of this name, one per clone in its own network namespace")
	mac := fs.String("mac", "", "the guest's MAC address (with --tap)")
	fs.StringVar(&spec.FromSnapshot, "from-snapshot", "", "adopt an existing snapshot directory (vm.state, vm.mem) instead of booting")
	fs.StringVar(&spec.ReadyTimeout, "ready-timeout", "60s", "how long the template boot may take to be ready")
	rest, code := parse(fs, args, 1, "NAME")
	if code >= 0 {
		return code
	}
	spec.Name = rest[0]
	if spec.FromSnapshot == "" {
		mib, err := parseMiB(*memory)
		if err != nil {
			fmt.Fprintf(stderr, "voltpool template create: --memory: %v\n", err)
			return exitUsage
		}
		spec.MemoryMiB = mib
	} else {
		spec.CPUs = 0
		if fs.Changed("memory") || fs.Changed("cpus") {
			fmt.Fprintln(stderr, "voltpool template create: --memory and --cpus come from the snapshot with --from-snapshot")
			return exitUsage
		}
	}
	for _, p := range []*string{&spec.Kernel, &spec.Initrd, &spec.Rootfs, &spec.FromSnapshot} {
		if *p != "" {
			abs, err := filepath.Abs(*p)
			if err != nil {
				return fail(stderr, err)
			}
			*p = abs
		}
	}
	if *tap != "" {
		spec.Network = &pc.Network{IfaceID: "eth0", HostDevName: *tap, GuestMAC: *mac}
	}
	t, err := pc.New(*socket).CreateTemplate(ctx, spec)
	if err != nil {
		return fail(stderr, err)
	}
	return printJSON(stdout, t)
}

func parseMiB(s string) (int64, error) {
	mult := int64(1)
	num := s
	switch {
	case strings.HasSuffix(s, "K"):
		num, mult = s[:len(s)-1], -1024
	case strings.HasSuffix(s, "M"):
		num = s[:len(s)-1]
	case strings.HasSuffix(s, "G"):
		num, mult = s[:len(s)-1], 1024
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%q is not a size such as 128M or 1G", s)
	}
	if mult < 0 {
		if n%1024 != 0 {
			return 0, fmt.Errorf("%q is not a whole number of MiB", s)
		}
		return n / 1024, nil
	}
	return n * mult, nil
}

func printJSON(w io.Writer, v any) int {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return exitError
	}
	return exitOK
}

func cmdAcquire(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs, socket := flags("acquire", stderr)
	ttl := fs.Duration("ttl", 0, "lease time (default: the daemon's, 60s)")
	rest, code := parse(fs, args, 1, "TEMPLATE")
	if code >= 0 {
		return code
	}
	l, err := pc.New(*socket).Acquire(ctx, rest[0], *ttl)
	if err != nil {
		return fail(stderr, err)
	}
	return printJSON(stdout, l)
}

func cmdRelease(ctx context.Context, args []string, _, stderr io.Writer) int {
	fs, socket := flags("release", stderr)
	rest, code := parse(fs, args, 1, "ID")
	if code >= 0 {
		return code
	}
	if err := pc.New(*socket).Release(ctx, rest[0]); err != nil {
		return fail(stderr, err)
	}
	return exitOK
}

func cmdRenew(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs, socket := flags("renew", stderr)
	ttl := fs.Duration("ttl", 0, "new lease time from now (required)")
	rest, code := parse(fs, args, 1, "ID")
	if code >= 0 {
		return code
	}
	if *ttl == 0 {
		fmt.Fprintln(stderr, "voltpool renew: --ttl is required")
		return exitUsage
	}
	l, err := pc.New(*socket).Renew(ctx, rest[0], *ttl)
	if err != nil {
		return fail(stderr, err)
	}
	return printJSON(stdout, l)
}

func cmdLs(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs, socket := flags("ls", stderr)
	asJSON := fs.Bool("json", false, "print JSON")
	if _, code := parse(fs, args, 0, "no arguments"); code >= 0 {
		return code
	}
	ls, err := pc.New(*socket).Leases(ctx)
	if err != nil {
		return fail(stderr, err)
	}
	if *asJSON {
		return printJSON(stdout, ls)
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tTEMPLATE\tPATH\tPID\tUID\tEXPIRES IN\tVSOCK")
	for _, l := range ls {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\t%s\n", l.ID, l.Template, l.Path, l.PID, l.OwnerUID, time.Until(l.ExpiresAt).Round(time.Second), l.VsockUDS)
	}
	tw.Flush()
	return exitOK
}

func cmdStatus(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs, socket := flags("status", stderr)
	asJSON := fs.Bool("json", false, "print JSON")
	if _, code := parse(fs, args, 0, "no arguments"); code >= 0 {
		return code
	}
	st, err := pc.New(*socket).Status(ctx)
	if err != nil {
		return fail(stderr, err)
	}
	if *asJSON {
		return printJSON(stdout, st)
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "TEMPLATE\tWARM\tSTARTING\tLEASED\tTARGET\tRESTORES\tCOLD\tFAILURES\tDEATHS\tEXPIRIES\t")
	for _, t := range st.Templates {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t\n", t.Template, t.Warm, t.Starting, t.Leased, t.Target, t.Restores, t.ColdPaths, t.Failures, t.Deaths, t.Expiries)
	}
	tw.Flush()
	fmt.Fprintf(stdout, "%d VMMs", st.VMMs)
	if st.Draining {
		fmt.Fprint(stdout, ", draining")
	}
	fmt.Fprintln(stdout)
	return exitOK
}

func cmdRun(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs, socket := flags("run", stderr)
	ttl := fs.Duration("ttl", 0, "lease time (default: the daemon's)")
	timeout := fs.Duration("timeout", 0, "the command's time limit in the guest (default: the agent's, 5m)")
	quiet := fs.Bool("quiet", false, "do not print the exit status line on stderr")
	rest, code := parse(fs, args, -1, "")
	if code >= 0 {
		return code
	}
	// Flags may stand anywhere before "--"; the command is everything
	// after it, so its own flags are never read as ours.
	if len(rest) == 0 || fs.ArgsLenAtDash() != 1 {
		if len(rest) == 1 && fs.ArgsLenAtDash() == 1 {
			fmt.Fprintln(stderr, "voltpool run: no command after --")
		} else {
			fmt.Fprintln(stderr, "voltpool run: want TEMPLATE -- CMD [ARG...]")
		}
		return exitUsage
	}
	template, argv := rest[0], rest[1:]
	if len(argv) == 0 {
		fmt.Fprintln(stderr, "voltpool run: no command after --")
		return exitUsage
	}
	ac := &agent.Client{Stdout: stdout, Stderr: stderr}
	res, lease, times, err := pc.New(*socket).Run(ctx, template, *ttl, agent.Request{Args: argv, Timeout: *timeout}, ac)
	if err != nil {
		return fail(stderr, err)
	}
	if !*quiet {
		fmt.Fprintf(stderr, "voltpool: %s (lease %s, %s: acquire %v, answer %v, release %v)\n", res.Status, lease.ID, lease.Path,
			times.Acquire.Round(time.Microsecond), times.FirstAnswer.Round(time.Microsecond), times.Release.Round(time.Microsecond))
	}
	switch res.Kind {
	case agent.Exited:
		return int(res.Code)
	case agent.Signaled:
		return 128 + int(res.Code)
	case agent.TimedOut:
		return 124 // as timeout(1)
	}
	return 127 // not run
}
