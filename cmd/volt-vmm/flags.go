package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/voltvmm/volt/guest/profile"
	"github.com/voltvmm/volt/vmm"
	"github.com/voltvmm/volt/vmm/api"
	"github.com/voltvmm/volt/vmm/api/types"
	"github.com/voltvmm/volt/vmm/cpu"
	"github.com/voltvmm/volt/vmm/virtio/vsock"
)

// flags are volt-vmm's command line: its own, and Firecracker's so that
// tools written for Firecracker (the Go SDK starts it with
// "--api-sock PATH --id UUID --no-seccomp") start volt-vmm unchanged.
type flags struct {
	fs *pflag.FlagSet

	kernel, initrd, cmdline string
	memory                  string
	cpus                    int
	hugepages               bool
	overcommit              bool
	console                 string
	bootTimer               bool
	protocol                string
	template, cpuidMask     string
	guestProfile            string
	apiSock, configFile     string
	noAPI                   bool
	id                      string
	restore                 string

	// Devices.
	drives     []string
	rootfs     string
	volume     string
	casStore   string
	nets       []string
	netBackend string
	netBridge  string
	vsock      string
	entropy    bool
	// vsockConnectTimeout is vmm.Config.VsockRequestTimeout.
	vsockConnectTimeout time.Duration

	// Confinement (docs/security.md).
	seccompLevel     string
	noLandlock       bool
	keepCapabilities bool
	snapshotDirs     []string

	// Firecracker's.
	seccompFilter                                string
	noSeccomp                                    bool
	level, logPath, module                       string
	showLevel, showLogOrigin                     bool
	startTimeUs, startTimeCPUUs, parentCPUTimeUs int64
	maxPayload                                   int64
	mmdsSizeLimit                                int64
	metadata                                     string
	version                                      bool
	describeSnapshot                             string

	// Testing only.
	markerDelay      time.Duration
	snapshotKillStep string
	seccompViolation bool
	openAfterConfine string
}

// machineFlags are the flags that describe the machine, which a restore
// takes from its snapshot instead.
var machineFlags = []string{"kernel", "initrd", "cmdline", "memory", "cpus", "hugepages", "boot-protocol",
	"cpu-template", "cpuid-mask", "guest-profile", "config-file", "drive", "rootfs", "volume", "net", "net-backend",
	"net-bridge", "vsock", "entropy"}

func newFlags() *flags {
	f := &flags{fs: pflag.NewFlagSet("volt-vmm", pflag.ContinueOnError)}
	fs := f.fs
	fs.SortFlags = false
	fs.StringVar(&f.kernel, "kernel", "", "guest kernel: ELF vmlinux (PVH or 64-bit entry) or bzImage")
	fs.StringVar(&f.initrd, "initrd", "", "initial ramdisk to load")
	fs.StringVar(&f.cmdline, "cmdline", vmm.DefaultCmdline, "kernel command line")
	fs.StringVar(&f.memory, "memory", "128M", "guest memory (K, M, G suffixes; a plain number is MiB)")
	fs.IntVar(&f.cpus, "cpus", vmm.DefaultCPUs, fmt.Sprintf("number of vCPUs (1 to %d)", vmm.MaxCPUs))
	fs.BoolVar(&f.hugepages, "hugepages", false, "back guest memory with 2 MiB huge pages (falls back to THP with a warning)")
	fs.BoolVar(&f.overcommit, "memory-overcommit", false, "allow guest memory larger than this host's RAM and swap (pages are only backed when the guest touches them)")
	fs.StringVar(&f.console, "console", "stdio", "serial console: stdio, file:PATH or none")
	fs.BoolVar(&f.bootTimer, "boot-timer", false, "print the boot timeline (exec→stage in µs) to stderr when the VM stops")
	fs.StringVar(&f.protocol, "boot-protocol", "auto", "boot protocol: auto, pvh or linux64")
	fs.StringVar(&f.template, "cpu-template", "host", "CPUID template: "+strings.Join(cpu.TemplateNames(), ", "))
	fs.StringVar(&f.cpuidMask, "cpuid-mask", "", "comma-separated CPU features to hide from the guest (e.g. cx16,popcnt)")
	fs.StringVar(&f.guestProfile, "guest-profile", profile.None, "kernel options and CPUID masks for a kind of host: "+strings.Join(profile.Names(), ", ")+" (see guest/README.md)")
	fs.StringVar(&f.apiSock, "api-sock", "", "serve the Firecracker-compatible API on this Unix socket and boot on InstanceStart (see docs/api.md)")
	fs.StringVar(&f.configFile, "config-file", "", "boot from a Firecracker JSON config file (boot-source, machine-config, ...)")
	fs.BoolVar(&f.noAPI, "no-api", false, "serve no API (the default unless --api-sock is given; for Firecracker-compatible command lines)")
	fs.StringVar(&f.id, "id", api.DefaultID, "instance id reported by GET / (1 to 64 letters, digits and '-')")
	fs.StringVar(&f.restore, "restore", "", "restore the VM snapshotted into DIR ("+types.SnapshotStateFile+" and "+types.SnapshotMemFile+") and resume it")

	fs.StringArrayVar(&f.drives, "drive", nil, "a virtio-blk disk: id=ID,path=PATH[,readonly=true][,root=true][,direct=true] (repeatable)")
	fs.StringVar(&f.rootfs, "rootfs", "", "the root file system image: a virtio-blk disk mounted as / (root=/dev/vda rw)")
	fs.StringVar(&f.volume, "volume", "", "the root file system as a CAS volume directory (volt cas volume create) in --cas-store: copy-on-write over the store's chunks")
	fs.StringVar(&f.casStore, "cas-store", "", "the CAS store of --volume and --drive volume=DIR disks, and of --restore DIR's memory when it is in the CAS")
	fs.StringArrayVar(&f.nets, "net", nil, "a virtio-net interface: tap=NAME|macvtap=NAME|bridge=BR[,id=eth0][,mac=..][,mtu=N][,rx-ops=N/DUR,...] (repeatable)")
	fs.StringVar(&f.netBackend, "net-backend", "", "with --net-bridge: virtio-net (or vhost-net, which falls back to the userspace path where /dev/vhost-net is missing)")
	fs.StringVar(&f.netBridge, "net-bridge", "", "create a TAP attached to this existing bridge and give the guest a virtio-net interface on it")
	fs.StringVar(&f.vsock, "vsock", "", "a virtio-vsock device: cid=N,uds=PATH (Firecracker's hybrid Unix socket)")
	fs.DurationVar(&f.vsockConnectTimeout, "vsock-connect-timeout", vsock.RequestTimeout, fmt.Sprintf("how long a host client's CONNECT waits for the guest's answer before the client is closed (it reads EOF); Firecracker's is 2s; more than 0, at most %v; for the API's and a restored snapshot's vsock too", vsock.MaxRequestTimeout))
	fs.BoolVar(&f.entropy, "entropy", false, "a virtio-rng device fed from getrandom(2)")

	fs.StringVar(&f.seccompLevel, "seccomp-level", "2", "seccomp filters per thread role: 2 numbers and arguments, 1 numbers only, 0 none (debugging only)")
	fs.BoolVar(&f.noLandlock, "no-landlock", false, "do not restrict the file system with Landlock once the VM runs (debugging only)")
	fs.BoolVar(&f.keepCapabilities, "keep-capabilities", false, "keep the process's capabilities once the VM runs (debugging only)")
	fs.StringArrayVar(&f.snapshotDirs, "snapshot-dir", nil, "a directory the API may create snapshots in once the VM runs; Landlock refuses every other (repeatable)")

	fs.StringVar(&f.level, "level", "", "Firecracker: log level (Error, Warning, Info, Debug, Trace, Off)")
	fs.StringVar(&f.logPath, "log-path", "", "Firecracker: write the log to this file or FIFO instead of standard error")
	fs.BoolVar(&f.showLevel, "show-level", false, "Firecracker: show each log record's level")
	fs.BoolVar(&f.showLogOrigin, "show-log-origin", false, "Firecracker: show each log record's source file and line")
	fs.StringVar(&f.module, "module", "", "Firecracker: log only records of this module")
	fs.Int64Var(&f.maxPayload, "http-api-max-payload-size", types.MaxBodySize, "Firecracker: largest API request body in bytes")
	fs.Int64Var(&f.startTimeUs, "start-time-us", 0, "Firecracker: the CLOCK_MONOTONIC time in µs at which the caller started this VMM (e.g. a jailer); the boot timeline starts there")
	fs.Int64Var(&f.startTimeCPUUs, "start-time-cpu-us", 0, "Firecracker: the caller's CPU time at start, in µs (recorded, not used)")
	fs.Int64Var(&f.parentCPUTimeUs, "parent-cpu-time-us", 0, "Firecracker: the parent's CPU time in µs (recorded, not used)")
	fs.BoolVar(&f.version, "version", false, "print volt-vmm's version and exit")
	fs.StringVar(&f.describeSnapshot, "describe-snapshot", "", "print the format version of a snapshot state file and exit")
	fs.BoolVar(&f.noSeccomp, "no-seccomp", false, "Firecracker: install no seccomp filters (--seccomp-level 0)")
	fs.StringVar(&f.seccompFilter, "seccomp-filter", "", "Firecracker: a custom seccomp filter file (not applied by volt-vmm: see the notice)")
	fs.Int64Var(&f.mmdsSizeLimit, "mmds-size-limit", 0, "Firecracker: MMDS data store limit (volt-vmm has no MMDS)")
	fs.StringVar(&f.metadata, "metadata", "", "Firecracker: MMDS contents (volt-vmm has no MMDS)")

	fs.DurationVar(&f.markerDelay, "test-marker-delay", 0, "testing only: stall the guest this long at every boot marker, to inject a regression")
	fs.StringVar(&f.snapshotKillStep, "test-snapshot-kill-at", "", "testing only: SIGKILL the VMM after this step of writing a snapshot")
	fs.BoolVar(&f.seccompViolation, "test-seccomp-violation", false, "testing only: once confined, make a system call no filter allows (the VMM dies with SIGSYS)")
	fs.StringVar(&f.openAfterConfine, "test-open-after-confine", "", "testing only: once confined, try to open this path and log the result")
	fs.MarkHidden("test-marker-delay")
	fs.MarkHidden("test-snapshot-kill-at")
	fs.MarkHidden("test-seccomp-violation")
	fs.MarkHidden("test-open-after-confine")
	return f
}

// notices are the Firecracker flags volt-vmm accepts but that have no effect
// in it, each with the one line it prints when given. They are documented in
// README.md.
func (f *flags) notices() []string {
	var out []string
	if f.fs.Changed("seccomp-filter") {
		out = append(out, "--seccomp-filter "+f.seccompFilter+": volt-vmm does not load Firecracker filter files; its own filters apply (--seccomp-level)")
	}
	if f.fs.Changed("mmds-size-limit") {
		out = append(out, "--mmds-size-limit: volt-vmm has no MMDS; the limit is ignored")
	}
	if f.fs.Changed("metadata") {
		out = append(out, "--metadata "+f.metadata+": volt-vmm has no MMDS; the guest will not see this metadata")
	}
	if f.fs.Changed("start-time-cpu-us") || f.fs.Changed("parent-cpu-time-us") {
		out = append(out, "--start-time-cpu-us/--parent-cpu-time-us: recorded only; volt-vmm reports no CPU-time metrics")
	}
	return out
}

// restoreConflicts names the machine flags given with --restore.
func (f *flags) restoreConflicts() []string {
	var out []string
	for _, name := range machineFlags {
		if f.fs.Changed(name) {
			out = append(out, "--"+name)
		}
	}
	return out
}
