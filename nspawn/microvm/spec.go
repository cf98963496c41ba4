// Package microvm runs Volt's VMs the way package nspawn runs containers:
// the same images (an ext4 file system in the CAS), the same state layout
// and records, the same managers (a transient systemd unit, or a
// supervised child), and a copy-on-write cas/volume per instance, here
// handed to volt-vmm as its root disk (--volume, --cas-store), so that the
// VM reads the image's chunks from the store and writes into its own
// overlay. volt-vmm is run as a program, directly or through volt-jailer
// (jail.go): this package imports nothing of the VMM or the jailer.
package microvm

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/voltvmm/volt/cas"
	"github.com/voltvmm/volt/nspawn/instance"
)

// Spec is a VM as asked for: spec.json in its state directory.
type Spec struct {
	Name        string     `json:"name"`
	Image       string     `json:"image"`
	ImageDigest cas.Digest `json:"image_digest"`
	Store       string     `json:"store"`
	Kernel      string     `json:"kernel"` // absolute path
	MemoryBytes int64      `json:"memory_bytes"`
	CPUs        int        `json:"cpus"`
	// NetBridge, if set, gets a TAP for the guest's virtio-net (volt-vmm
	// --net-bridge).
	NetBridge string `json:"net_bridge,omitempty"`
	// GuestProfile is volt-vmm's --guest-profile: always explicit, never
	// detected (nested-pvm for nested, software-assisted KVM).
	GuestProfile string `json:"guest_profile,omitempty"`
	// Command is what volt-init runs (volt.run); empty: its default shell.
	Command []string `json:"command,omitempty"`
	// Cmdline is added to the kernel command line.
	Cmdline string `json:"cmdline,omitempty"`
	VMM     string `json:"vmm"` // volt-vmm's absolute path
	// VMMFlags are more volt-vmm flags, passed as given (--no-seccomp,
	// --hugepages, ...); the ones this package sets are refused.
	VMMFlags []string `json:"vmm_flags,omitempty"`
	// Jail, if set, starts volt-vmm through volt-jailer (jail.go).
	Jail      *Jail     `json:"jail,omitempty"`
	CreatedAt time.Time `json:"created_at"`
}

// ownFlags are the volt-vmm flags VMMArgs sets: a --vmm-flag may not
// change them, or the VM would not be the instance volt records.
var ownFlags = []string{"--id", "--kernel", "--memory", "--cpus", "--volume", "--cas-store", "--console", "--cmdline",
	"--guest-profile", "--net-bridge", "--rootfs", "--drive", "--restore", "--config-file", "--api-sock", "--no-api"}

// jailerFlags are the volt-vmm flags volt-jailer passes itself.
var jailerFlags = []string{"--start-time-us"}

// Limits and defaults.
const (
	DefaultMemory = 256 << 20
	MinMemory     = 16 << 20
	MaxCPUs       = 32 // volt-vmm's limit, as Firecracker's
	// VMMOverhead is what the cgroup allows beyond guest memory for the
	// VMM process itself (its heap, threads, page tables).
	VMMOverhead = 128 << 20
	// maxCmdline is x86's COMMAND_LINE_SIZE less room for what volt-vmm
	// and the guest profile add.
	maxCmdline = 1536
)

// BaseCmdline is volt-vmm's default kernel command line.
const BaseCmdline = "console=ttyS0 reboot=k panic=1"

// Validate checks the spec without touching the image.
func (s *Spec) Validate() error {
	if err := instance.ValidateName(s.Name); err != nil {
		return err
	}
	if !filepath.IsAbs(s.Kernel) {
		return fmt.Errorf("--kernel %q: want an absolute path", s.Kernel)
	}
	if s.MemoryBytes < MinMemory || s.MemoryBytes%(1<<20) != 0 {
		return fmt.Errorf("--memory %d bytes: want whole MiB, at least %d MiB", s.MemoryBytes, MinMemory>>20)
	}
	if s.CPUs < 1 || s.CPUs > MaxCPUs {
		return fmt.Errorf("--cpus %d: want 1 to %d", s.CPUs, MaxCPUs)
	}
	if s.NetBridge != "" && (len(s.NetBridge) > 15 || strings.ContainsAny(s.NetBridge, "/ :\x00")) {
		return fmt.Errorf("--net-bridge %q: not an interface name", s.NetBridge)
	}
	if s.GuestProfile != "" && !validWord(s.GuestProfile) {
		return fmt.Errorf("--guest-profile %q", s.GuestProfile)
	}
	for _, f := range s.VMMFlags {
		name, _, _ := strings.Cut(f, "=")
		if !strings.HasPrefix(f, "--") || len(name) < 3 || strings.ContainsAny(f, "\n\x00") {
			return fmt.Errorf("--vmm-flag %q: want a volt-vmm flag such as --no-seccomp or --hugepages=true", f)
		}
		for _, own := range ownFlags {
			if name == own {
				return fmt.Errorf("--vmm-flag %s: volt sets that one itself (use volt vm run's own flags)", name)
			}
		}
		if s.Jail != nil && slices.Contains(jailerFlags, name) {
			return fmt.Errorf("--vmm-flag %s: volt-jailer passes that one itself", name)
		}
	}
	if s.Jail != nil {
		if err := s.Jail.validate(); err != nil {
			return err
		}
		if s.NetBridge != "" {
			return errors.New("--net-bridge with --jail: not supported yet (the jailed volt-vmm has no CAP_NET_ADMIN to make its TAP, and volt does not make one for it)")
		}
	}
	if _, err := KernelCmdline(s); err != nil {
		return err
	}
	return nil
}

func validWord(s string) bool {
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return s != ""
}

// KernelCmdline builds the guest's command line: volt-vmm's default, the
// extra parameters, and volt.run with the command quoted the way volt-init
// splits it (single quotes; a quote inside is '\”). The kernel gives
// double quotes no escape, so a command holding one is refused.
func KernelCmdline(s *Spec) (string, error) {
	parts := []string{BaseCmdline}
	if s.Cmdline != "" {
		if strings.ContainsAny(s.Cmdline, "\n\x00") {
			return "", errors.New("--cmdline: no newlines or NUL")
		}
		parts = append(parts, s.Cmdline)
	}
	if len(s.Command) > 0 {
		q := make([]string, len(s.Command))
		for i, a := range s.Command {
			if strings.ContainsAny(a, "\"\n\r\x00") {
				return "", fmt.Errorf("command argument %q: a VM's command is passed on the kernel command line, which cannot hold double quotes or newlines", a)
			}
			q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		parts = append(parts, `volt.run="`+strings.Join(q, " ")+`"`)
	}
	c := strings.Join(parts, " ")
	if len(c) > maxCmdline {
		return "", fmt.Errorf("the kernel command line would be %d bytes, more than %d", len(c), maxCmdline)
	}
	return c, nil
}

// VMMPaths are where volt-vmm finds what a VM is made of: host paths, or
// paths inside its chroot when it is jailed.
type VMMPaths struct {
	Kernel, Volume, Store, APISock string
}

// VMMArgs are volt-vmm's arguments for s, with the instance's files at p.
// A jailed VMM gets no --id: volt-jailer passes its own (the same name).
func VMMArgs(s *Spec, p VMMPaths) ([]string, error) {
	cmdline, err := KernelCmdline(s)
	if err != nil {
		return nil, err
	}
	var a []string
	if s.Jail == nil {
		a = append(a, "--id", s.Name)
	}
	a = append(a,
		"--kernel", p.Kernel,
		"--memory", strconv.FormatInt(s.MemoryBytes>>20, 10)+"M",
		"--cpus", strconv.Itoa(s.CPUs),
		"--volume", p.Volume,
		"--cas-store", p.Store,
		"--console", "stdio",
		"--cmdline", cmdline,
		"--api-sock", p.APISock,
	)
	if s.GuestProfile != "" {
		a = append(a, "--guest-profile", s.GuestProfile)
	}
	if s.NetBridge != "" {
		a = append(a, "--net-bridge", s.NetBridge)
	}
	return append(a, s.VMMFlags...), nil
}

// Limits are the cgroup limits of a VM: its vCPUs' worth of CPU time and
// its guest memory plus the VMM's own.
func (s *Spec) Limits() instance.Limits {
	return instance.Limits{MemoryBytes: s.MemoryBytes + VMMOverhead, CPUs: float64(s.CPUs)}
}

// FindVMM finds volt-vmm: next to this executable (bin/), then in PATH.
func FindVMM() (string, error) { return findProgram("volt-vmm", "--vmm") }

// FindJailer finds volt-jailer the same way.
func FindJailer() (string, error) { return findProgram("volt-jailer", "--jailer") }

func findProgram(name, flag string) (string, error) {
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			return p, nil
		}
	}
	for _, dir := range filepath.SplitList(os.Getenv("PATH")) {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found next to volt or in PATH (scripts/setup builds bin/%s; or give %s PATH)", name, name, flag)
}
