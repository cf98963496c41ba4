//go:build !cgo

package sandbox

const builtWithCgo = false
