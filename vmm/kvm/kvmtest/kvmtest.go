// Package kvmtest holds the helper that integration tests use to require a
// working /dev/kvm, skipping with the reason where there is none.
package kvmtest

import (
	"errors"
	"testing"

	"github.com/voltvmm/volt/vmm/kvm"
)

// Require skips the test when KVM cannot be used on this host and fails it
// on any other error opening KVM.
func Require(t testing.TB) {
	t.Helper()
	sys, err := kvm.Open()
	if errors.Is(err, kvm.ErrUnavailable) {
		t.Skipf("skipping: needs a usable %s: %v", kvm.DevicePath, err)
	}
	if err != nil {
		t.Fatalf("open KVM: %v", err)
	}
	sys.Close()
}
