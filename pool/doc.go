// Package pool is voltpool's logic: templates (a guest booted once and
// snapshotted), VMMs restored from them and kept paused in advance, leases
// that hand a resumed VMM to a caller, and everything that keeps the set
// honest across VMM deaths and daemon restarts.
//
// The pool drives each volt-vmm process only through its API socket and the
// typed client (vmm/api/client), never through the VMM's packages: a VMM is
// a process to start, talk to over HTTP, signal and reap.
//
// On disk, under the state directory:
//
//	lock                      flock: one daemon per state directory
//	pool-id                   this pool's id in the refs of a shared CAS store
//	templates/NAME/template.json
//	templates/NAME/snapshot/{vm.state,vm.mem}   (FlatStore; CASStore keeps vm.state only)
//	vms/ID/vm.json            the VMM's record: pid, start time, state (and its jail)
//	vms/ID/lease.json         its lease, while it is leased
//	vms/ID/api.sock, vsock.sock, vmm.log
//	jail/volt-vmm/ID/root/    a jailed VMM's chroot, with its api.sock and vsock.sock
//
// Templates' memory is either a flat memory file (FlatStore) or a manifest
// in a CAS store whose chunks every clone maps (CASStore); with a
// JailConfig every VMM runs under volt-jailer with a uid of its own (see
// jail.go).
//
// Every record is replaced atomically (a temporary file renamed over it), so
// a daemon killed at any point leaves each record old or new, never torn.
// On start the daemon reads the records, adopts the VMMs of live leases and
// kills every other VMM it or a previous daemon started (found by record and
// by a scan of /proc for volt-vmm processes whose API socket lies under
// vms/), so nothing a dead daemon left keeps running.
package pool
