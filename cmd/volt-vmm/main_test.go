package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/voltvmm/volt/guest/probe"
	"github.com/voltvmm/volt/vmm/kvm/kvmtest"
)

func TestUsageErrors(t *testing.T) {
	junk := filepath.Join(t.TempDir(), "junk")
	if err := os.WriteFile(junk, bytes.Repeat([]byte{0x90}, 4096), 0o644); err != nil {
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
		{"missing kernel file", []string{"--kernel", filepath.Join(t.TempDir(), "nope")}, exitVMMError, "open kernel", true},
		{"malformed kernel", []string{"--kernel", junk}, exitVMMError, "load kernel", true},
		{"missing initrd", []string{"--kernel", junk, "--initrd", "/nonexistent/initrd"}, exitVMMError, "initrd", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.needsKVM {
				kvmtest.Require(t)
			}
			var stderr bytes.Buffer
			status := run(tt.args, strings.NewReader(""), &bytes.Buffer{}, &stderr)
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
	status := run([]string{"--kernel", elf, "--memory", "32M", "--cpus", "2", "--boot-timer"}, in, &stdout, &stderr)
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
		done <- run([]string{"--kernel", elf, "--console", "file:" + log, "--cpus", "1"}, strings.NewReader(""), &bytes.Buffer{}, &stderr)
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
