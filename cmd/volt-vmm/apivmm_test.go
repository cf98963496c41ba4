package main

import (
	"context"
	"io"
	"os/exec"
	"testing"
	"time"

	"github.com/voltvmm/volt/guest/probe"
	"github.com/voltvmm/volt/vmm/api/client"
	"github.com/voltvmm/volt/vmm/api/types"
)

// apiVMM is a volt-vmm child process serving its API socket: its console
// (in, out), its stderr and a client of the socket, which has answered.
// The process is killed when the test ends, if it still runs.
type apiVMM struct {
	cmd    *exec.Cmd
	in     io.WriteCloser
	out    io.ReadCloser
	stderr *lockedBuffer
	api    *client.Client
}

// startAPIVMM starts cmd, a volt-vmm whose API socket is sock, and waits
// until the socket answers.
func startAPIVMM(ctx context.Context, t *testing.T, cmd *exec.Cmd, sock string) *apiVMM {
	t.Helper()
	v := &apiVMM{cmd: cmd, stderr: &lockedBuffer{}}
	var err error
	if v.in, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if v.out, err = cmd.StdoutPipe(); err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = v.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill() })
	v.api = client.New(sock)
	t.Cleanup(v.api.Close)
	if _, err := v.api.WaitReady(ctx, time.Millisecond); err != nil {
		t.Fatalf("%v\n%s", err, v.stderr.String())
	}
	return v
}

// bootProbe configures the probe at elf (1 vCPU, 32 MiB) over the API,
// starts it and waits for its ready line.
func (v *apiVMM) bootProbe(ctx context.Context, t *testing.T, elf string) *probeSession {
	t.Helper()
	if err := v.api.PutBootSource(ctx, types.BootSource{KernelImagePath: elf}); err != nil {
		t.Fatal(err)
	}
	if err := v.api.PutMachineConfig(ctx, types.MachineConfiguration{VCPUCount: 1, MemSizeMib: 32}); err != nil {
		t.Fatal(err)
	}
	if err := v.api.Start(ctx); err != nil {
		t.Fatalf("%v\n%s", err, v.stderr.String())
	}
	s := newProbeSession(t, v.in, v.out)
	s.expect(probe.ReadyLine)
	return s
}
