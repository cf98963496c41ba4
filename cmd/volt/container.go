package main

import (
	"context"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/voltvmm/volt/nspawn"
	"github.com/voltvmm/volt/nspawn/instance"
)

func containerCommand() *command {
	leaf := func(name, summary string, run func(context.Context, *env, string, []string) int) *command {
		return &command{name: name, summary: summary, run: run}
	}
	return &command{name: "container", summary: "systemd-nspawn containers over a copy-on-write view of a CAS image", sub: []*command{
		leaf("run", "create a container from an image and start its command", containerRun),
		leaf("ls", "list containers and their state", containerList),
		leaf("stop", "stop a running container", containerHelp.stopCommand),
		leaf("rm", "remove stopped containers and their writes", containerHelp.removeCommand),
		leaf("logs", "print a container's output", containerHelp.logsCommand),
		leaf("_supervise", "(internal) the supervisor process of one container, started by run", containerSupervise),
	}}
}

func containerRun(ctx context.Context, e *env, path string, args []string) int {
	f := newWorkloadFlags(e, path, "NAME --image IMAGE [flags] -- COMMAND [ARG...]",
		"Creates container NAME over a copy-on-write view of IMAGE (no copy of the image) and runs\nCOMMAND in it under systemd-nspawn, as a transient systemd unit where systemd is PID 1 and\nas a supervised child otherwise. Returns once COMMAND runs (--wait: once it ends, with its\nexit status). User namespaces, a private network, dropped capabilities and a seccomp\nfilter are the defaults: see docs/containers.md.")
	img := f.fs.String("image", "", "the image to run (volt image ls)")
	users := f.fs.String("private-users", nspawn.UsersPick, "user namespace: pick (root inside is an unprivileged host UID), identity, or no")
	f.fs.Lookup("private-users").NoOptDefVal = nspawn.UsersPick
	network := f.fs.String("network", nspawn.NetNone, "none (loopback only), veth, bridge=BRIDGE or host")
	binds := f.fs.StringArray("bind", nil, "SOURCE:TARGET[:ro]: a host path inside the container (repeatable)")
	memory := f.fs.String("memory", "", "memory limit (K, M, G; a plain number is MiB)")
	cpus := f.fs.String("cpus", "", "CPU limit as a number of CPUs (0.5, 1, 2)")
	caps := f.fs.StringArray("cap-add", nil, "grant a capability volt drops by default, such as CAP_NET_RAW (repeatable)")
	envs := f.fs.StringArray("env", nil, "NAME=VALUE in the command's environment (repeatable)")
	nnp := f.fs.Bool("no-new-privileges", false, "setuid programs do not raise privileges (PR_SET_NO_NEW_PRIVS)")
	wait := f.fs.Bool("wait", false, "wait for the command to end, print its output, and exit with its status")
	timeout := f.fs.Duration("start-timeout", time.Minute, "how long to wait for the container to start")
	pos, cmd, rc := f.parse(e, path, args, 1, 1, true)
	if rc >= 0 {
		return rc
	}
	if *img == "" {
		return usageError(e, path, "--image is required")
	}
	if len(cmd) == 0 {
		return usageError(e, path, "no command: give it after --, e.g. -- /bin/sh -c 'echo hello'")
	}
	spec := nspawn.Spec{Name: pos[0], Image: *img, Command: cmd, PrivateUsers: *users, Capabilities: *caps, Env: *envs, NoNewPrivileges: *nnp}
	var err error
	if spec.Network, err = nspawn.ParseNetwork(*network); err != nil {
		return usageError(e, path, "%v", err)
	}
	for _, b := range *binds {
		bd, err := nspawn.ParseBind(b)
		if err != nil {
			return usageError(e, path, "%v", err)
		}
		spec.Binds = append(spec.Binds, bd)
	}
	if spec.Limits.MemoryBytes, err = parseMemory(*memory); err != nil {
		return usageError(e, path, "%v", err)
	}
	if spec.Limits.CPUs, err = parseCPUs(*cpus); err != nil {
		return usageError(e, path, "%v", err)
	}
	if err := spec.Validate(); err != nil {
		return usageError(e, path, "%v", err)
	}
	self, err := selfCommand("container", "_supervise")
	if err != nil {
		return failure(e, path, err)
	}
	m, rc := f.openManager(ctx, e, path, true)
	if rc >= 0 {
		return rc
	}
	defer m.Close()
	rt := nspawn.NewRuntime(f.stateDir, f.store, m, self)
	rt.ReadyTimeout = *timeout
	st, err := rt.Run(ctx, spec)
	if err != nil {
		return failure(e, path, err)
	}
	if *wait {
		return waitContainer(ctx, e, path, rt, spec.Name)
	}
	if f.json {
		return printJSON(e, path, st)
	}
	how := fmt.Sprintf("supervisor pid %d", st.Record.Supervisor.PID)
	if st.Record.Unit != "" {
		how = "unit " + st.Record.Unit
	}
	fmt.Fprintf(e.stdout, "%s: %s (%s)\n", spec.Name, st.State, how)
	return exitOK
}

// waitContainer follows the log until the container ends and exits with
// its status.
func waitContainer(ctx context.Context, e *env, path string, rt *nspawn.Runtime, name string) int {
	if err := rt.Logs(ctx, name, true, e.stdout); err != nil {
		return failure(e, path, err)
	}
	in, err := rt.Inspect(ctx, name)
	if err != nil {
		return failure(e, path, err)
	}
	switch {
	case in.State.Live():
		return failure(e, path, fmt.Errorf("interrupted; %s is still %s", name, in.State))
	case in.Record.ExitCode != nil:
		return *in.Record.ExitCode
	}
	return failure(e, path, fmt.Errorf("%s: %s %s", name, stateText(in.Status), in.Detail))
}

func containerList(ctx context.Context, e *env, path string, args []string) int {
	f := newWorkloadFlags(e, path, "[flags]", "Lists containers with their state, read from systemd for units it runs, and checked\nagainst the supervisor's lock and process identity otherwise: a container whose\nsupervisor died shows as dead (or orphaned if its processes live on).")
	if _, _, rc := f.parse(e, path, args, 0, 0, false); rc >= 0 {
		return rc
	}
	m, rc := f.openManager(ctx, e, path, false)
	if rc >= 0 {
		return rc
	}
	defer m.Close()
	rt := nspawn.NewRuntime(f.stateDir, f.store, m, nil)
	infos, err := rt.List(ctx)
	if err != nil {
		return failure(e, path, err)
	}
	if f.json {
		if infos == nil {
			infos = []nspawn.Info{}
		}
		return printJSON(e, path, infos)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSTATE\tIMAGE\tSTARTED\tMANAGER\tWRITTEN\tCOMMAND")
	for _, in := range infos {
		mgr := in.Record.Manager
		if mgr == "" {
			mgr = "-"
		}
		state := stateText(in.Status)
		if in.Detail != "" && (in.State == instance.StateDead || in.State == instance.StateOrphaned || in.State == instance.StateDamaged) {
			state += ": " + firstLine(in.Detail)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", in.Name, state, in.Image, formatAge(in.Record.StartedAt), mgr, formatBytes(in.OverlayBytes), truncateText(nspawn.ShellQuote(in.Command), 40))
	}
	tw.Flush()
	return exitOK
}

func truncateText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-3] + "..."
}

// containerSupervise is the supervisor: volt container run starts it as a
// unit or a child; people do not run it.
func containerSupervise(ctx context.Context, e *env, path string, args []string) int {
	f := newWorkloadFlags(e, path, "--state-dir DIR NAME", "The supervisor of one container (started by volt container run).")
	pos, _, rc := f.parse(e, path, args, 1, 1, false)
	if rc >= 0 {
		return rc
	}
	if os.Getenv("NOTIFY_SOCKET") == "" && os.Getenv(instance.EnvManager) == "" {
		fmt.Fprintf(e.stderr, "%s: started by hand: nobody waits for it (volt container run starts supervisors)\n", path)
	}
	// The supervisor handles SIGTERM itself (a stop); main's context would
	// turn it into a cancellation of everything.
	return nspawn.Supervise(context.WithoutCancel(ctx), nspawn.SuperviseConfig{StateRoot: f.stateDir, Name: pos[0], Stderr: e.stderr})
}
