package nspawn

import (
	"slices"
	"strings"
)

// DroppedCapabilities are removed from systemd-nspawn's default set (which
// keeps CAP_SYS_ADMIN, CAP_NET_RAW, CAP_SYS_PTRACE and more for booting a
// full OS): what a container needs to administer the kernel, the network
// below it, other processes or devices. --cap-add grants one back.
var DroppedCapabilities = []string{
	"CAP_AUDIT_CONTROL",
	"CAP_IPC_OWNER",
	"CAP_LEASE",
	"CAP_LINUX_IMMUTABLE",
	"CAP_MKNOD",
	"CAP_NET_ADMIN",
	"CAP_NET_RAW",
	"CAP_SYS_ADMIN",
	"CAP_SYS_BOOT",
	"CAP_SYS_PTRACE",
	"CAP_SYS_RESOURCE",
	"CAP_SYS_TTY_CONFIG",
}

// SyscallDenyList is added to systemd-nspawn's own seccomp allow-list (its
// "~" form removes system calls from what is allowed; a denied call fails
// with EPERM): tracing and reading other processes' memory (@debug), vm86
// and LDT emulation (@cpu-emulation), raw port and PCI access (@raw-io),
// system calls only old binaries use (@obsolete), and the kernel keyring,
// which is not namespaced.
var SyscallDenyList = []string{"@cpu-emulation", "@debug", "@obsolete", "@raw-io", "add_key", "keyctl", "request_key"}

// Args returns systemd-nspawn's arguments for spec, with its root file
// system mounted at root. The container is an ordinary, non-booted payload
// run as PID 2 under nspawn's stub init (which reaps zombies), with its
// stdio on ours (the log), in the unit we run in (--keep-unit) and not
// registered with machined (which our hosts may not run); see
// docs/containers.md for the security model.
func Args(spec *Spec, root string) []string {
	a := []string{
		"--quiet",
		"--keep-unit",
		"--register=no",
		"--settings=no",
		"--directory=" + root,
		"--machine=" + spec.Name,
		"--as-pid2",
		"--console=pipe",
		"--link-journal=no",
		"--timezone=off",
	}
	switch spec.PrivateUsers {
	case UsersNo:
		a = append(a, "--private-users=no")
	default:
		// map: an ID-mapped mount of the root, so that the image's files
		// stay owned by root and are never chowned (chown would rewrite
		// every inode, through the instance's overlay).
		a = append(a, "--private-users="+spec.PrivateUsers, "--private-users-ownership=map")
	}
	switch spec.Network.Mode {
	case NetNone, "":
		a = append(a, "--private-network", "--resolv-conf=off")
	case NetVeth:
		a = append(a, "--network-veth")
	case NetBridge:
		a = append(a, "--network-bridge="+spec.Network.Bridge)
	case NetHost:
	}
	var drop []string
	for _, c := range DroppedCapabilities {
		if !slices.Contains(spec.Capabilities, c) {
			drop = append(drop, c)
		}
	}
	a = append(a, "--drop-capability="+strings.Join(drop, ","))
	if len(spec.Capabilities) > 0 {
		a = append(a, "--capability="+strings.Join(spec.Capabilities, ","))
	}
	a = append(a, "--system-call-filter=~"+strings.Join(SyscallDenyList, " "))
	if spec.NoNewPrivileges {
		a = append(a, "--no-new-privileges=yes")
	}
	for _, b := range spec.Binds {
		opt := "--bind="
		if b.ReadOnly {
			opt = "--bind-ro="
		}
		a = append(a, opt+b.Source+":"+b.Target)
	}
	for _, e := range spec.Env {
		a = append(a, "--setenv="+e)
	}
	a = append(a, "--")
	return append(a, spec.Command...)
}
