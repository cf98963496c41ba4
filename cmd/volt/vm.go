package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/voltvmm/volt/nspawn/instance"
	"github.com/voltvmm/volt/nspawn/microvm"
)

func vmCommand() *command {
	leaf := func(name, summary string, run func(context.Context, *env, string, []string) int) *command {
		return &command{name: name, summary: summary, run: run}
	}
	return &command{name: "vm", summary: "microVMs (volt-vmm) booting a CAS image as their copy-on-write root disk", sub: []*command{
		leaf("run", "create a VM from an image and boot it", vmRun),
		leaf("ls", "list VMs and their state", vmList),
		leaf("stop", "stop running VMs", vmHelp.stopCommand),
		leaf("rm", "remove stopped VMs and their writes", vmHelp.removeCommand),
		leaf("logs", "print a VM's console", vmHelp.logsCommand),
		leaf("_supervise", "(internal) the supervisor process of one VM, started by run", vmSupervise),
	}}
}

func vmRun(ctx context.Context, e *env, path string, args []string) int {
	f := newWorkloadFlags(e, path, "NAME --image IMAGE --kernel KERNEL [flags] [-- COMMAND [ARG...]]",
		"Creates VM NAME whose root disk is a copy-on-write volume over IMAGE in the CAS (the VM\nreads the image's chunks from the store and writes into its own overlay), and boots it\nwith volt-vmm (with --jail, under volt-jailer): a transient systemd unit where systemd is\nPID 1, a supervised child otherwise. COMMAND is what volt-init runs in the guest\n(volt.run). Returns once the VM's vCPUs run; its console is in volt vm logs, its API\nsocket in volt vm ls --json.")
	img := f.fs.String("image", "", "the image to boot (volt image ls); it needs an init, such as volt-init")
	kernel := f.fs.String("kernel", "", "the guest kernel (build/guest/vmlinux)")
	memory := f.fs.String("memory", "256M", "guest memory (K, M, G; a plain number is MiB)")
	cpus := f.fs.Int("cpus", 1, "vCPUs")
	bridge := f.fs.String("net-bridge", "", "give the guest a virtio-net interface on a TAP attached to this bridge")
	profDef := os.Getenv("VOLT_GUEST_PROFILE")
	profile := f.fs.String("guest-profile", profDef, "volt-vmm's --guest-profile (nested-pvm on nested, software-assisted KVM; default from $VOLT_GUEST_PROFILE)")
	cmdline := f.fs.String("cmdline", "", "more kernel parameters")
	vmmPath := f.fs.String("vmm", "", "volt-vmm to run (default: next to volt, then PATH)")
	vmmFlags := f.fs.StringArray("vmm-flag", nil, "one more volt-vmm flag, as --name or --name=value (repeatable; with --jail, paths in it are paths in the chroot)")
	jail := f.fs.Bool("jail", false, "run volt-vmm under volt-jailer: a chroot of its own, new mount and PID namespaces, an unprivileged uid and gid, no capability")
	jailer := f.fs.String("jailer", "", "with --jail: volt-jailer to run (default: next to volt, then PATH)")
	jailUID := f.fs.Int("jail-uid", 0, fmt.Sprintf("with --jail: the uid volt-vmm runs as (default: a free one of %d-%d)", microvm.DefaultUIDRange.First, microvm.DefaultUIDRange.Last))
	jailGID := f.fs.Int("jail-gid", 0, "with --jail: the gid volt-vmm runs as (default: the uid's number)")
	chrootBase := f.fs.String("chroot-base-dir", "", "with --jail: where chroots are made, as volt-jailer's flag: DIR/volt-vmm/NAME/root (default STATE/jail)")
	wait := f.fs.Bool("wait", false, "wait for the VM to stop, print its console, and exit with volt-vmm's status")
	timeout := f.fs.Duration("start-timeout", time.Minute, "how long to wait for volt-vmm to build the VM")
	pos, cmd, rc := f.parse(e, path, args, 1, 1, true)
	if rc >= 0 {
		return rc
	}
	if *img == "" {
		return usageError(e, path, "--image is required")
	}
	if *kernel == "" {
		return usageError(e, path, "--kernel is required")
	}
	kpath, err := filepath.Abs(*kernel)
	if err != nil {
		return failure(e, path, err)
	}
	mem, err := parseMemory(*memory)
	if err != nil {
		return usageError(e, path, "%v", err)
	}
	spec := microvm.Spec{Name: pos[0], Image: *img, Kernel: kpath, MemoryBytes: mem, CPUs: *cpus, NetBridge: *bridge,
		GuestProfile: *profile, Command: cmd, Cmdline: *cmdline, VMMFlags: *vmmFlags}
	if *vmmPath != "" {
		if spec.VMM, err = filepath.Abs(*vmmPath); err != nil {
			return failure(e, path, err)
		}
	}
	if *jail {
		j := &microvm.Jail{Jailer: *jailer, UID: *jailUID, GID: *jailGID, ChrootBase: *chrootBase}
		if j.Jailer == "" {
			if j.Jailer, err = microvm.FindJailer(); err != nil {
				return failure(e, path, err)
			}
		} else if j.Jailer, err = filepath.Abs(j.Jailer); err != nil {
			return failure(e, path, err)
		}
		if f.fs.Changed("jail-uid") && *jailUID <= 0 {
			return usageError(e, path, "--jail-uid %d: a jailed VMM never runs as root; want 1 or more", *jailUID)
		}
		if f.fs.Changed("jail-gid") && *jailGID <= 0 {
			return usageError(e, path, "--jail-gid %d: want 1 or more", *jailGID)
		}
		if j.ChrootBase != "" {
			if j.ChrootBase, err = filepath.Abs(j.ChrootBase); err != nil {
				return failure(e, path, err)
			}
		}
		spec.Jail = j
	} else {
		for _, name := range []string{"jailer", "jail-uid", "jail-gid", "chroot-base-dir"} {
			if f.fs.Changed(name) {
				return usageError(e, path, "--%s needs --jail", name)
			}
		}
	}
	if err := spec.Validate(); err != nil {
		return usageError(e, path, "%v", err)
	}
	self, err := selfCommand("vm", "_supervise")
	if err != nil {
		return failure(e, path, err)
	}
	m, rc := f.openManager(ctx, e, path, true)
	if rc >= 0 {
		return rc
	}
	defer m.Close()
	rt := microvm.NewRuntime(f.stateDir, f.store, m, self)
	rt.ReadyTimeout = *timeout
	st, err := rt.Run(ctx, spec)
	if err != nil {
		return failure(e, path, err)
	}
	if *wait {
		if err := rt.Logs(ctx, spec.Name, true, e.stdout); err != nil {
			return failure(e, path, err)
		}
		in, err := rt.Inspect(ctx, spec.Name)
		if err != nil {
			return failure(e, path, err)
		}
		if in.Record.ExitCode != nil && !in.State.Live() {
			return *in.Record.ExitCode
		}
		return failure(e, path, fmt.Errorf("%s: %s %s", spec.Name, stateText(in.Status), in.Detail))
	}
	if f.json {
		return printJSON(e, path, st)
	}
	how := fmt.Sprintf("supervisor pid %d", st.Record.Supervisor.PID)
	if st.Record.Unit != "" {
		how = "unit " + st.Record.Unit
	}
	if in, err := rt.Inspect(ctx, spec.Name); err == nil && in.Jail != nil {
		how += fmt.Sprintf("; jailed as uid %d in %s", in.Jail.UID, in.Jail.Chroot)
	}
	fmt.Fprintf(e.stdout, "%s: %s (%s)\n", spec.Name, st.State, how)
	return exitOK
}

func vmRuntime(ctx context.Context, e *env, path string, f *workloadFlags) (*microvm.Runtime, func(), int) {
	m, rc := f.openManager(ctx, e, path, false)
	if rc >= 0 {
		return nil, nil, rc
	}
	return microvm.NewRuntime(f.stateDir, f.store, m, nil), m.Close, -1
}

func vmList(ctx context.Context, e *env, path string, args []string) int {
	f := newWorkloadFlags(e, path, "[flags]", "Lists VMs with their state (from systemd, or checked against the supervisor's lock and\nprocess identity).")
	if _, _, rc := f.parse(e, path, args, 0, 0, false); rc >= 0 {
		return rc
	}
	rt, done, rc := vmRuntime(ctx, e, path, f)
	if rc >= 0 {
		return rc
	}
	defer done()
	infos, err := rt.List(ctx)
	if err != nil {
		return failure(e, path, err)
	}
	if f.json {
		if infos == nil {
			infos = []microvm.Info{}
		}
		return printJSON(e, path, infos)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSTATE\tIMAGE\tSTARTED\tMANAGER\tMEMORY\tCPUS\tWRITTEN\tJAIL")
	for _, in := range infos {
		mgr := in.Record.Manager
		if mgr == "" {
			mgr = "-"
		}
		state := stateText(in.Status)
		if in.Detail != "" && (in.State == instance.StateDead || in.State == instance.StateOrphaned || in.State == instance.StateDamaged) {
			state += ": " + firstLine(in.Detail)
		}
		jail := "-"
		if in.Jail != nil {
			jail = fmt.Sprintf("uid %d", in.Jail.UID)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", in.Name, state, in.Image, formatAge(in.Record.StartedAt), mgr, formatBytes(in.MemoryBytes), in.CPUs, formatBytes(in.OverlayBytes), jail)
	}
	tw.Flush()
	return exitOK
}

func vmSupervise(ctx context.Context, e *env, path string, args []string) int {
	f := newWorkloadFlags(e, path, "--state-dir DIR NAME", "The supervisor of one VM (started by volt vm run).")
	pos, _, rc := f.parse(e, path, args, 1, 1, false)
	if rc >= 0 {
		return rc
	}
	return microvm.Supervise(context.WithoutCancel(ctx), microvm.SuperviseConfig{StateRoot: f.stateDir, Name: pos[0], Stderr: e.stderr})
}
