// Volt's stand-in for github.com/klauspost/cpuid/v2: the main module's
// go.mod replaces that module with this directory (see cpuid.go).
module github.com/klauspost/cpuid/v2

go 1.26

require golang.org/x/sys v0.50.0
