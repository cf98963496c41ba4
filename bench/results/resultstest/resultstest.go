// Package resultstest builds synthetic runs for the tests of the packages
// that read runs (results, gate, report): lognormal stage times shaped like
// measured probe boots, reproducible from a seed.
package resultstest

import (
	"math"
	"math/rand/v2"
	"time"

	"github.com/voltvmm/volt/bench/results"
)

// BootStages are the probe boot's rows, with typical medians (µs) measured
// on the development machine.
var BootStages = []struct {
	Name     string
	MedianUS float64
}{
	{"vmm-ready", 1800}, {"memory", 2000}, {"vcpu", 2800}, {"guest-entry", 3500},
	{"kernel-entry", 3600}, {"first-output", 4600}, {"pid1", 4200}, {"ready", 8000}, {"exit", 24000},
}

// BootStageNames lists BootStages' names in order.
func BootStageNames() []string {
	names := make([]string, len(BootStages))
	for i, s := range BootStages {
		names[i] = s.Name
	}
	return names
}

// Run builds a run of n successful boots of every BootStages row, each
// stage's median scaled by factor, with 3 exits to user space and none
// counted by kvm:kvm_exit per stage (as on the development machine).
func Run(name string, n int, factor float64, seed uint64) *results.Run {
	rng := rand.New(rand.NewPCG(seed, seed))
	r := results.NewRun(name, "probe", BootStageNames())
	for i := 0; i < n; i++ {
		o := results.Observation{Stages: map[string]results.StageTime{}}
		for _, s := range BootStages {
			v := s.MedianUS * factor * math.Exp(0.1*rng.NormFloat64())
			o.Stages[s.Name] = results.StageTime{At: time.Duration(v * float64(time.Microsecond)), UserExits: 3}
		}
		if err := r.Add(o); err != nil {
			panic(err) // every stage is there by construction
		}
	}
	return r
}
