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
//	sandbox.DropCapabilities()         // every set but the bounding one, every thread; no_new_privs
//	sandbox.ApplyProcess(sandbox.RoleVMM, opts) // base filter on all threads (TSYNC)
//	// then, first thing on each locked thread:
//	sandbox.ApplyThread(sandbox.RoleVCPU)
//
// Landlock and capabilities come first because both need system calls
// (landlock_*, capset, prctl) that no filter allows.
package sandbox
