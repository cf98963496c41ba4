package bench

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/voltvmm/volt/bench/report"
	"github.com/voltvmm/volt/bench/results"
	"github.com/voltvmm/volt/bench/trace"
	"github.com/voltvmm/volt/internal/jailpath"
	"github.com/voltvmm/volt/internal/mountinfo"
	"github.com/voltvmm/volt/vmm/api/types"
)

// Jailed boots and restores (voltbench boot|restore --jail, issue 15): the
// same VM started through volt-jailer (docs/security.md), interleaved with
// the unjailed ones. The jailer is the process voltbench starts; it forks
// the jail's process (new mount and PID namespaces, in its cgroup), which
// re-executes the jailer, builds the chroot, drops to an unprivileged uid
// and gid and execs volt-vmm, which stays that process. The tracer follows
// that one child (trace.Gated.Follow), so a jailed boot has two clocks:
//
//   - its rows as a run (JailRows) are timed from the exec of volt-jailer,
//     what a caller that starts a jailed VMM waits for: jail-exec (the
//     jail's process exec'd: the supervisor's start, cgroups, the clone),
//     vmm-exec (volt-vmm exec'd in the chroot: the jailer's whole
//     start-up), then the VMM's own rows, and jailer-exit (the supervisor
//     gone, after the VMM: cgroup removal);
//   - the VMM's own rows, from the exec of volt-vmm as in an unjailed run,
//     are the same boots with vmm-exec subtracted (JailVMMRun).
//
// Every jailed boot checks, while the guest runs, that its VMM is in the
// jail: not uid 0, the uid and gid asked for, no effective capability, in
// a PID namespace of its own (JailCheck); a boot that is not fails.

// Jail says how to start the VMM under volt-jailer.
type Jail struct {
	Jailer   string // volt-jailer (absolute)
	UID, GID int    // the VMM's; never 0
	// ChrootBase is the jailer's --chroot-base-dir (absolute): every boot
	// gets <ChrootBase>/<volt-vmm's name>/<IDPrefix>-<n>/root, made by the
	// jailer and removed after the boot, as a fresh VM's would be.
	ChrootBase string
	IDPrefix   string // letters, digits and '-'
}

// Where a jailed VMM finds what is bound into its chroot.
const (
	jailKernelDir = "/kernel"
	jailInitrdDir = "/initrd"
	jailSnapshot  = "/snapshot"
)

// Rows of a jailed run that an unjailed one does not have.
const (
	RowJailExec   = "jail-exec"
	RowVMMExec    = "vmm-exec"
	RowJailerExit = "jailer-exit"
)

// JailArmSuffix names the jailed arm of an arm ("volt-jailed"), and
// JailVMMSuffix the run of its VMM's own rows ("volt-jailed-vmm").
const (
	JailArmSuffix = "-jailed"
	JailVMMSuffix = "-jailed-vmm"
)

// Validate checks a jail before anything starts.
func (j *Jail) Validate() error {
	var errs []error
	if !filepath.IsAbs(j.Jailer) {
		errs = append(errs, fmt.Errorf("volt-jailer %q: not an absolute path", j.Jailer))
	}
	if j.UID <= 0 || j.GID <= 0 {
		errs = append(errs, fmt.Errorf("jail uid %d, gid %d: a jailed VMM never runs as 0", j.UID, j.GID))
	}
	if !filepath.IsAbs(j.ChrootBase) {
		errs = append(errs, fmt.Errorf("chroot base %q: not an absolute path", j.ChrootBase))
	}
	if j.IDPrefix == "" || strings.Trim(j.IDPrefix, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-") != "" || len(j.IDPrefix) > 48 {
		errs = append(errs, fmt.Errorf("jail id prefix %q: 1 to 48 letters, digits and '-'", j.IDPrefix))
	}
	return errors.Join(errs...)
}

// JailRows are the rows of the jailed arm of a run timed by rows: from the
// exec of volt-jailer.
func JailRows(rows []Stage) []Stage {
	out := []Stage{{RowJailExec, trace.Exec, false}, {RowVMMExec, trace.LastExec, false}}
	out = append(out, rows...)
	// Not a milestone of the VMM's record: the supervisor's exit
	// (jailedStages).
	return append(out, Stage{Name: RowJailerExit})
}

// JailRowNames are the names of a jailed arm's rows.
func JailRowNames(a Arm) []string { return stageNames(a.Config.rows()) }

// vmmRows drops the jail's rows from JailRows(rows).
func vmmRows(rows []Stage) []Stage {
	var out []Stage
	for _, s := range rows {
		switch s.Name {
		case RowJailExec, RowVMMExec, RowJailerExit:
		default:
			out = append(out, s)
		}
	}
	return out
}

// JailedArm is a's VM started through volt-jailer, named a.Name+"-jailed",
// with a's floor. Only a probe or Linux guest booted from its kernel, or a
// probe restored from a memory file, can be jailed: a CAS store needs a
// view of its own in the chroot (see pool/jail.go), which this does not
// build.
func JailedArm(a Arm, j Jail) (Arm, error) {
	if err := j.Validate(); err != nil {
		return Arm{}, err
	}
	c := a.Config
	if c.VMM != VMMVolt {
		return Arm{}, fmt.Errorf("jail %s: only volt-vmm runs under volt-jailer", a.Name)
	}
	if len(c.ExtraArgs) > 0 {
		// --vmm-arg paths would name the host's files, and a CAS
		// restore's store is not in the chroot.
		return Arm{}, fmt.Errorf("jail %s: extra volt-vmm arguments (%s) are not carried into the jail", a.Name, strings.Join(c.ExtraArgs, " "))
	}
	for _, p := range []string{c.Kernel, c.Initrd, c.RestoreDir} {
		if strings.Contains(p, ":") {
			return Arm{}, fmt.Errorf("jail %s: %q holds ':' (volt-jailer's binds are HOST:JAIL)", a.Name, p)
		}
	}
	jj := j
	c.Jail = &jj
	c.Rows = JailRows(c.rows())
	return Arm{Name: a.Name + JailArmSuffix, Config: c, Floor: a.Floor}, nil
}

// jailArgs is the jailer's command line that starts c's VMM as jail id.
func (c Config) jailArgs(id string) []string {
	j := c.Jail
	inner := c
	inner.Jail, inner.Rows = nil, nil
	args := []string{"--id", id, "--exec-file", c.VMMBin, "--uid", strconv.Itoa(j.UID), "--gid", strconv.Itoa(j.GID),
		"--chroot-base-dir", j.ChrootBase}
	bind := func(host, dir string) string {
		in := dir + "/" + filepath.Base(host)
		args = append(args, "--ro-bind", host+":"+in)
		return in
	}
	switch {
	case c.RestoreDir != "":
		args = append(args, "--ro-bind", c.RestoreDir+":"+jailSnapshot)
		inner.RestoreDir = jailSnapshot
	default:
		inner.Kernel = bind(c.Kernel, jailKernelDir)
		if c.Initrd != "" {
			inner.Initrd = bind(c.Initrd, jailInitrdDir)
		}
	}
	return append(append(args, "--"), inner.Args()...)
}

// command is the program a boot of c starts and its arguments; seq numbers
// the boot, for a jail's id.
func (c Config) command(seq uint64) (string, []string, string) {
	if c.Jail == nil {
		return c.VMMBin, c.Args(), ""
	}
	id := fmt.Sprintf("%s-%d", c.Jail.IDPrefix, seq)
	return c.Jail.Jailer, c.jailArgs(id), id
}

// jailDir is where the jailer builds jail id's chroot.
func (c Config) jailDir(id string) string {
	return jailpath.Dir(c.Jail.ChrootBase, c.VMMBin, id)
}

// removeJail removes a finished boot's chroot. Its mounts lived in the
// jail's own mount namespace, gone with it; one the host still sees is
// left alone (removing it would remove what is mounted there).
func (c Config) removeJail(id string) error {
	if err := mountinfo.RemoveAllUnmounted(c.jailDir(id)); err != nil {
		return fmt.Errorf("jail %s: %w", id, err)
	}
	return nil
}

// jailedStages puts the rows of a jailed boot on the clock of the exec of
// volt-jailer: vmm is the jail process's record (exec'd as the jailer,
// then as volt-vmm), sup the supervisor's.
func jailedStages(sup, vmm trace.Record, rows []Stage) map[string]StageTime {
	out := stageTimesFor(vmm, vmmRowsWithExecs(rows))
	off := vmm.Origin - sup.Origin
	for k, st := range out {
		st.At += off
		out[k] = st
	}
	for _, s := range rows {
		if s.Name != RowJailerExit {
			continue
		}
		if at, ok := sup.At(trace.Exit); ok {
			out[RowJailerExit] = StageTime{At: at}
		}
	}
	return out
}

// vmmRowsWithExecs is rows without jailer-exit, which is not in the VMM's
// record.
func vmmRowsWithExecs(rows []Stage) []Stage {
	var out []Stage
	for _, s := range rows {
		if s.Name != RowJailerExit {
			out = append(out, s)
		}
	}
	return out
}

// JailCheck is what a jailed boot saw of its VMM while the guest ran.
type JailCheck struct {
	PID      int    // the VMM, in voltbench's PID namespace
	UID, GID int    // real uid and gid
	CapEff   string // effective capabilities, hex
	NSpid    string // its PIDs from voltbench's namespace inwards
	Exe      string // its executable, as the host reads it
}

// checkJail reads /proc of pid, the jail's process, and fails unless it is
// the VMM (executable vmmBin's name) jailed as j says.
func checkJail(pid int, j *Jail, vmmBin string) (JailCheck, error) {
	ck := JailCheck{PID: pid}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return ck, fmt.Errorf("jail check: %w", err)
	}
	fields := map[string][]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			fields[k] = strings.Fields(v)
		}
	}
	id := func(k string) int {
		if f := fields[k]; len(f) > 0 {
			if n, err := strconv.Atoi(f[0]); err == nil {
				return n
			}
		}
		return -1
	}
	ck.UID, ck.GID = id("Uid"), id("Gid")
	ck.CapEff = strings.Join(fields["CapEff"], "")
	ck.NSpid = strings.Join(fields["NSpid"], " ")
	ck.Exe, _ = os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	var errs []error
	for _, k := range []string{"Uid", "Gid"} {
		want := j.UID
		if k == "Gid" {
			want = j.GID
		}
		for _, f := range fields[k] {
			if f != strconv.Itoa(want) {
				errs = append(errs, fmt.Errorf("%s %s, want %d in every field", k, strings.Join(fields[k], " "), want))
				break
			}
		}
	}
	if ck.UID <= 0 || ck.GID <= 0 {
		errs = append(errs, fmt.Errorf("uid %d, gid %d: not an unprivileged VMM", ck.UID, ck.GID))
	}
	if strings.Trim(ck.CapEff, "0") != "" || ck.CapEff == "" {
		errs = append(errs, fmt.Errorf("effective capabilities %q, want none", ck.CapEff))
	}
	if ns := fields["NSpid"]; len(ns) < 2 || ns[len(ns)-1] != "1" {
		errs = append(errs, fmt.Errorf("NSpid %q: not PID 1 of a PID namespace of its own", ck.NSpid))
	}
	if filepath.Base(ck.Exe) != filepath.Base(vmmBin) {
		errs = append(errs, fmt.Errorf("executable %q, not volt-vmm", ck.Exe))
	}
	if len(errs) > 0 {
		return ck, fmt.Errorf("jail check of pid %d: %w", pid, errors.Join(errs...))
	}
	return ck, nil
}

// JailSpans split a jailed boot's start: the jailer's own cost, up to the
// exec of volt-vmm, and its end after the VMM's.
var JailSpans = []Span{
	{"volt-jailer exec → jail-exec (supervisor: rlimits, cgroups, clone of the jail's process)", "", RowJailExec},
	{"jail-exec → vmm-exec (chroot: binds, /proc, /dev/kvm, pivot_root, uid drop)", RowJailExec, RowVMMExec},
	{"volt-jailer exec → vmm-exec (the jailer's start-up)", "", RowVMMExec},
	{"exit → jailer-exit (the VMM's end to the supervisor's)", "exit", RowJailerExit},
}

// JailVMMRun is the run of a jailed arm's VMM's own rows: the same boots,
// each row less vmm-exec, so timed from the exec of volt-vmm as an
// unjailed run is. Use its Observe in the session's Plan.
type JailVMMRun struct {
	Jailed string // the jailed arm observed
	Run    *results.Run
	// Also, when set, sees each boot as this run records it (stages since
	// the exec of volt-vmm), under the run's name: e.g. a SpanRecorder's
	// Observe.
	Also func(Arm, Boot)
	// Checked is the jail check of the last successful boot.
	Checked *JailCheck
	rows    []Stage
}

// NewJailVMMRun makes the VMM run of jailed (a JailedArm), named
// <arm>-jailed-vmm, with jailed's floor.
func NewJailVMMRun(jailed Arm) *JailVMMRun {
	rows := vmmRows(jailed.Config.rows())
	c := jailed.Config
	c.Rows = rows
	name := strings.TrimSuffix(jailed.Name, JailArmSuffix) + JailVMMSuffix
	r := NewRun(Arm{Name: name, Config: c, Floor: jailed.Floor})
	return &JailVMMRun{Jailed: jailed.Name, Run: r, rows: rows}
}

// Observe records a boot of the jailed arm; other arms' are ignored.
func (j *JailVMMRun) Observe(a Arm, b Boot) {
	if a.Name != j.Jailed {
		return
	}
	vb := Boot{VMM: b.VMM, Err: b.Err, KVMExitsUntraced: b.KVMExitsUntraced, Record: b.Record, Jail: b.Jail}
	if b.Err == nil {
		exec, ok := b.Stages[RowVMMExec]
		if !ok {
			vb.Err = fmt.Errorf("%w: %s", ErrMissingStage, RowVMMExec)
		} else {
			vb.Stages = map[string]StageTime{}
			for _, s := range j.rows {
				if st, ok := b.Stages[s.Name]; ok {
					st.At -= exec.At
					vb.Stages[s.Name] = st
				}
			}
		}
	}
	if vb.Err == nil && b.Jail != nil {
		j.Checked = b.Jail
	}
	_ = j.Run.Add(vb.Observation())
	if j.Also != nil {
		j.Also(Arm{Name: j.Run.VMM, Config: a.Config}, vb)
	}
}

// WriteJailCompare prints the unjailed run beside the jailed one (from the
// exec of volt-jailer) and its VMM run (from the exec of volt-vmm), with
// ratios to the unjailed run, rows being JailRows' names.
func WriteJailCompare(w io.Writer, rows []string, unjailed, jailed, vmm *results.Run) error {
	fmt.Fprintf(w, "jailed against unjailed, interleaved in one session; ratio = run / %s (>1: slower)\n", unjailed.VMM)
	fmt.Fprintf(w, "  %s: unjailed, ms since the exec of volt-vmm\n", unjailed.VMM)
	fmt.Fprintf(w, "  %s: the same VM through volt-jailer, ms since the exec of volt-jailer: %s = the jail's process exec'd (the jailer again, in new PID and mount namespaces),\n"+
		"      %s = volt-vmm exec'd in the chroot (the jailer's start-up), %s = the supervisor gone after the VMM\n", jailed.VMM, RowJailExec, RowVMMExec, RowJailerExit)
	fmt.Fprintf(w, "  %s: the same jailed boots, ms since the exec of volt-vmm (each row less %s): the VMM's own stages in the jail\n", vmm.VMM, RowVMMExec)
	return report.WriteByStage(w, rows, []*results.Run{unjailed, jailed, vmm})
}

// DefaultJailerBin is where scripts/setup puts volt-jailer.
const DefaultJailerBin = "bin/volt-jailer"

// ResolveJailerBin returns bin, or the repository's volt-jailer when bin is
// "", as an absolute path to a regular file.
func ResolveJailerBin(bin string) (string, error) {
	if bin == "" {
		var r root
		p, err := r.path(DefaultJailerBin)
		if err != nil {
			return "", err
		}
		bin = p
	}
	abs, err := filepath.Abs(bin)
	if err != nil {
		return "", fmt.Errorf("volt-jailer: %w", err)
	}
	if err := regular(abs); err != nil {
		return "", fmt.Errorf("volt-jailer: %w (build it: CGO_ENABLED=0 go build -o bin/volt-jailer ./cmd/volt-jailer, or pass --jailer-bin)", err)
	}
	return abs, nil
}

// ShareWith gives the snapshot's directory and its state and memory files
// to uid:gid, so that a VMM jailed as them can read what is bound into its
// chroot; root's VMMs read them as before.
func (s *Snapshot) ShareWith(uid, gid int) error {
	for _, p := range []string{s.Dir, filepath.Join(s.Dir, types.SnapshotStateFile), s.MemPath()} {
		if err := os.Chown(p, uid, gid); err != nil && !(errors.Is(err, os.ErrNotExist) && p == s.MemPath() && s.MemFileBytes == 0) {
			return fmt.Errorf("snapshot for the jail: %w", err)
		}
	}
	return nil
}
