package cas

import (
	"os"
	"strings"
	"testing"

	"github.com/klauspost/cpuid/v2"
)

// go.mod replaces klauspost/cpuid with third_party/cpuid, which answers
// zeebo/blake3's two feature questions through golang.org/x/sys/cpu. Its
// answers must be the CPU's, as the kernel reports them, or the digests
// every chunk read verifies would silently run on the pure-Go code (or on
// vector code the CPU lacks).
func TestBLAKE3SeesTheCPUsVectorUnits(t *testing.T) {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		t.Skipf("no /proc/cpuinfo: %v", err)
	}
	var flags map[string]bool
	for _, line := range strings.Split(string(b), "\n") {
		if name, value, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(name) == "flags" {
			flags = map[string]bool{}
			for _, f := range strings.Fields(value) {
				flags[f] = true
			}
			break
		}
	}
	if flags == nil {
		t.Skip("/proc/cpuinfo lists no flags line (not x86?)")
	}
	for _, tc := range []struct {
		flag string
		id   cpuid.FeatureID
	}{{"sse4_1", cpuid.SSE4}, {"avx2", cpuid.AVX2}} {
		if got := cpuid.CPU.Has(tc.id); got != flags[tc.flag] {
			t.Errorf("cpuid says %s %v, /proc/cpuinfo says %v", tc.flag, got, flags[tc.flag])
		}
	}
}
