package api

import (
	"testing"

	"github.com/voltvmm/volt/cas"
	"github.com/voltvmm/volt/vmm/api/types"
)

// The API's chunk-size limits are the CAS's, which the API types cannot
// import.
func TestChunkSizeLimitsAreTheCAS(t *testing.T) {
	if types.MinChunkSize != cas.MinChunkSize || types.MaxChunkSize != cas.MaxChunkSize {
		t.Fatalf("types: %d..%d, cas: %d..%d", types.MinChunkSize, types.MaxChunkSize, cas.MinChunkSize, cas.MaxChunkSize)
	}
}
