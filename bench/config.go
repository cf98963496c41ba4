package bench

import (
	"errors"
	"fmt"
	"path/filepath"
	"time"
)

// Kinds of process voltbench knows how to drive.
const (
	VMMVolt = "volt"
	VMMQEMU = "qemu"
	// VMMFloor is a floor helper of bench/floor: no guest protocol, it
	// runs to its end by itself (see floor.go).
	VMMFloor = "floor"
)

// Guest kinds.
const (
	GuestProbe = "probe" // guest/probe: ready line on COM1, then "poweroff" on stdin
	GuestLinux = "linux" // our kernel and volt-init: powers off when volt.run ends
)

// DefaultLinuxCmdline boots straight into volt-init, which runs a trivial
// workload and powers the VM off.
const DefaultLinuxCmdline = "console=ttyS0 reboot=k panic=1 volt.run=/bin/true"

// Config says how to boot one guest under one VMM, or run one floor helper.
type Config struct {
	VMM     string // VMMVolt, VMMQEMU or VMMFloor
	VMMBin  string // path of volt-vmm, of qemu-system-x86_64 or of the floor helper
	Guest   string // GuestProbe or GuestLinux; "" for a floor helper
	Kernel  string
	Initrd  string // Linux only
	Cmdline string // Linux only
	Memory  string // e.g. "128M"
	CPUs    int
	// GuestProfile, when set, is passed to volt-vmm as --guest-profile:
	// how volt-vmm configures the guest for a kind of host (nested-pvm
	// for Linux on the development machines). The user names it; nothing
	// here looks at the host to choose one.
	GuestProfile string
	ExtraArgs    []string      // appended to the VMM's command line; a floor helper's whole command line
	Timeout      time.Duration // per boot; the VMM is killed after it

	// RestoreDir, when set, resumes the snapshot in this directory
	// (volt-vmm --restore) instead of booting Kernel.
	RestoreDir string
	// Ask, when set, is written to the probe's console as soon as the VMM
	// starts, and the run powers the guest off once it answered with the
	// line Answer. A restored probe has booted already and prints no ready
	// line, so this is how a restore is driven; a cold boot driven the same
	// way is its like-for-like peer.
	Ask, Answer string
	// Rows are the stages timed; nil means Stages (ExecStages… for a floor
	// helper must be given).
	Rows []Stage
	// Jail, when set, starts volt-vmm through volt-jailer (JailedArm).
	Jail *Jail
}

// rows returns the stages this configuration is timed by.
func (c Config) rows() []Stage {
	if c.Rows == nil {
		return Stages
	}
	return c.Rows
}

// bootsAGuest reports whether the process runs a guest that must power off
// cleanly (write the shutdown marker): every kind but a floor helper.
func (c Config) bootsAGuest() bool { return c.VMM != VMMFloor }

// Validate checks the fields a boot cannot do without.
func (c Config) Validate() error {
	var errs []error
	if c.VMMBin == "" {
		errs = append(errs, errors.New("no VMM binary"))
	}
	if c.Timeout <= 0 {
		errs = append(errs, errors.New("no boot timeout"))
	}
	if (c.Ask == "") != (c.Answer == "") {
		errs = append(errs, errors.New("a question to the guest needs its answer, and an answer its question"))
	}
	switch c.VMM {
	case VMMFloor:
		if c.Guest != "" || c.Kernel != "" || c.RestoreDir != "" || c.Ask != "" || c.GuestProfile != "" {
			errs = append(errs, errors.New("a floor helper runs no guest: no guest, kernel, snapshot, question or profile"))
		}
		if c.Rows == nil {
			errs = append(errs, errors.New("a floor helper needs its rows"))
		}
		return errors.Join(errs...)
	case VMMVolt, VMMQEMU:
	default:
		errs = append(errs, fmt.Errorf("vmm %q is not %s, %s or %s", c.VMM, VMMVolt, VMMQEMU, VMMFloor))
	}
	if c.Guest != GuestProbe && c.Guest != GuestLinux {
		errs = append(errs, fmt.Errorf("guest %q is not %s or %s", c.Guest, GuestProbe, GuestLinux))
	}
	if c.GuestProfile != "" && c.VMM != VMMVolt {
		errs = append(errs, fmt.Errorf("guest profile %q: only volt-vmm takes --guest-profile", c.GuestProfile))
	}
	switch {
	case c.RestoreDir != "" && c.VMM != VMMVolt:
		errs = append(errs, fmt.Errorf("restore under %s: only volt-vmm restores volt snapshots", c.VMM))
	case c.RestoreDir != "" && c.Guest != GuestProbe:
		errs = append(errs, errors.New("restore: only the probe guest can be driven after a restore"))
	case c.RestoreDir == "" && c.Kernel == "":
		errs = append(errs, errors.New("no kernel"))
	}
	if c.RestoreDir != "" && c.Ask == "" {
		errs = append(errs, errors.New("restore: nothing to ask the restored guest"))
	}
	if c.CPUs < 1 {
		errs = append(errs, fmt.Errorf("%d vCPUs", c.CPUs))
	}
	if c.Jail != nil {
		if c.VMM != VMMVolt {
			errs = append(errs, fmt.Errorf("jail: only volt-vmm runs under volt-jailer, not %s", c.VMM))
		}
		if !filepath.IsAbs(c.VMMBin) {
			errs = append(errs, fmt.Errorf("jail: volt-vmm %q: volt-jailer takes an absolute --exec-file", c.VMMBin))
		}
		if err := c.Jail.Validate(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Args returns the VMM command line (without the binary); a jailed
// configuration's is volt-jailer's, its jail id "ID" (each boot has its
// own).
func (c Config) Args() []string {
	if c.Jail != nil {
		return c.jailArgs("ID")
	}
	return c.vmmArgs()
}

// vmmArgs returns the VMM command line (without the binary).
func (c Config) vmmArgs() []string {
	var a []string
	switch {
	case c.VMM == VMMFloor:
		return append(a, c.ExtraArgs...)
	case c.RestoreDir != "":
		// The snapshot carries memory size and vCPUs.
		a = []string{"--restore", c.RestoreDir, "--console", "stdio"}
	case c.VMM == VMMVolt:
		a = []string{"--kernel", c.Kernel, "--memory", c.Memory, "--cpus", fmt.Sprint(c.CPUs), "--console", "stdio"}
		if c.Initrd != "" {
			a = append(a, "--initrd", c.Initrd)
		}
		if c.Cmdline != "" {
			a = append(a, "--cmdline", c.Cmdline)
		}
	case c.VMM == VMMQEMU:
		a = []string{"-M", "microvm", "-enable-kvm", "-m", c.Memory, "-smp", fmt.Sprint(c.CPUs),
			"-kernel", c.Kernel, "-nographic", "-no-reboot"}
		if c.Initrd != "" {
			a = append(a, "-initrd", c.Initrd)
		}
		if c.Cmdline != "" {
			a = append(a, "-append", c.Cmdline)
		}
	}
	if c.GuestProfile != "" {
		a = append(a, "--guest-profile", c.GuestProfile)
	}
	return append(a, c.ExtraArgs...)
}
