// Command emptygo does nothing: its exec → exit is the floor of starting a
// static Go binary (the kernel's exec and exit plus the Go runtime's
// start-up), against which a Go VMM's process start is judged. voltbench
// runs it as floor-exec-go; bench/floor/build.sh builds it as volt-vmm is
// built (CGO_ENABLED=0, -trimpath).
package main

func main() {}
