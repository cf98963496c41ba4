package main

import (
	"fmt"
	"io"
	"os"

	"github.com/spf13/pflag"

	"github.com/voltvmm/volt/bench"
	"github.com/voltvmm/volt/bench/results"
)

// defaultJailUID is the jailed arm's uid and gid: unused by any account
// here, and below voltpool's default range (1900000000-1900065535), so a
// pool's VMMs running meanwhile never share it.
const defaultJailUID = 1899990000

// jailFlags add a jailed arm to boot and restore (--jail).
type jailFlags struct {
	jail      bool
	jailerBin string
	uid, gid  int
	dir       string
}

func (j *jailFlags) register(fs *pflag.FlagSet, what string) {
	fs.BoolVar(&j.jail, "jail", false, "also "+what+" the same VM through volt-jailer, interleaved, and print jailed against unjailed per stage, with the jailer's own start-up")
	fs.StringVar(&j.jailerBin, "jailer-bin", "", "with --jail: volt-jailer (default: "+bench.DefaultJailerBin+" in the repository)")
	fs.IntVar(&j.uid, "jail-uid", defaultJailUID, "with --jail: the jailed VMM's uid (not 0)")
	fs.IntVar(&j.gid, "jail-gid", 0, "with --jail: the jailed VMM's gid (default: --jail-uid)")
	fs.StringVar(&j.dir, "jail-dir", "", "with --jail: volt-jailer's --chroot-base-dir (default: a temporary directory, removed at the end)")
}

// check refuses jail flags without --jail.
func (j *jailFlags) check(fs *pflag.FlagSet) error {
	if j.jail {
		return nil
	}
	for _, f := range []string{"jailer-bin", "jail-uid", "jail-gid", "jail-dir"} {
		if fs.Changed(f) {
			return fmt.Errorf("--%s is for the jailed arm: give --jail", f)
		}
	}
	return nil
}

// gidOrUID is --jail-gid, or --jail-uid by default.
func (j *jailFlags) gidOrUID() int {
	if j.gid == 0 {
		return j.uid
	}
	return j.gid
}

// arm makes the jailed arm of a; cleanup removes the chroot base when it
// was made here.
func (j *jailFlags) arm(a bench.Arm) (bench.Arm, func(), error) {
	bin, err := bench.ResolveJailerBin(j.jailerBin)
	if err != nil {
		return bench.Arm{}, nil, err
	}
	gid := j.gidOrUID()
	base, cleanup := j.dir, func() {}
	if base == "" {
		if base, err = os.MkdirTemp("", "voltbench-jail-"); err != nil {
			return bench.Arm{}, nil, fmt.Errorf("jail: %w", err)
		}
		cleanup = func() { os.RemoveAll(base) }
	}
	ja, err := bench.JailedArm(a, bench.Jail{Jailer: bin, UID: j.uid, GID: gid, ChrootBase: base, IDPrefix: fmt.Sprintf("voltbench-%d", os.Getpid())})
	if err != nil {
		cleanup()
		return bench.Arm{}, nil, err
	}
	return ja, cleanup, nil
}

// writeJail prints the jailed runs side by side with the unjailed one, and
// the jailer's spans.
func writeJail(stdout io.Writer, unjailed, jailed *results.Run, vmm *bench.JailVMMRun, spans *bench.SpanRecorder, ja bench.Arm) {
	fmt.Fprintln(stdout)
	bench.WriteJailCompare(stdout, bench.JailRowNames(ja), unjailed, jailed, vmm.Run)
	fmt.Fprintf(stdout, "\njail: volt-jailer %s, uid %d gid %d, a fresh chroot under %s per VM (removed after it); every jailed VMM was checked while its guest ran (uid, gid, no capability, PID 1 of its own PID namespace)\n",
		ja.Config.Jail.Jailer, ja.Config.Jail.UID, ja.Config.Jail.GID, ja.Config.Jail.ChrootBase)
	if c := vmm.Checked; c != nil {
		fmt.Fprintf(stdout, "last check: pid %d, uid %d gid %d, CapEff %s, NSpid %q, exe %s\n", c.PID, c.UID, c.GID, c.CapEff, c.NSpid, c.Exe)
	}
	fmt.Fprintln(stdout)
	spans.Write(stdout, ja.Name)
}

// runNamed is the run of the named arm, or nil.
func runNamed(runs []*results.Run, name string) *results.Run {
	for _, r := range runs {
		if r.VMM == name {
			return r
		}
	}
	return nil
}
