package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/voltvmm/volt/guest/probe"
	"github.com/voltvmm/volt/vmm"
	"github.com/voltvmm/volt/vmm/api/types"
	"github.com/voltvmm/volt/vmm/kvm/kvmtest"
)

// unconfined are the flags of every test that runs volt-vmm inside the
// test binary: confinement is irreversible and process-wide, so it would
// confine the test binary itself and every later test. The confinement
// tests run volt-vmm as a child process instead.
var unconfined = []string{"--seccomp-level", "0", "--no-landlock", "--keep-capabilities"}

func runInProcess(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	return run(append(slices.Clip(args), unconfined...), stdin, stdout, stderr)
}

func TestUsageErrors(t *testing.T) {
	junk := filepath.Join(t.TempDir(), "junk")
	if err := os.WriteFile(junk, bytes.Repeat([]byte{0x90}, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	// A FIFO at a path volt-vmm reads must be refused at once: opened
	// plainly it would block until a writer came, ignoring SIGTERM.
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := unix.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	fifoSnapshot := t.TempDir()
	if err := unix.Mkfifo(filepath.Join(fifoSnapshot, "vm.state"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		args     []string
		status   int
		wantErr  string
		needsKVM bool
	}{
		{"no kernel", nil, exitUsage, "no kernel given", false},
		{"bad memory unit", []string{"--kernel", junk, "--memory", "12Q"}, exitUsage, "unknown unit", false},
		{"memory not a number", []string{"--kernel", junk, "--memory", "lots"}, exitUsage, "not a number", false},
		{"memory too small", []string{"--kernel", junk, "--memory", "1M"}, exitUsage, "below the minimum", false},
		{"zero cpus", []string{"--kernel", junk, "--cpus", "0"}, exitUsage, "vCPU count 0", false},
		{"bad console", []string{"--kernel", junk, "--console", "tty"}, exitUsage, "--console", false},
		{"bad template", []string{"--kernel", junk, "--cpu-template", "fast"}, exitUsage, "unknown CPU template", false},
		{"bad cpuid mask", []string{"--kernel", junk, "--cpuid-mask", "cx16,nope"}, exitUsage, "unknown CPU feature", false},
		{"bad protocol", []string{"--kernel", junk, "--boot-protocol", "efi"}, exitUsage, "boot-protocol", false},
		{"extra argument", []string{"--kernel", junk, "stray"}, exitUsage, "unexpected argument", false},
		{"unknown flag", []string{"--kernal", junk}, exitUsage, "unknown flag", false},
		{"missing kernel file", []string{"--kernel", "/nonexistent/vmlinux"}, exitVMMError, "kernel /nonexistent/vmlinux: no such file or directory", true},
		{"malformed kernel", []string{"--kernel", junk}, exitVMMError, "load kernel", true},
		{"missing initrd", []string{"--kernel", junk, "--initrd", "/nonexistent/initrd"}, exitVMMError, "initrd", true},
		{"kernel is a FIFO", []string{"--kernel", fifo}, exitVMMError, "kernel " + fifo + " is a named pipe (FIFO)", true},
		{"initrd is a FIFO", []string{"--kernel", junk, "--initrd", fifo}, exitVMMError, "initrd " + fifo + " is a named pipe (FIFO)", true},
		{"kernel is a device", []string{"--kernel", "/dev/zero"}, exitVMMError, "kernel /dev/zero is a character device", true},
		{"config file is a FIFO", []string{"--config-file", fifo}, exitUsage, "config file " + fifo + " is a named pipe (FIFO)", false},
		{"snapshot state is a FIFO", []string{"--restore", fifoSnapshot}, exitVMMError, "is a named pipe (FIFO)", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.needsKVM {
				kvmtest.Require(t)
			}
			var stderr bytes.Buffer
			done := make(chan int, 1)
			go func() { done <- runInProcess(tt.args, strings.NewReader(""), &bytes.Buffer{}, &stderr) }()
			var status int
			select {
			case status = <-done:
			case <-time.After(time.Minute):
				t.Fatal("volt-vmm hung")
			}
			if status != tt.status {
				t.Fatalf("status %d, want %d; stderr:\n%s", status, tt.status, stderr.String())
			}
			if !strings.Contains(stderr.String(), tt.wantErr) {
				t.Fatalf("stderr %q does not mention %q", stderr.String(), tt.wantErr)
			}
			if tt.status == exitVMMError && strings.Count(strings.TrimSpace(stderr.String()), "\n") != 0 {
				t.Errorf("error is not one line: %q", stderr.String())
			}
		})
	}
}

func TestBootTimerOnProbe(t *testing.T) {
	kvmtest.Require(t)
	elf, err := probe.Path(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	in := strings.NewReader("echo over stdio\npoweroff\n")
	status := runInProcess([]string{"--kernel", elf, "--memory", "32M", "--cpus", "2", "--boot-timer"}, in, &stdout, &stderr)
	if status != exitOK {
		t.Fatalf("status %d; stderr:\n%s\nstdout:\n%s", status, stderr.String(), stdout.String())
	}
	if !strings.Contains(stdout.String(), "volt-probe: booted cpus=2") || !strings.Contains(stdout.String(), "\nover stdio\n") {
		t.Errorf("console output:\n%s", stdout.String())
	}
	if !regexp.MustCompile(`(?m)^boot-timer: exec→pid1 \d+ µs$`).MatchString(stderr.String()) {
		t.Errorf("no boot-timer pid1 line in:\n%s", stderr.String())
	}
}

func TestConsoleToFile(t *testing.T) {
	kvmtest.Require(t)
	elf, err := probe.Path(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	log := filepath.Join(t.TempDir(), "console.log")
	// With the console in a file the guest gets no input; stop it with a
	// cancelled run instead: the probe waits for commands forever.
	var stderr bytes.Buffer
	done := make(chan int)
	go func() {
		done <- runInProcess([]string{"--kernel", elf, "--console", "file:" + log, "--cpus", "1"}, strings.NewReader(""), &bytes.Buffer{}, &stderr)
	}()
	deadline := make(chan struct{})
	go func() {
		for {
			b, _ := os.ReadFile(log)
			if bytes.Contains(b, []byte(probe.ReadyLine)) {
				close(deadline)
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	<-deadline
	p, _ := os.FindProcess(os.Getpid())
	p.Signal(os.Interrupt)
	if status := <-done; status != exitStopped {
		t.Fatalf("status %d, want %d (stopped by signal); stderr: %s", status, exitStopped, stderr.String())
	}
}

func TestAPIUsageErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	regular := write("not-a-socket", "keep")
	tests := []struct {
		name    string
		args    []string
		status  int
		wantErr string
	}{
		{"no-api with api-sock", []string{"--no-api", "--api-sock", filepath.Join(dir, "s")}, exitUsage, "contradict"},
		{"config file and kernel", []string{"--config-file", regular, "--kernel", regular}, exitUsage, "use one"},
		{"bad id", []string{"--api-sock", filepath.Join(dir, "s"), "--id", "a b"}, exitUsage, "--id: instance id"},
		{"bad cpus with api", []string{"--api-sock", filepath.Join(dir, "s"), "--cpus", "0"}, exitUsage, "vCPU count 0"},
		{"missing config file", []string{"--config-file", filepath.Join(dir, "nope.json")}, exitUsage, "no such file"},
		{"config file unknown field", []string{"--config-file", write("unknown.json", `{"boot-source": {"kernel_image_path": "/k"}, "machine_config": {}}`)}, exitUsage, `unknown field "machine_config"`},
		{"config file balloon", []string{"--config-file", write("balloon.json", `{"boot-source": {"kernel_image_path": "/k"}, "balloon": {"amount_mib": 1}}`)}, exitUsage, `section "balloon" is not supported`},
		{"config file missing kernel", []string{"--config-file", write("nokernel.json", `{"boot-source": {"kernel_image_path": "/nonexistent/vmlinux"}}`)}, exitUsage, "boot-source: kernel_image_path"},
		{"config file bad machine", []string{"--config-file", write("vcpus.json", `{"boot-source": {"kernel_image_path": "`+regular+`"}, "machine-config": {"vcpu_count": 64, "mem_size_mib": 128}}`)}, exitUsage, "vcpu_count must be between 1 and 32"},
		{"socket path is a regular file", []string{"--api-sock", regular}, exitVMMError, "not a socket"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stderr bytes.Buffer
			done := make(chan int, 1)
			go func() { done <- runInProcess(tt.args, strings.NewReader(""), &bytes.Buffer{}, &stderr) }()
			var status int
			select {
			case status = <-done:
			case <-time.After(time.Minute):
				t.Fatal("volt-vmm hung")
			}
			if status != tt.status {
				t.Fatalf("status %d, want %d; stderr:\n%s", status, tt.status, stderr.String())
			}
			if !strings.Contains(stderr.String(), tt.wantErr) {
				t.Fatalf("stderr %q does not mention %q", stderr.String(), tt.wantErr)
			}
		})
	}
	if b, _ := os.ReadFile(regular); string(b) != "keep" {
		t.Fatal("the regular file at --api-sock was changed")
	}
}

// lockedBuffer is the console output, written by a vCPU thread and read
// by the test.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestAPISocketBootsProbeAndExitsOnPoweroff(t *testing.T) {
	kvmtest.Require(t)
	elf, err := probe.Path(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "volt.sock")
	inR, inW := io.Pipe()
	defer inW.Close()
	var stdout lockedBuffer
	var stderr bytes.Buffer
	done := make(chan int, 1)
	go func() { done <- runInProcess([]string{"--api-sock", sock, "--id", "cli-test"}, inR, &stdout, &stderr) }()
	waitFor(t, "the API socket", func() bool {
		st, err := os.Lstat(sock)
		return err == nil && st.Mode().Type() == os.ModeSocket
	})
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	put := func(path, body string) {
		t.Helper()
		req, _ := http.NewRequest("PUT", "http://localhost"+path, strings.NewReader(body))
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusNoContent {
			t.Fatalf("PUT %s: %d %s", path, resp.StatusCode, b)
		}
	}
	resp, err := client.Get("http://localhost/")
	if err != nil {
		t.Fatal(err)
	}
	info, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(info), `"id":"cli-test"`) || !strings.Contains(string(info), `"state":"Not started"`) {
		t.Errorf("GET /: %s", info)
	}
	put("/boot-source", `{"kernel_image_path": "`+elf+`"}`)
	put("/machine-config", `{"vcpu_count": 2, "mem_size_mib": 32}`)
	put("/actions", `{"action_type": "InstanceStart"}`)
	waitFor(t, "the probe's ready line", func() bool { return strings.Contains(stdout.String(), probe.ReadyLine) })
	if !strings.Contains(stdout.String(), "volt-probe: booted cpus=2") {
		t.Errorf("console: %s", stdout.String())
	}
	io.WriteString(inW, "poweroff\n")
	select {
	case status := <-done:
		if status != exitOK {
			t.Fatalf("status %d; stderr:\n%s", status, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("volt-vmm did not exit after the guest powered off")
	}
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Errorf("socket left behind: %v", err)
	}
}

func TestConfigFileBootsProbe(t *testing.T) {
	kvmtest.Require(t)
	elf, err := probe.Path(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(t.TempDir(), "vm.json")
	body := `{
  "boot-source": {"kernel_image_path": "` + elf + `", "boot_args": "console=ttyS0"},
  "machine-config": {"vcpu_count": 2, "mem_size_mib": 32, "smt": false},
  "drives": [],
  "network-interfaces": [],
  "balloon": null
}`
	if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	status := runInProcess([]string{"--no-api", "--config-file", cfg}, strings.NewReader("echo from a config file\npoweroff\n"), &stdout, &stderr)
	if status != exitOK {
		t.Fatalf("status %d; stderr:\n%s", status, stderr.String())
	}
	if !strings.Contains(stdout.String(), "volt-probe: booted cpus=2") || !strings.Contains(stdout.String(), "\nfrom a config file\n") {
		t.Errorf("console:\n%s", stdout.String())
	}
}

func TestRestoreFromDirectory(t *testing.T) {
	kvmtest.Require(t)
	elf, err := probe.Path(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	outR, outW := io.Pipe()
	inR, inW := io.Pipe()
	vm, err := vmm.New(vmm.Config{KernelPath: elf, MemorySize: 32 << 20, CPUs: 2, Console: outW, ConsoleInput: inR})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	done := make(chan vmm.Result, 1)
	go func() { done <- vm.Run(context.Background()) }()
	sc := bufio.NewScanner(outR)
	var touched string
	for sc.Scan() {
		if sc.Text() == probe.ReadyLine {
			fmt.Fprintln(inW, "touch 20")
		}
		if strings.HasPrefix(sc.Text(), "touched 20 ") {
			touched = strings.TrimPrefix(sc.Text(), "touched 20")
			break
		}
	}
	go io.Copy(io.Discard, outR)
	if err := vm.Pause(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	p := vmm.SnapshotParams{StatePath: filepath.Join(dir, types.SnapshotStateFile), MemPath: filepath.Join(dir, types.SnapshotMemFile)}
	if err := vm.CreateSnapshot(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	vm.Stop()
	<-done

	var stdout, stderr bytes.Buffer
	status := runInProcess([]string{"--restore", dir, "--boot-timer"}, strings.NewReader("sum 20\npoweroff\n"), &stdout, &stderr)
	if status != exitOK {
		t.Fatalf("status %d; stderr:\n%s", status, stderr.String())
	}
	if !strings.Contains(stdout.String(), "sum 20"+touched) {
		t.Errorf("restored guest printed:\n%s\nwant sum 20%s", stdout.String(), touched)
	}
	if !strings.Contains(stderr.String(), "boot-timer: exec→guest-entry") {
		t.Errorf("no restore timeline in:\n%s", stderr.String())
	}

	stderr.Reset()
	if status := runInProcess([]string{"--restore", t.TempDir()}, strings.NewReader(""), &bytes.Buffer{}, &stderr); status != exitVMMError || !strings.Contains(stderr.String(), "vm.state") {
		t.Errorf("restore from an empty directory: status %d, stderr %q", status, stderr.String())
	}
	if status := runInProcess([]string{"--restore", dir, "--kernel", elf}, strings.NewReader(""), &bytes.Buffer{}, &stderr); status != exitUsage {
		t.Errorf("--restore with --kernel: status %d", status)
	}
}
