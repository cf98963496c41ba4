package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/voltvmm/volt/bench"
)

// The guest decides the defaults the flags leave open: the probe's are
// those voltbench pool always had; a Linux guest gets its initramfs,
// volt-init's command line, minutes for its limits, and a cold-boot arm of
// a few boots at one caller.
func TestPoolFlagsFillTheGuestsDefaults(t *testing.T) {
	for _, tc := range []struct {
		name  string
		args  []string
		check func(t *testing.T, o poolOptions)
	}{
		{"probe defaults", nil, func(t *testing.T, o poolOptions) {
			want := poolOptions{guest: bench.GuestProbe, kernel: bench.DefaultProbe, cmdline: "console=ttyS0 reboot=k panic=1 probe.agent",
				memoryMiB: 64, timeout: 30 * time.Second, bootTimeout: 30 * time.Second, readyTimeout: 2 * time.Minute, bootPoll: 200 * time.Microsecond,
				samples: 100, retries: 2, maxCallers: 64}
			same(t, o, want)
			if !slices.Equal(o.callers, []int{1, 8, 64}) || o.bootCallers != nil || o.bootSamples != 0 {
				t.Errorf("callers %v, cold boot at %v × %d", o.callers, o.bootCallers, o.bootSamples)
			}
			if !slices.Equal(o.ask.Args, []string{"echo", "answer"}) || !o.agent || !o.coldBoot || !o.coldRestore || !o.primed {
				t.Errorf("ask %q, agent %v, arms %v %v %v", o.ask.Args, o.agent, o.coldBoot, o.coldRestore, o.primed)
			}
		}},
		{"probe without an agent", []string{"--agent=false"}, func(t *testing.T, o poolOptions) {
			if o.cmdline != "console=ttyS0 reboot=k panic=1" || o.agent || o.primed {
				t.Errorf("cmdline %q, agent %v, primed arm %v (it primes through the agent)", o.cmdline, o.agent, o.primed)
			}
		}},
		{"linux defaults", []string{"--guest", "linux", "--guest-profile", "nested-pvm"}, func(t *testing.T, o poolOptions) {
			want := poolOptions{guest: bench.GuestLinux, kernel: bench.DefaultLinuxKernel, initrd: bench.DefaultLinuxInitrd, cmdline: bench.PoolLinuxCmdline,
				guestProfile: "nested-pvm", memoryMiB: 128, timeout: 5 * time.Minute, bootTimeout: 15 * time.Minute, readyTimeout: 15 * time.Minute,
				bootPoll: 20 * time.Millisecond, samples: 100, retries: 2, maxCallers: 64, bootSamples: 3}
			same(t, o, want)
			if !slices.Equal(o.bootCallers, []int{1}) {
				t.Errorf("cold boot at callers %v, want [1]", o.bootCallers)
			}
		}},
		{"linux, the brief's files", []string{"--guest", "linux", "--kernel", "build/guest/bzImage", "--initrd", "/x/initramfs.cpio", "--memory", "256", "--callers", "1,8"}, func(t *testing.T, o poolOptions) {
			if o.kernel != "build/guest/bzImage" || o.initrd != "/x/initramfs.cpio" || o.memoryMiB != 256 || o.maxCallers != 8 {
				t.Errorf("kernel %q initrd %q memory %d max callers %d", o.kernel, o.initrd, o.memoryMiB, o.maxCallers)
			}
		}},
		{"linux cold boot where 1 caller is not run", []string{"--guest", "linux", "--callers", "8,64"}, func(t *testing.T, o poolOptions) {
			if !slices.Equal(o.bootCallers, []int{8}) {
				t.Errorf("cold boot at callers %v, want the smallest, [8]", o.bootCallers)
			}
		}},
		{"linux cold boot shaped by hand", []string{"--guest", "linux", "--callers", "1,8", "--cold-boot-samples", "8", "--cold-boot-callers", "8", "--cold-boot-timeout", "20m"}, func(t *testing.T, o poolOptions) {
			if o.bootSamples != 8 || !slices.Equal(o.bootCallers, []int{8}) || o.bootTimeout != 20*time.Minute {
				t.Errorf("cold boot %d samples at %v, timeout %v", o.bootSamples, o.bootCallers, o.bootTimeout)
			}
		}},
		{"probe cold boot shaped by hand", []string{"--cold-boot-samples", "10", "--cold-boot-callers", "1,64"}, func(t *testing.T, o poolOptions) {
			if o.bootSamples != 10 || !slices.Equal(o.bootCallers, []int{1, 64}) {
				t.Errorf("cold boot %d samples at %v", o.bootSamples, o.bootCallers)
			}
		}},
		{"own cmdline, ping, no retries, limits", []string{"--cmdline", "console=ttyS0 x", "--ask", "", "--retries", "0", "--timeout", "1m", "--ready-timeout", "1h"}, func(t *testing.T, o poolOptions) {
			if o.cmdline != "console=ttyS0 x" || o.ask.Args != nil || o.retries != 0 || o.timeout != time.Minute || o.readyTimeout != time.Hour {
				t.Errorf("cmdline %q ask %q retries %d timeout %v ready %v", o.cmdline, o.ask.Args, o.retries, o.timeout, o.readyTimeout)
			}
		}},
		{"our daemon's CONNECT timeout", []string{"--guest", "linux", "--vsock-connect-timeout", "15m"}, func(t *testing.T, o poolOptions) {
			if o.vsockConnectTimeout != 15*time.Minute {
				t.Errorf("vsock connect timeout %v, want 15m", o.vsockConnectTimeout)
			}
			args := strings.Join(poolServeArgs("volt-vmm", "p.sock", "s", o.vsockConnectTimeout), " ")
			if !strings.HasSuffix(args, " --vsock-connect-timeout 15m0s") {
				t.Errorf("voltpool %s: want --vsock-connect-timeout 15m0s", args)
			}
			if args := strings.Join(poolServeArgs("volt-vmm", "p.sock", "s", 0), " "); strings.Contains(args, "vsock") {
				t.Errorf("voltpool %s: no --vsock-connect-timeout unless asked", args)
			}
		}},
		{"a daemon of the caller's", []string{"--socket", "/run/p.sock", "--template", "fn", "--cold-template", "fn-cold", "--primed-template", "fn-primed", "--cold-boot=false"}, func(t *testing.T, o poolOptions) {
			if o.socket != "/run/p.sock" || o.template != "fn" || o.coldTemplate != "fn-cold" || o.primedTemplate != "fn-primed" || o.coldBoot {
				t.Errorf("%+v", o)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var errb bytes.Buffer
			o, err := parsePoolArgs(tc.args, &errb)
			if err != nil {
				t.Fatalf("%q: %v", tc.args, err)
			}
			tc.check(t, o)
		})
	}
}

// same compares the scalar fields of got against want.
func same(t *testing.T, got, want poolOptions) {
	t.Helper()
	type scalars struct {
		guest, kernel, initrd, cmdline, profile string
		memory                                  int64
		timeout, boot, ready, poll              time.Duration
		samples, retries, maxCallers, bootN     int
	}
	s := func(o poolOptions) scalars {
		return scalars{o.guest, o.kernel, o.initrd, o.cmdline, o.guestProfile, o.memoryMiB, o.timeout, o.bootTimeout, o.readyTimeout, o.bootPoll,
			o.samples, o.retries, o.maxCallers, o.bootSamples}
	}
	if s(got) != s(want) {
		t.Errorf("options\n got %+v\nwant %+v", s(got), s(want))
	}
}

func TestPoolFlagsRefuseBadInput(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"extra"}, `unexpected argument "extra"`},
		{[]string{"--guest", "windows"}, `--guest "windows"`},
		{[]string{"--initrd", "build/guest/initramfs.cpio"}, "--initrd is for --guest linux"},
		{[]string{"--callers", "0"}, "not a count from 1 to 1024"},
		{[]string{"--callers", "1,x"}, "not a count"},
		{[]string{"--callers", "8,8"}, "8 given twice"},
		{[]string{"--callers", ""}, "not a count"},
		{[]string{"--samples", "0"}, "--samples 0"},
		{[]string{"--memory", "-1"}, "--memory -1"},
		{[]string{"--retries", "-1"}, "--retries -1"},
		{[]string{"--retries", "1000"}, "--retries 1000"},
		{[]string{"--timeout", "0s"}, "--timeout 0s"},
		{[]string{"--cold-boot-timeout", "-1s"}, "--cold-boot-timeout -1s"},
		{[]string{"--ready-timeout", "2h"}, "at most 1h"},
		{[]string{"--vsock-connect-timeout", "0s"}, "--vsock-connect-timeout 0s: more than 0"},
		{[]string{"--vsock-connect-timeout", "2h"}, "at most 1h"},
		{[]string{"--socket", "/run/p.sock", "--template", "fn", "--vsock-connect-timeout", "1m"}, "for a daemon of our own"},
		{[]string{"--socket", "/run/p.sock"}, "--socket needs --template"},
		{[]string{"--template", "fn"}, "give its --socket"},
		{[]string{"--primed-template", "fn-p"}, "give its --socket"},
		{[]string{"--socket", "/run/p.sock", "--template", "fn", "--primed-template", "fn-p", "--primed=false"}, "not with --primed=false"},
		{[]string{"--agent=false", "--primed"}, "primes through the agent"},
		{[]string{"--cold-boot=false", "--cold-boot-samples", "3"}, "not with --cold-boot=false"},
		{[]string{"--cold-boot-samples", "0"}, "--cold-boot-samples 0"},
		{[]string{"--cold-boot-callers", "2"}, "2 is not one of --callers"},
		{[]string{"--guest", "linux", "--callers", "1,8", "--cold-boot-callers", "64"}, "64 is not one of --callers"},
		{[]string{"--ask", "echo a\x00b"}, "NUL"},
		{[]string{"--no-such-flag"}, "unknown flag"},
		{[]string{"--csv", "/"}, "refusing to replace it"},
		{[]string{"--csv", "/no/such/dir/x.csv"}, "directory /no/such/dir"},
	} {
		var errb bytes.Buffer
		_, err := parsePoolArgs(tc.args, &errb)
		if !errors.Is(err, errPoolUsage) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want a usage error saying %q", tc.args, err, tc.want)
		}
	}
	// Through the command: exit 2 and the message, never a daemon started.
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"pool", "--guest", "linux", "--callers", "1,1"}, &out, &errb); code != exitUsage || !strings.Contains(errb.String(), "1 given twice") {
		t.Errorf("exit %d, %q", code, errb.String())
	}
	if _, err := parsePoolArgs([]string{"--help"}, &errb); !errors.Is(err, pflag.ErrHelp) {
		t.Errorf("--help: %v", err)
	}
}

// The flags reach the template voltpool boots and the cold-boot arm alike:
// same kernel, initramfs, command line, memory and profile, so the arms
// measure one guest.
func TestPoolFlagsWireTheTemplateAndTheColdBoot(t *testing.T) {
	abs := func(p string) string { return "/repo/" + p }
	for _, tc := range []struct {
		name       string
		args       []string
		wantInitrd string
		wantArgs   []string
	}{
		{"probe", nil, "", []string{"--memory", "64M", "--cmdline", "console=ttyS0 reboot=k panic=1 probe.agent"}},
		{"linux", []string{"--guest", "linux", "--kernel", "build/guest/bzImage", "--guest-profile", "nested-pvm", "--callers", "1,8"}, "/repo/" + bench.DefaultLinuxInitrd,
			[]string{"--memory", "128M", "--cmdline", bench.PoolLinuxCmdline, "--guest-profile", "nested-pvm"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var errb bytes.Buffer
			o, err := parsePoolArgs(tc.args, &errb)
			if err != nil {
				t.Fatal(err)
			}
			spec := o.templateSpec("bench", abs)
			if spec.Kernel != abs(o.kernel) || spec.Initrd != tc.wantInitrd || spec.Cmdline != o.cmdline || spec.MemoryMiB != o.memoryMiB ||
				spec.GuestProfile != o.guestProfile || !spec.Vsock || spec.Warm != o.maxCallers || spec.CPUs != 1 || spec.ReadyTimeout != o.readyTimeout.String() {
				t.Errorf("template spec %+v", spec)
			}
			b := o.coldBootSpec("/repo/bin/volt-vmm", abs, "/tmp/w")
			if b == nil {
				t.Fatal("no cold-boot arm")
			}
			if b.Kernel != spec.Kernel || b.Initrd != spec.Initrd || !slices.Equal(b.Args, tc.wantArgs) || !b.Agent ||
				b.Timeout != o.bootTimeout || b.Samples != o.bootSamples || !slices.Equal(b.Callers, o.bootCallers) || b.Poll != o.bootPoll {
				t.Errorf("cold boot %+v", b)
			}
		})
	}
	var errb bytes.Buffer
	o, err := parsePoolArgs([]string{"--cold-boot=false"}, &errb)
	if err != nil {
		t.Fatal(err)
	}
	if b := o.coldBootSpec("/v", abs, "/w"); b != nil {
		t.Errorf("--cold-boot=false still has a cold-boot arm: %+v", b)
	}
}

// --csv holds one row per stage of every successful cycle, the header
// first, and replaces a file already there.
func TestPoolSamplesCSV(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pool.csv")
	if err := os.WriteFile(path, []byte("old\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var p poolSamples
	p.observe(bench.PoolArmWarm, 8, bench.PoolStageAcquire, 2500*time.Microsecond)
	p.observe(bench.PoolArmColdBoot, 1, bench.PoolStageFirstAnswer, 101*time.Second)
	if err := p.write(path); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if want := "arm,callers,stage,us\nwarm,8,acquire,2500\ncold-boot,1,first-answer,101000000\n"; string(b) != want {
		t.Errorf("CSV:\n%s\nwant:\n%s", b, want)
	}
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := p.write(fifo); err == nil || !strings.Contains(err.Error(), "refusing to replace it") {
		t.Errorf("CSV onto a FIFO: %v", err)
	}
}
