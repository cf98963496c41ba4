//go:build cgo

package sandbox

// builtWithCgo: libpsx's C half runs the all-thread system calls, and
// lists /proc/PID/task after each, which go-landlock's Restrict allows for
// it (go-landlock issue 39); Landlock leaves those builds to go-landlock.
const builtWithCgo = true
