// Package api serves the Firecracker REST API over a Unix socket so that
// callers written for Firecracker can drive volt-vmm unchanged.
//
// The contract is Firecracker's swagger (src/firecracker/swagger/
// firecracker.yaml, version 1.17.0-dev at commit 004d9353): the same paths,
// JSON bodies, 204/200/400 status codes and {"fault_message": ...} error
// body. The package has three layers that are tested apart: strict request
// decoding and validation (package types), the instance state
// machine (state.go), and the Controller that applies requests to a VM
// (controller.go), with the http.Handler (handler.go) a thin layer over it.
package api
