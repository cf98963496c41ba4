package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/voltvmm/volt/vmm/kvm"
	"github.com/voltvmm/volt/vmm/memory"
	"github.com/voltvmm/volt/vmm/snapshot"
)

func TestUsageAndErrors(t *testing.T) {
	dir := t.TempDir()
	junk := filepath.Join(dir, "junk")
	os.WriteFile(junk, []byte("not a snapshot"), 0o600)
	// FIFOs where files are read must be refused, not block forever.
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	fifoSnap := filepath.Join(dir, "fifo-snap")
	os.Mkdir(fifoSnap, 0o755)
	for _, name := range []string{"vm.state", "vm.mem"} {
		if err := unix.Mkfifo(filepath.Join(fifoSnap, name), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		args   []string
		status int
		want   string
	}{
		{nil, 2, "usage"},
		{[]string{"info"}, 2, "usage"},
		{[]string{"frobnicate", "x"}, 2, "usage"},
		{[]string{"info", junk}, 1, "bad magic"},
		{[]string{"info", filepath.Join(dir, "missing")}, 1, "no such file"},
		{[]string{"merge", dir, dir}, 1, "vm.state"},
		{[]string{"info", fifo}, 1, "snapshot state " + fifo + " is a named pipe (FIFO)"},
		{[]string{"merge", fifoSnap, fifoSnap}, 1, "is a named pipe (FIFO)"},
		{[]string{"info", "/dev/zero"}, 1, "snapshot state /dev/zero is a character device"},
	}
	for _, tt := range tests {
		var stdout, stderr bytes.Buffer
		if got := run(tt.args, &stdout, &stderr); got != tt.status || !strings.Contains(stderr.String(), tt.want) {
			t.Errorf("run(%q) = %d, stderr %q; want %d and %q", tt.args, got, stderr.String(), tt.status, tt.want)
		}
	}
}

func TestInfoSummarisesAValidPair(t *testing.T) {
	// A minimal valid snapshot, written through the real writer.
	mem, err := memory.New(memory.Config{Size: 2 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	st := &snapshot.VMState{
		Machine: snapshot.Machine{CPUs: 1, MemorySize: 2 << 20},
		Memory:  snapshot.MemoryState{Size: 2 << 20, Regions: []snapshot.Region{{Size: 2 << 20}}},
		VCPUs:   []snapshot.VCPUState{{CPUID: make([]kvm.CPUIDEntry, 1)}},
	}
	dir, other := t.TempDir(), t.TempDir()
	for _, d := range []string{dir, other} {
		if _, err := snapshot.Create(snapshot.CreateParams{StatePath: filepath.Join(d, "vm.state"), MemPath: filepath.Join(d, "vm.mem"), State: st, Memory: mem}); err != nil {
			t.Fatal(err)
		}
	}
	var stdout, stderr bytes.Buffer
	if got := run([]string{"info", filepath.Join(dir, "vm.state"), filepath.Join(dir, "vm.mem")}, &stdout, &stderr); got != 0 {
		t.Fatalf("info: %d %s", got, stderr.String())
	}
	for _, want := range []string{fmt.Sprintf("format %d.%d, full snapshot: 1 vCPUs, 2M memory", snapshot.MajorVersion, snapshot.MinorVersion), "memory file: full, 2M of RAM", "complete"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("info printed %q, want %q", stdout.String(), want)
		}
	}
	stdout.Reset()
	stderr.Reset()
	if got := run([]string{"info", filepath.Join(dir, "vm.state"), filepath.Join(other, "vm.mem")}, &stdout, &stderr); got != 1 || !strings.Contains(stderr.String(), "are not a pair") {
		t.Errorf("info on a mismatched pair: %d %q", got, stderr.String())
	}
}

func TestImportMovesMemoryIntoAStore(t *testing.T) {
	mem, err := memory.New(memory.Config{Size: 2 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	mem.WriteUint8(4096, 7)
	st := &snapshot.VMState{
		Machine: snapshot.Machine{CPUs: 1, MemorySize: 2 << 20},
		Memory:  snapshot.MemoryState{Size: 2 << 20, Regions: []snapshot.Region{{Size: 2 << 20}}},
		VCPUs:   []snapshot.VCPUState{{CPUID: make([]kvm.CPUIDEntry, 1)}},
	}
	dir := t.TempDir()
	if _, err := snapshot.Create(snapshot.CreateParams{StatePath: filepath.Join(dir, "vm.state"), MemPath: filepath.Join(dir, "vm.mem"), State: st, Memory: mem}); err != nil {
		t.Fatal(err)
	}
	store := filepath.Join(t.TempDir(), "cas")
	var stdout, stderr bytes.Buffer
	if got := run([]string{"import", dir, store}, &stdout, &stderr); got != 0 || !strings.Contains(stdout.String(), "is manifest") {
		t.Fatalf("import: %d %q %q", got, stdout.String(), stderr.String())
	}
	stdout.Reset()
	if got := run([]string{"info", filepath.Join(dir, "vm.state")}, &stdout, &stderr); got != 0 || !strings.Contains(stdout.String(), "memory in a CAS store: manifest ") {
		t.Fatalf("info after import: %d %q", got, stdout.String())
	}
	stderr.Reset()
	if got := run([]string{"import", dir, store}, &stdout, &stderr); got != 1 || !strings.Contains(stderr.String(), "already has its memory in a CAS store") {
		t.Errorf("second import: %d %q", got, stderr.String())
	}
}
