package api

import (
	"testing"

	"github.com/voltvmm/volt/vmm"
	"github.com/voltvmm/volt/vmm/api/types"
	"github.com/voltvmm/volt/vmm/boot"
	"github.com/voltvmm/volt/vmm/memory"
)

// The API's limits are written as constants in package types, which must
// not import the VMM; these keep them equal to what the VMM enforces.
func TestAPILimitsMatchTheVMM(t *testing.T) {
	if types.MaxMemMib != memory.MaxSize>>20 {
		t.Errorf("types.MaxMemMib = %d, memory.MaxSize is %d MiB", types.MaxMemMib, memory.MaxSize>>20)
	}
	if types.MaxVCPUs != vmm.MaxCPUs {
		t.Errorf("types.MaxVCPUs = %d, vmm.MaxCPUs = %d: the API and the command line must agree", types.MaxVCPUs, vmm.MaxCPUs)
	}
	if types.MaxBootArgs != boot.DefaultCmdlineMax {
		t.Errorf("types.MaxBootArgs = %d, boot.DefaultCmdlineMax = %d", types.MaxBootArgs, boot.DefaultCmdlineMax)
	}
	if types.MinMemMib<<20 != vmm.MinMemory {
		t.Errorf("types.MinMemMib = %d, vmm.MinMemory is %d MiB", types.MinMemMib, vmm.MinMemory>>20)
	}
}
