//go:build cgo

package main

// builtWithCgo: glibc creates this binary's threads (clone3, mprotect of
// stack guards, rseq), calls the seccomp tables, which describe Go's own
// runtime, do not allow.
const builtWithCgo = true
