package microvm

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/voltvmm/volt/cas"
	"github.com/voltvmm/volt/guest/rootfs"
	"github.com/voltvmm/volt/nspawn"
	"github.com/voltvmm/volt/nspawn/image"
	"github.com/voltvmm/volt/nspawn/instance"
	"github.com/voltvmm/volt/nspawn/loopdev"
)

// TestMeasureStartAndScale is the measurement docs/containers.md quotes,
// side by side in one run (VOLT_MEASURE=1; a few minutes, mostly VM
// boots):
//
//   - start → first output of the same image as a container and as a VM,
//     through the volt CLI (exec of volt … run until the workload's line is
//     in the instance's log; the VM also until its first console byte), and
//     the VM under volt-jailer (vm run --jail) until run returns and its
//     first console byte;
//
//   - 20 instances of one image started as containers and kept running,
//     each over its own copy-on-write volume (volt container run), against
//     20 full copies of the image (exported from the CAS, loop-mounted,
//     systemd-nspawn with the same arguments): wall time until all 20 have
//     printed, and the bytes each way.
//
//     VOLT_MEASURE=1 go test -run TestMeasureStartAndScale -v -timeout 30m ./nspawn/microvm
func TestMeasureStartAndScale(t *testing.T) {
	if os.Getenv("VOLT_MEASURE") != "1" {
		t.Skip("a measurement: set VOLT_MEASURE=1")
	}
	kernel, init := guestInputs(t)
	dir, err := os.MkdirTemp("/var/tmp", "volt-measure-*")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "bin")
	os.Mkdir(bin, 0o755)
	for _, p := range []string{"volt", "volt-vmm", "volt-jailer"} {
		cmd := exec.Command("go", "build", "-trimpath", "-o", filepath.Join(bin, p), "../../cmd/"+p)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", p, err, out)
		}
	}
	volt := filepath.Join(bin, "volt")
	env := append(os.Environ(), "VOLT_STATE_DIR="+filepath.Join(dir, "state"), "VOLT_CAS_STORE="+filepath.Join(dir, "cas"))
	sh := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(volt, args...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("volt %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	tree := filepath.Join(dir, "tree")
	os.Mkdir(tree, 0o755)
	tr, err := rootfs.NewTree(context.Background(), rootfs.Options{Init: init, Busybox: rootfs.DefaultBusybox})
	if err != nil {
		t.Skip(err)
	}
	if _, err := rootfs.Stage(tree, tr); err != nil {
		t.Fatal(err)
	}
	t.Log(strings.TrimSpace(sh("image", "import", "busybox", "--dir", tree, "--size", "64M")))
	logOf := func(kind, name string) string {
		b, _ := os.ReadFile(filepath.Join(dir, "state", kind+"s", name, "log"))
		return string(b)
	}
	// waitLog polls the log every millisecond: the figures are quoted in
	// milliseconds.
	waitLog := func(kind, name string, pred func(string) bool, timeout time.Duration) bool {
		deadline := time.Now().Add(timeout)
		for time.Now().Before(deadline) {
			if pred(logOf(kind, name)) {
				return true
			}
			time.Sleep(time.Millisecond)
		}
		return false
	}
	// The workload's line, not the kernel's command line (which holds
	// the command and comes with the console's first bytes); the serial
	// console ends lines in "\r\n".
	printed := func(s string) bool { return firstOutputLine.MatchString(s) }
	profile := guestProfile()
	var ctrFirst, ctrReady, vmFirstByte, vmFirst, vmReady, jailReady, jailFirstByte []time.Duration
	const vmRounds, ctrRounds = 3, 10
	for r := 0; r < ctrRounds; r++ {
		if r < vmRounds {
			name := fmt.Sprintf("vm%d", r)
			args := []string{"vm", "run", name, "--image", "busybox", "--kernel", kernel, "--guest-profile", profile}
			args = append(args, "--", "/bin/echo", "first-output")
			start := time.Now()
			sh(args...)
			vmReady = append(vmReady, time.Since(start))
			if !waitLog("vm", name, func(s string) bool { return len(s) > 0 }, 5*time.Minute) {
				t.Fatalf("%s: no console output", name)
			}
			vmFirstByte = append(vmFirstByte, time.Since(start))
			if !waitLog("vm", name, printed, 10*time.Minute) {
				t.Fatalf("%s: no workload output:\n%s", name, lastLines(logOf("vm", name), 20))
			}
			vmFirst = append(vmFirst, time.Since(start))
			sh("vm", "rm", "--force", name)

			// The same VM under volt-jailer, to its first console byte:
			// the jail changes the set-up, not the guest's boot.
			name = fmt.Sprintf("jvm%d", r)
			args = []string{"vm", "run", name, "--jail", "--image", "busybox", "--kernel", kernel, "--guest-profile", profile, "--", "/bin/echo", "first-output"}
			start = time.Now()
			sh(args...)
			jailReady = append(jailReady, time.Since(start))
			if !waitLog("vm", name, func(s string) bool { return len(s) > 0 }, 5*time.Minute) {
				t.Fatalf("%s: no console output", name)
			}
			jailFirstByte = append(jailFirstByte, time.Since(start))
			sh("vm", "rm", "--force", name)
		}
		name := fmt.Sprintf("c%d", r)
		start := time.Now()
		sh("container", "run", name, "--image", "busybox", "--", "/bin/echo", "first-output")
		ctrReady = append(ctrReady, time.Since(start))
		if !waitLog("container", name, printed, time.Minute) {
			t.Fatalf("%s: no output:\n%s", name, logOf("container", name))
		}
		ctrFirst = append(ctrFirst, time.Since(start))
		waitGone(t, filepath.Join(dir, "state", "containers", name))
		sh("container", "rm", name)
	}
	t.Logf("start -> first output, volt CLI, image busybox (%d container runs, %d VM runs, interleaved):", ctrRounds, vmRounds)
	t.Logf("  container: run returns (payload started) median %v [%v .. %v]; first output median %v [%v .. %v]",
		med(ctrReady), slices.Min(ctrReady), slices.Max(ctrReady), med(ctrFirst), slices.Min(ctrFirst), slices.Max(ctrFirst))
	t.Logf("  vm (guest profile %q): run returns (vCPU created) median %v; first console byte median %v; first output median %v [%v .. %v]",
		profile, med(vmReady), med(vmFirstByte), med(vmFirst), slices.Min(vmFirst), slices.Max(vmFirst))
	t.Logf("  vm --jail: run returns median %v %v; first console byte median %v", med(jailReady), jailReady, med(jailFirstByte))
	t.Logf("  (all: ready %v, first byte %v, first output %v)", vmReady, vmFirstByte, vmFirst)

	// 20 instances, three interleaved rounds of each arm.
	s, err := cas.OpenExisting(filepath.Join(dir, "cas"))
	if err != nil {
		t.Fatal(err)
	}
	usage0, _ := s.Usage(context.Background())
	var cowTimes, copyTimes []time.Duration
	var sc scaleResult
	for round := 0; round < 3; round++ {
		sc = scaleCoW(t, sh, waitLog, dir, s)
		cowTimes = append(cowTimes, sc.time)
		cp := scaleCopies(t, dir, s)
		copyTimes = append(copyTimes, cp.time)
		sc.copyBytes, sc.copyApparent = cp.copyBytes, cp.copyApparent
	}
	t.Logf("%d instances of one image (%d MiB file system, %d MiB of data), started one after another and kept running (3 rounds each, interleaved):", scaleN, usage0.LogicalBytes>>20, usage0.DataBytes>>20)
	t.Logf("  copy-on-write volumes (volt container run): all printed after median %v %v (%v each); instance state on disk %s; CAS stored bytes %d -> %d; supervisors' PSS %s in all",
		med(cowTimes), cowTimes, (med(cowTimes) / scaleN).Round(time.Millisecond), mib(sc.bytes), usage0.StoredBytes, sc.stored, mib(sc.pss))
	t.Logf("  full copies (export + loop + systemd-nspawn): all printed after median %v %v (%v each); copies on disk %s (sparse; %s apparent)",
		med(copyTimes), copyTimes, (med(copyTimes) / scaleN).Round(time.Millisecond), mib(sc.copyBytes), mib(sc.copyApparent))
}

// firstOutputLine is the workload's line in a log, alone on its line.
var firstOutputLine = regexp.MustCompile(`(?m)^first-output\r?$`)

const scaleN = 20

type scaleResult struct {
	time                    time.Duration
	bytes, stored, pss      int64
	copyBytes, copyApparent int64
}

// scaleCoW starts scaleN containers of the image through the CLI, waits
// until each has printed, measures, and removes them.
func scaleCoW(t *testing.T, sh func(...string) string, waitLog func(string, string, func(string) bool, time.Duration) bool, dir string, s *cas.Store) scaleResult {
	var r scaleResult
	start := time.Now()
	for i := 0; i < scaleN; i++ {
		sh("container", "run", fmt.Sprintf("i%d", i), "--image", "busybox", "--", "/bin/sh", "-c", "echo first-output; exec sleep 600")
	}
	for i := 0; i < scaleN; i++ {
		if !waitLog("container", fmt.Sprintf("i%d", i), func(s string) bool { return firstOutputLine.MatchString(s) }, time.Minute) {
			t.Fatalf("i%d: no output", i)
		}
	}
	r.time = time.Since(start)
	u, _ := s.Usage(context.Background())
	r.stored = u.StoredBytes
	r.bytes = duBytes(t, filepath.Join(dir, "state", "containers"))
	for i := 0; i < scaleN; i++ {
		d, _ := instance.NewDir(filepath.Join(dir, "state"), instance.Container, fmt.Sprintf("i%d", i))
		rec, _ := d.ReadRecord()
		r.pss += pssOf(rec.Supervisor.PID)
	}
	for i := 0; i < scaleN; i++ {
		sh("container", "rm", "--force", "--timeout", "1s", fmt.Sprintf("i%d", i))
	}
	return r
}

// scaleCopies starts scaleN containers each on a full copy of the image:
// exported from the CAS, loop-mounted, systemd-nspawn with volt's
// arguments.
func scaleCopies(t *testing.T, dir string, s *cas.Store) scaleResult {
	var r scaleResult
	copies := filepath.Join(dir, "copies")
	os.RemoveAll(copies)
	os.Mkdir(copies, 0o755)
	defer os.RemoveAll(copies)
	nsp, _ := nspawn.FindNspawn()
	var cmds []*exec.Cmd
	var mounts []string
	defer func() {
		for _, c := range cmds {
			// The payload is PID 2 under nspawn's init: kill the init.
			for _, k := range instance.Children(c.Process.Pid) {
				unix.Kill(k, unix.SIGKILL)
			}
		}
		for _, c := range cmds {
			c.Wait()
		}
		for _, m := range mounts {
			unix.Unmount(m, 0)
		}
	}()
	start := time.Now()
	for i := 0; i < scaleN; i++ {
		img := filepath.Join(copies, fmt.Sprintf("copy%d.ext4", i))
		if err := s.ExportFile(context.Background(), image.Ref("busybox"), img, nil); err != nil {
			t.Fatal(err)
		}
		f, err := os.OpenFile(img, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		ld, err := loopdev.Attach(f, loopdev.Options{})
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		root := filepath.Join(copies, fmt.Sprintf("root%d", i))
		os.Mkdir(root, 0o755)
		if err := unix.Mount(ld.Path, root, "ext4", 0, ""); err != nil {
			ld.Close()
			t.Fatal(err)
		}
		ld.Close()
		mounts = append(mounts, root)
		spec := nspawn.Spec{Name: fmt.Sprintf("copy%d", i), PrivateUsers: nspawn.UsersPick, Network: nspawn.Network{Mode: nspawn.NetNone},
			Command: []string{"/bin/sh", "-c", "echo first-output; exec sleep 600"}}
		cmd := exec.Command(nsp, nspawn.Args(&spec, root)...)
		out, _ := os.Create(filepath.Join(copies, fmt.Sprintf("out%d", i)))
		cmd.Stdout, cmd.Stderr = out, out
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		out.Close()
		cmds = append(cmds, cmd)
	}
	for i := 0; i < scaleN; i++ {
		deadline := time.Now().Add(time.Minute)
		for {
			b, _ := os.ReadFile(filepath.Join(copies, fmt.Sprintf("out%d", i)))
			if bytes.Contains(b, []byte("first-output")) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("copy %d: no output: %s", i, b)
			}
			time.Sleep(time.Millisecond)
		}
	}
	r.time = time.Since(start)
	for i := 0; i < scaleN; i++ {
		fi, _ := os.Stat(filepath.Join(copies, fmt.Sprintf("copy%d.ext4", i)))
		r.copyApparent += fi.Size()
	}
	r.copyBytes = duBytes(t, copies)
	return r
}

func med(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2].Round(time.Millisecond)
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// duBytes is the space files under dir take on disk (allocated blocks).
func duBytes(t *testing.T, dir string) int64 {
	var total int64
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return nil
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && (fi.Mode().IsRegular() || fi.IsDir()) {
			total += st.Blocks * 512
		}
		return nil
	})
	return total
}

// pssOf reads a process's proportional set size.
func pssOf(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "Pss:" {
			var kb int64
			fmt.Sscan(f[1], &kb)
			return kb << 10
		}
	}
	return 0
}

// waitGone waits until the instance's supervisor has let go.
func waitGone(t *testing.T, dir string) {
	d := instance.Dir{Root: filepath.Dir(filepath.Dir(dir)), Kind: instance.Container, Name: filepath.Base(dir)}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if alive, _ := d.SupervisorAlive(); !alive {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("%s: supervisor still alive", dir)
}
