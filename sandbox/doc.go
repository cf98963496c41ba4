// Package sandbox holds volt-vmm's confinement primitives: seccomp-bpf
// filters per thread role (rule tables as data, compiled to BPF with
// go-seccomp-bpf), Landlock file-system rules, and dropping every
// capability. docs/security.md describes the five layers and lists every
// role's system calls, generated from the tables here.
//
// The order in a VMM, once the VM is built or restored and before the
// guest runs its first instruction:
//
//	sandbox.Landlock(rules)            // paths: kernel, drives, snapshots, sockets
//	sandbox.ClearCapabilities()        // every set but the bounding one, every thread
//	runtime.LockOSThread()             // the filter's prctl and install on one thread
//	sandbox.ApplyProcess(sandbox.RoleVMM, opts) // base filter and no_new_privs on all threads (TSYNC)
//	runtime.UnlockOSThread()
//	sandbox.EnsureNoNewPrivs()         // nothing to do after the filter; a round without one
//	// then, first thing on each locked thread:
//	sandbox.ApplyThread(sandbox.RoleVCPU)
//
// Landlock and capabilities come first because both need system calls
// (landlock_*, capset, prctl) that no filter allows. Before Landlock ABI 8
// each of them reaches the other threads through a stop-the-world round
// (psx), which under load costs milliseconds: a root VMM pays two
// (landlock_restrict_self, capset: CAP_SYS_ADMIN lets Landlock skip its
// no_new_privs round, and the filter's TSYNC sets no_new_privs for
// nothing), a VMM under volt-jailer one (it starts with no_new_privs and
// no capability), and from ABI 8 on Landlock needs none. DropCapabilities
// (ClearCapabilities and EnsureNoNewPrivs) is the drop for a process that
// installs no filter (volt-jailer before its exec).
package sandbox
