package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/voltvmm/volt/guest/probe"
	"github.com/voltvmm/volt/vmm"
	"github.com/voltvmm/volt/vmm/api/client"
	"github.com/voltvmm/volt/vmm/api/types"
	"github.com/voltvmm/volt/vmm/kvm/kvmtest"
	"github.com/voltvmm/volt/vmm/snapshot"
)

// asVMM makes the test binary run as volt-vmm when re-executed by a test
// that needs a real process to kill.
const asVMM = "VOLT_TEST_RUN_AS_VOLT_VMM"

func TestMain(m *testing.M) {
	if os.Getenv(asVMM) != "" {
		os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// probeSession drives a probe whose console is reachable through in and
// lines.
type probeSession struct {
	t     *testing.T
	in    io.Writer
	lines chan string
}

func newProbeSession(t *testing.T, in io.Writer, out io.Reader) *probeSession {
	s := &probeSession{t: t, in: in, lines: make(chan string, 256)}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			s.lines <- sc.Text()
		}
		close(s.lines)
	}()
	return s
}

func (s *probeSession) expect(prefix string) string {
	s.t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case l, ok := <-s.lines:
			if !ok {
				s.t.Fatalf("console closed waiting for %q", prefix)
			}
			if strings.HasPrefix(l, prefix) {
				return l
			}
		case <-timeout:
			s.t.Fatalf("timed out waiting for %q", prefix)
		}
	}
}

func (s *probeSession) send(cmd string) { fmt.Fprintln(s.in, cmd) }

// TestFirecrackerSDKArgumentsStartVoltVMM starts volt-vmm with the exact
// argument list of the Firecracker Go SDK's default command builder and
// drives it through the API as the SDK would.
func TestFirecrackerSDKArgumentsStartVoltVMM(t *testing.T) {
	kvmtest.Require(t)
	elf, err := probe.Path(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "fc.sock")
	args := []string{"--api-sock", sock, "--id", "4c2b8a47-6c1d-4a5e-9f0b-3d7e2c1a9b8f", "--no-seccomp"}
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	var stderr lockedBuffer
	done := make(chan int, 1)
	go func() {
		done <- runInProcess(args, inR, outW, &stderr)
		outW.Close()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := client.New(sock)
	defer c.Close()
	info, err := c.WaitReady(ctx, time.Millisecond)
	if err != nil || info.ID != args[3] || info.State != "Not started" {
		t.Fatalf("GET /: %+v, %v", info, err)
	}
	for _, step := range []func() error{
		func() error { return c.PutBootSource(ctx, types.BootSource{KernelImagePath: elf}) },
		func() error { return c.PutMachineConfig(ctx, types.MachineConfiguration{VCPUCount: 1, MemSizeMib: 32}) },
		func() error { return c.Start(ctx) },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	s := newProbeSession(t, inW, outR)
	s.expect(probe.ReadyLine)
	s.send("poweroff")
	select {
	case status := <-done:
		if status != exitOK {
			t.Fatalf("status %d; stderr:\n%s", status, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("volt-vmm did not exit")
	}
	if strings.Contains(stderr.String(), "notice: --no-seccomp") {
		t.Errorf("--no-seccomp is a real flag now, not a notice:\n%s", stderr.String())
	}
}

func TestFirecrackerFlags(t *testing.T) {
	dir := t.TempDir()
	junk := filepath.Join(dir, "junk")
	os.WriteFile(junk, []byte("not a snapshot"), 0o644)
	logFile := filepath.Join(dir, "vmm.log")
	tests := []struct {
		name           string
		args           []string
		status         int
		stdout, stderr string
	}{
		{"version", []string{"--version"}, exitOK, "volt-vmm ", ""},
		{"describe a non-snapshot", []string{"--describe-snapshot", junk}, exitVMMError, "", "bad magic"},
		{"start time in the future", []string{"--api-sock", filepath.Join(dir, "a.sock"), "--start-time-us", "99999999999999"}, exitUsage, "", "--start-time-us: 99999999999999 µs is not a past CLOCK_MONOTONIC time"},
		{"zero payload size", []string{"--api-sock", filepath.Join(dir, "b.sock"), "--http-api-max-payload-size", "0"}, exitUsage, "", "--http-api-max-payload-size 0: must be positive"},
		{"bad log level", []string{"--api-sock", filepath.Join(dir, "c.sock"), "--level", "loud"}, exitUsage, "", "logger flags: level must be one of"},
		{"restore with machine flags", []string{"--restore", dir, "--memory", "64M", "--cpus", "2", "--guest-profile", "none"}, exitUsage, "",
			"--restore takes the machine from the snapshot; it cannot be combined with --memory, --cpus, --guest-profile"},
		{"unknown guest profile", []string{"--kernel", junk, "--guest-profile", "fast"}, exitUsage, "", `unknown guest profile "fast"`},
		{"too many vCPUs, as the API refuses them", []string{"--kernel", junk, "--cpus", "33"}, exitUsage, "", "vCPU count 33 outside 1..32"},
		{"memory the host cannot back", []string{"--kernel", junk, "--memory", "1024G"}, exitVMMError, "", "guest memory 1024G is more than this host's RAM and swap"},
		{"a socket path too long to bind", []string{"--api-sock", "/tmp/" + strings.Repeat("s", 120)}, exitVMMError, "", "a Unix socket path can be at most 107"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.name == "memory the host cannot back" {
				kvmtest.Require(t)
			}
			var stdout, stderr bytes.Buffer
			status := runInProcess(tt.args, strings.NewReader(""), &stdout, &stderr)
			if status != tt.status || !strings.Contains(stdout.String(), tt.stdout) || !strings.Contains(stderr.String(), tt.stderr) {
				t.Fatalf("status %d, stdout %q, stderr %q; want %d, %q, %q", status, stdout.String(), stderr.String(), tt.status, tt.stdout, tt.stderr)
			}
		})
	}
	// The flags with no effect are accepted, each with its notice, and
	// the logger flags take effect.
	kvmtest.Require(t)
	elf, err := probe.Path(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	status := runInProcess([]string{"--kernel", elf, "--memory", "32M", "--seccomp-filter", junk, "--mmds-size-limit", "1024", "--metadata", junk,
		"--start-time-cpu-us", "5", "--parent-cpu-time-us", "7", "--level", "Info", "--log-path", logFile, "--show-level"},
		strings.NewReader("poweroff\n"), &stdout, &stderr)
	if status != exitOK {
		t.Fatalf("status %d: %s", status, stderr.String())
	}
	logged, _ := os.ReadFile(logFile)
	for _, want := range []string{"notice: --seccomp-filter " + junk, "notice: --mmds-size-limit", "notice: --metadata " + junk, "notice: --start-time-cpu-us/--parent-cpu-time-us", "level=WARN", "microVM started"} {
		if !strings.Contains(string(logged), want) {
			t.Errorf("log file lacks %q:\n%s", want, logged)
		}
	}
}

func TestDescribeSnapshotPrintsTheFileFormat(t *testing.T) {
	kvmtest.Require(t)
	dir := snapshotProbeDir(t, "touch 5", "touched 5")
	var stdout, stderr bytes.Buffer
	if status := runInProcess([]string{"--describe-snapshot", filepath.Join(dir, types.SnapshotStateFile)}, nil, &stdout, &stderr); status != exitOK {
		t.Fatalf("status %d: %s", status, stderr.String())
	}
	if want := fmt.Sprintf("v%d.%d.0\n", snapshot.MajorVersion, snapshot.MinorVersion); stdout.String() != want {
		t.Errorf("printed %q, want %q", stdout.String(), want)
	}
}

func TestExitStatusTellsPowerOffResetAndPanicApart(t *testing.T) {
	kvmtest.Require(t)
	elf, err := probe.Path(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		cmd    string
		status int
		stderr string
	}{
		{"poweroff", exitOK, ""},
		{"reset", exitGuestReset, "the guest reset without announcing a shutdown"},
		{"panic", exitGuestPanic, "the guest kernel panicked"},
	} {
		var stderr bytes.Buffer
		status := runInProcess([]string{"--kernel", elf, "--memory", "32M"}, strings.NewReader(tt.cmd+"\n"), &bytes.Buffer{}, &stderr)
		if status != tt.status || !strings.Contains(stderr.String(), tt.stderr) {
			t.Errorf("%s: status %d, stderr %q; want %d and %q", tt.cmd, status, stderr.String(), tt.status, tt.stderr)
		}
	}
}

// TestLinuxInitFailureIsAPanicExit makes PID 1 of our Linux guest exit
// with an error: the kernel panics ("Attempted to kill init!"), and
// volt-vmm must say so with its documented status instead of reporting the
// reset that follows (panic=-1) as anything else.
func TestLinuxInitFailureIsAPanicExit(t *testing.T) {
	kvmtest.Require(t)
	var stdout, stderr bytes.Buffer
	status := runInProcess([]string{
		"--kernel", guestArtefact(t, "vmlinux"), "--initrd", guestArtefact(t, "initramfs.cpio"),
		"--guest-profile", "nested-pvm", "--memory", "256M",
		"--cmdline", "console=ttyS0 reboot=k panic=-1 rdinit=/bin/false",
	}, strings.NewReader(""), &stdout, &stderr)
	if status != exitGuestPanic {
		t.Fatalf("status %d, want %d (guest panic); stderr:\n%s\nconsole:\n%s", status, exitGuestPanic, stderr.String(), stdout.String())
	}
	if !strings.Contains(stdout.String(), "Attempted to kill init") {
		t.Errorf("the console lacks the kernel's reason:\n%s", stdout.String())
	}
	if !strings.Contains(stderr.String(), "the guest kernel panicked") {
		t.Errorf("stderr does not say the guest panicked: %q", stderr.String())
	}
}

// guestArtefact returns a file scripts/setup built into build/guest/.
func guestArtefact(t *testing.T, name string) string {
	t.Helper()
	p := filepath.Join("..", "..", "build", "guest", name)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("guest artefact %s is missing (%v): run ./scripts/setup first", p, err)
	}
	return p
}

// snapshotProbeDir boots the probe in this process, runs cmd, waits for
// answer, and snapshots it into a new directory.
func snapshotProbeDir(t *testing.T, cmd, answer string) string {
	t.Helper()
	dir := t.TempDir()
	snapshotProbeInto(t, dir, cmd, answer)
	return dir
}

// snapshotProbeInto is snapshotProbeDir into an existing directory.
func snapshotProbeInto(t *testing.T, dir, cmd, answer string) {
	t.Helper()
	elf, err := probe.Path(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	outR, outW := io.Pipe()
	inR, inW := io.Pipe()
	vm, err := vmm.New(vmm.Config{KernelPath: elf, MemorySize: 32 << 20, CPUs: 1, Console: outW, ConsoleInput: inR})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	done := make(chan vmm.Result, 1)
	go func() { done <- vm.Run(context.Background()) }()
	s := newProbeSession(t, inW, outR)
	s.expect(probe.ReadyLine)
	s.send(cmd)
	s.expect(answer)
	if err := vm.Pause(); err != nil {
		t.Fatal(err)
	}
	p := vmm.SnapshotParams{StatePath: filepath.Join(dir, types.SnapshotStateFile), MemPath: filepath.Join(dir, types.SnapshotMemFile)}
	if err := vm.CreateSnapshot(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	vm.Stop()
	<-done
	go io.Copy(io.Discard, outR)
}

// restoreAndSum restores dir with volt-vmm --restore and returns what the
// guest answers to "sum PAGES", or the error output.
func restoreAndSum(t *testing.T, dir string, pages int) (string, error) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	status := runInProcess([]string{"--restore", dir}, strings.NewReader(fmt.Sprintf("sum %d\npoweroff\n", pages)), &stdout, &stderr)
	if status != exitOK {
		return "", fmt.Errorf("status %d: %s", status, stderr.String())
	}
	for _, l := range strings.Split(stdout.String(), "\n") {
		if strings.HasPrefix(l, fmt.Sprintf("sum %d sum=", pages)) {
			return l, nil
		}
	}
	return "", fmt.Errorf("no sum in %q", stdout.String())
}

// TestSnapshotKilledAtEveryStepNeverLoadsAHybrid kills a real volt-vmm
// after each step of PUT /snapshot/create over an existing snapshot: the
// directory then restores as the old snapshot or the new one, or is
// refused; a later snapshot into it succeeds and leaves nothing behind.
func TestSnapshotKilledAtEveryStepNeverLoadsAHybrid(t *testing.T) {
	kvmtest.Require(t)
	elf, err := probe.Path(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range snapshot.CreateSteps {
		t.Run(string(step), func(t *testing.T) {
			dir := snapshotProbeDir(t, "touch 20", "touched 20")
			oldSum, err := restoreAndSum(t, dir, 30)
			if err != nil {
				t.Fatal(err)
			}
			// A second VMM, in its own process, snapshots other work into
			// the same directory and is killed after step.
			sock := filepath.Join(t.TempDir(), "api.sock")
			// Confined as volt-vmm always is: the snapshot directory is
			// the only one it may write.
			cmd := exec.Command(os.Args[0], "--api-sock", sock, "--test-snapshot-kill-at", string(step), "--snapshot-dir", dir)
			cmd.Env = append(os.Environ(), asVMM+"=1")
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			vmm := startAPIVMM(ctx, t, cmd, sock)
			c, stderr := vmm.api, vmm.stderr
			s := vmm.bootProbe(ctx, t, elf)
			s.send("touch 30")
			s.expect("touched 30")
			if err := c.Pause(ctx); err != nil {
				t.Fatal(err)
			}
			err = c.CreateSnapshot(ctx, types.SnapshotCreateParams{SnapshotPath: filepath.Join(dir, types.SnapshotStateFile), MemFilePath: filepath.Join(dir, types.SnapshotMemFile)})
			werr := cmd.Wait()
			var ee *exec.ExitError
			if !errors.As(werr, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Fatalf("the VMM was not killed at %s (snapshot: %v, exit: %v): %s", step, err, werr, stderr.String())
			}
			got, err := restoreAndSum(t, dir, 30)
			switch step {
			case snapshot.StepMemoryWritten, snapshot.StepStateWritten:
				if err != nil || got != oldSum {
					t.Fatalf("killed before the renames, the old snapshot must restore: %q, %v (old %q)", got, err, oldSum)
				}
			case snapshot.StepMemoryRenamed:
				if err == nil || !strings.Contains(err.Error(), "not a pair") {
					t.Fatalf("killed between the renames, the restore must be refused: %q, %v", got, err)
				}
			default:
				if err != nil || got == oldSum {
					t.Fatalf("killed after the renames, the new snapshot must restore: %q, %v", got, err)
				}
			}
			snapshotProbeInto(t, dir, "touch 40", "touched 40")
			if _, err := restoreAndSum(t, dir, 40); err != nil {
				t.Fatalf("the snapshot after the kill does not restore: %v", err)
			}
			entries, _ := os.ReadDir(dir)
			if len(entries) != 2 {
				var names []string
				for _, e := range entries {
					names = append(names, e.Name())
				}
				t.Errorf("the directory holds %v after the kill", names)
			}
		})
	}
}
