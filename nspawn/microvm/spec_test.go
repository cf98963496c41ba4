package microvm

import (
	"slices"
	"strings"
	"testing"

	"github.com/voltvmm/volt/nspawn/instance"
)

func goodSpec() Spec {
	return Spec{Name: "vm1", Image: "busybox", Kernel: "/boot/vmlinux", MemoryBytes: 256 << 20, CPUs: 2, Store: "/var/lib/volt/cas"}
}

func TestKernelCmdlineQuotesTheCommandForVoltInit(t *testing.T) {
	for _, tc := range []struct {
		cmd  []string
		want string
	}{
		{nil, BaseCmdline},
		{[]string{"/bin/sh", "-c", "echo hi; sleep 1"}, BaseCmdline + ` volt.run="'/bin/sh' '-c' 'echo hi; sleep 1'"`},
		{[]string{"echo", "it's"}, BaseCmdline + ` volt.run="'echo' 'it'\''s'"`},
		{[]string{"printf", ""}, BaseCmdline + ` volt.run="'printf' ''"`},
	} {
		s := goodSpec()
		s.Command = tc.cmd
		got, err := KernelCmdline(&s)
		if err != nil || got != tc.want {
			t.Errorf("%q: %q, %v; want %q", tc.cmd, got, err, tc.want)
		}
	}
	s := goodSpec()
	s.Cmdline = "quiet loglevel=3"
	if got, _ := KernelCmdline(&s); got != BaseCmdline+" quiet loglevel=3" {
		t.Errorf("extra parameters: %q", got)
	}
	for _, bad := range [][]string{{"echo", `"quoted"`}, {"a\nb"}, {strings.Repeat("x", 2000)}} {
		s := goodSpec()
		s.Command = bad
		if _, err := KernelCmdline(&s); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestVMMArgs(t *testing.T) {
	s := goodSpec()
	s.GuestProfile = "nested-pvm"
	s.NetBridge = "br0"
	s.VMMFlags = []string{"--hugepages"}
	d, _ := instance.NewDir("/var/lib/volt", instance.VM, "vm1")
	a, err := VMMArgs(&s, vmmPaths(&s, d))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"--id", "vm1", "--kernel", "/boot/vmlinux", "--memory", "256M", "--cpus", "2",
		"--volume", "/var/lib/volt/vms/vm1/volume", "--cas-store", "/var/lib/volt/cas", "--console", "stdio",
		"--cmdline", BaseCmdline, "--api-sock", "/var/lib/volt/vms/vm1/sockets/api.sock",
		"--guest-profile", "nested-pvm", "--net-bridge", "br0", "--hugepages"}
	if !slices.Equal(a, want) {
		t.Errorf("args\n%q\nwant\n%q", a, want)
	}
	if l := s.Limits(); l.MemoryBytes != 256<<20+VMMOverhead || l.CPUs != 2 {
		t.Errorf("limits %+v", l)
	}
}

func TestSpecValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*Spec)
		want string
	}{
		{"relative kernel", func(s *Spec) { s.Kernel = "vmlinux" }, "absolute"},
		{"tiny memory", func(s *Spec) { s.MemoryBytes = 1 << 20 }, "--memory"},
		{"odd memory", func(s *Spec) { s.MemoryBytes = 100<<20 + 1 }, "whole MiB"},
		{"no cpus", func(s *Spec) { s.CPUs = 0 }, "--cpus"},
		{"many cpus", func(s *Spec) { s.CPUs = 33 }, "--cpus"},
		{"bad bridge", func(s *Spec) { s.NetBridge = "a/b" }, "--net-bridge"},
		{"bad profile", func(s *Spec) { s.GuestProfile = "Nested PVM" }, "--guest-profile"},
		{"bad name", func(s *Spec) { s.Name = "-x" }, "instance name"},
		{"own flag", func(s *Spec) { s.VMMFlags = []string{"--volume=/x"} }, "volt sets"},
		{"api socket flag", func(s *Spec) { s.VMMFlags = []string{"--api-sock=/x"} }, "volt sets"},
		{"jailer's flag", func(s *Spec) { s.Jail = goodJail(); s.VMMFlags = []string{"--start-time-us=1"} }, "volt-jailer passes"},
		{"relative jailer", func(s *Spec) { s.Jail = goodJail(); s.Jail.Jailer = "volt-jailer" }, "--jailer"},
		{"negative uid", func(s *Spec) { s.Jail = goodJail(); s.Jail.UID = -1 }, "--jail-uid"},
		{"uid -1 as unsigned", func(s *Spec) { s.Jail = goodJail(); s.Jail.UID = 1<<32 - 1 }, "--jail-uid"},
		{"huge gid", func(s *Spec) { s.Jail = goodJail(); s.Jail.GID = 1 << 33 }, "--jail-gid"},
		{"chroot base /", func(s *Spec) { s.Jail = goodJail(); s.Jail.ChrootBase = "/" }, "--chroot-base-dir"},
		{"relative chroot base", func(s *Spec) { s.Jail = goodJail(); s.Jail.ChrootBase = "jail" }, "--chroot-base-dir"},
		{"unclean chroot base", func(s *Spec) { s.Jail = goodJail(); s.Jail.ChrootBase = "/srv/../jail" }, "--chroot-base-dir"},
		{"jailed bridge", func(s *Spec) { s.Jail = goodJail(); s.NetBridge = "br0" }, "not supported yet"},
		{"not a flag", func(s *Spec) { s.VMMFlags = []string{"hugepages"} }, "--vmm-flag"},
	} {
		s := goodSpec()
		tc.mod(&s)
		if err := s.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
	s := goodSpec()
	if err := s.Validate(); err != nil {
		t.Errorf("good spec: %v", err)
	}
	s.Jail = goodJail()
	if err := s.Validate(); err != nil {
		t.Errorf("good jailed spec: %v", err)
	}
}
