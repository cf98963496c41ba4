// Command volt-jailer starts volt-vmm confined: a cgroup, a chroot of its
// own in new mount and PID namespaces, an unprivileged uid and gid and no
// capability (see package jailer and docs/security.md). Its flags follow
// Firecracker's jailer.
//
//	volt-jailer --id ID --exec-file /usr/bin/volt-vmm --uid UID --gid GID
//	    [--chroot-base-dir /srv/jailer] [--netns /var/run/netns/NAME]
//	    [--cgroup-version 1|2] [--cgroup FILE=VALUE]... [--parent-cgroup PATH]
//	    [--resource-limit fsize=N|no-file=N]... [--ro-bind HOST[:JAIL]]...
//	    [--rw-bind HOST[:JAIL]]... [--copy-exec-file] -- [volt-vmm arguments]
//
// Exit status: volt-vmm's; 128+N if signal N killed it; 1 if the jail
// could not be built (the message says which step); 2 for bad usage.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/voltvmm/volt/jailer"
)

// startUs is taken as early as the jailer's own code runs: volt-vmm's boot
// timeline starts here (--start-time-us).
var startUs = jailer.MonotonicMicros()

func main() {
	if len(os.Args) > 1 && os.Args[1] == jailer.ChildArg {
		os.Exit(jailer.Child())
	}
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	if err := jailer.CloseInherited(); err != nil {
		fmt.Fprintf(os.Stderr, "volt-jailer: %v\n", err)
		return 1
	}
	c, code := parse(args)
	if code >= 0 {
		return code
	}
	logf := func(s string) { fmt.Fprintf(os.Stderr, "volt-jailer: %s\n", s) }
	res, err := jailer.Run(context.Background(), c, startUs, os.Stdin, os.Stdout, os.Stderr, logf)
	if err != nil {
		logf(err.Error())
		return 1
	}
	switch {
	case res.Seccomp != nil:
		logf(fmt.Sprintf("%s killed by seccomp: %s", c.ExecName(), res.Seccomp))
	case res.Signal == unix.SIGSYS:
		// The audit record that names the call is a rate-limited printk.
		logf(fmt.Sprintf("%s killed by SIGSYS: a seccomp filter (no audit record read to name the call)", c.ExecName()))
	case res.Signal != 0:
		logf(fmt.Sprintf("%s killed by signal %v", c.ExecName(), res.Signal))
	}
	return res.ExitCode
}

// parse reads the flags; code is -1 to go on, else the exit status.
func parse(args []string) (jailer.Config, int) {
	fs := pflag.NewFlagSet("volt-jailer", pflag.ContinueOnError)
	fs.SortFlags = false
	var (
		c                jailer.Config
		uid, gid         string
		cgroups, limits  []string
		roBinds, rwBinds []string
	)
	fs.StringVar(&c.ID, "id", "", "VM id: 1 to 64 letters, digits and '-' (names the chroot and the cgroup; passed to volt-vmm)")
	fs.StringVar(&c.ExecFile, "exec-file", "", "volt-vmm on the host (an absolute path to an executable regular file)")
	fs.StringVar(&uid, "uid", "", "uid volt-vmm runs as (a number or a user name; not 0)")
	fs.StringVar(&gid, "gid", "", "gid volt-vmm runs as (a number or a group name; not 0)")
	fs.StringVar(&c.ChrootBase, "chroot-base-dir", jailer.DefaultChrootBase, "where chroots are built: <dir>/<exec name>/<id>/root")
	fs.StringVar(&c.NetNS, "netns", "", "network namespace to join (e.g. /var/run/netns/vm1)")
	fs.IntVar(&c.CgroupVersion, "cgroup-version", 0, "cgroup version, 1 or 2 (default: 2 where its hierarchy has the controllers, else 1)")
	fs.StringArrayVar(&cgroups, "cgroup", nil, "cgroup file to set, FILE=VALUE (repeatable): v2 cpu.max, cpu.weight, memory.max, memory.high, memory.swap.max, pids.max, cpuset.cpus, cpuset.mems; v1 cpu.cfs_quota_us, cpu.cfs_period_us, cpu.shares, memory.limit_in_bytes, memory.memsw.limit_in_bytes, pids.max, cpuset.*")
	fs.StringVar(&c.ParentCgroup, "parent-cgroup", "", "cgroup under which <id> is made (default: the exec file's name)")
	fs.StringArrayVar(&limits, "resource-limit", nil, "resource limit RESOURCE=VALUE (repeatable): fsize, no-file (default no-file=2048)")
	fs.StringArrayVar(&roBinds, "ro-bind", nil, "host file, block device or directory to show read-only in the chroot, HOST[:JAIL] (JAIL default /<name>) (repeatable)")
	fs.StringArrayVar(&rwBinds, "rw-bind", nil, "the same, writable (repeatable): writable drives, a snapshot directory")
	fs.BoolVar(&c.CopyExecFile, "copy-exec-file", false, "copy volt-vmm into the chroot, as Firecracker does, instead of a read-only bind mount")
	fs.Usage = func() {
		fmt.Fprintln(os.Stderr, "Usage: volt-jailer --id ID --exec-file PATH --uid UID --gid GID [flags] -- [volt-vmm arguments]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return c, 0
		}
		return c, usage("%v", err)
	}
	c.Args = fs.Args()
	if fs.ArgsLenAtDash() < 0 && len(c.Args) > 0 {
		return c, usage("volt-vmm's arguments go after --")
	}
	var err error
	if uid == "" || gid == "" {
		return c, usage("--uid and --gid are required")
	}
	if c.UID, err = jailer.ParseID(uid, false); err != nil {
		return c, usage("--uid: %v", err)
	}
	if c.GID, err = jailer.ParseID(gid, true); err != nil {
		return c, usage("--gid: %v", err)
	}
	for _, s := range cgroups {
		cg, err := jailer.ParseCgroup(s)
		if err != nil {
			return c, usage("%v", err)
		}
		c.Cgroups = append(c.Cgroups, cg)
	}
	for _, s := range limits {
		l, err := jailer.ParseRlimit(s)
		if err != nil {
			return c, usage("%v", err)
		}
		c.Limits = append(c.Limits, l)
	}
	for i, list := range [][]string{roBinds, rwBinds} {
		for _, s := range list {
			b, err := jailer.ParseBind(s, i == 1)
			if err != nil {
				return c, usage("%v", err)
			}
			c.Binds = append(c.Binds, b)
		}
	}
	if err := c.Validate(); err != nil {
		return c, usage("%v", err)
	}
	return c, -1
}

func usage(format string, args ...any) int {
	fmt.Fprintf(os.Stderr, "volt-jailer: "+format+"\n", args...)
	return 2
}
