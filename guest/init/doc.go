// Package voltinit is volt-init, PID 1 inside Volt's Linux guests: it mounts
// the pseudo file systems, configures the network from volt.* kernel
// parameters or the kernel's ip=, serves the guest agent on vsock, reseeds
// the RNG when the VM generation ID says it was restored from a snapshot,
// runs one workload with the console as its stdio, reaps every zombie, and
// powers the VM off in order when the workload ends or a shutdown signal
// arrives (README.md). Each step writes a boot marker to port 0x80 (see
// guest/marker) so a tracer on the host can time the boot.
//
// The package is not called "init" because Go forbids importing a package
// under that name; the directory keeps the name the design uses.
//
// Every kernel call goes through the System interface so that the boot and
// shutdown sequences can be tested without root and without a VM.
package voltinit
