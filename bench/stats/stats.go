// Package stats holds the statistics voltbench judges boots with: quantiles,
// and one-sided permutation tests that ask "is the candidate slower?" with
// noise floors for a shared machine. It knows nothing of boots or files: it
// works on samples in microseconds.
package stats

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
)

// Quantile returns the q-quantile (0 ≤ q ≤ 1) of xs by linear interpolation
// between order statistics (Hyndman–Fan type 7, as R and NumPy default to).
// xs need not be sorted; it is not modified.
func Quantile(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return quantileSorted(s, q)
}

func quantileSorted(s []float64, q float64) float64 {
	if q <= 0 {
		return s[0]
	}
	if q >= 1 {
		return s[len(s)-1]
	}
	h := q * float64(len(s)-1)
	lo := int(math.Floor(h))
	if lo+1 >= len(s) {
		return s[lo]
	}
	return s[lo] + (h-float64(lo))*(s[lo+1]-s[lo])
}

// TailMinSamples is the fewest samples whose 99th percentile is not their
// maximum: below 100 the largest sample is the whole top 1 %, so the
// nearest-rank p99 (what an HDR histogram reports) is the maximum, and an
// interpolated one lies between the two largest samples. A "p99" of fewer
// samples is the maximum in disguise.
const TailMinSamples = 100

// Tail returns the tail quantile that n samples can honestly report, and
// its label: 0.99 ("p99") from TailMinSamples on, else 1 ("max"). Every
// table, file and gate test of voltbench names its tail by this label.
func Tail(n int) (q float64, label string) {
	if n >= TailMinSamples {
		return 0.99, "p99"
	}
	return 1, "max"
}

// Tolerance says how much worse a candidate may be before the gate fails.
// A stage regresses only when all three hold: the difference is
// statistically significant (p < Alpha), larger than RelFloor of the
// baseline, and larger than AbsFloor. The floors exist because a
// permutation test on hundreds of samples finds even a 1 % shift
// "significant", and because this shared, nested-virtualisation machine
// moves every stage by tens to hundreds of microseconds from one minute to
// the next; neither is a regression worth failing CI for.
type Tolerance struct {
	Alpha        float64 // significance level of the one-sided test
	RelFloor     float64 // ignore differences under this fraction of the baseline
	AbsFloorUS   float64 // ignore differences under this many microseconds
	Permutations int     // Monte Carlo resamples when exact enumeration is too big
	Seed         uint64  // for reproducible Monte Carlo p-values
}

// DefaultTolerance follows Firecracker's A/B practice (permutation test,
// p < 0.01, 5 % noise floor) plus a 200 µs absolute floor for this machine.
// It is meant for same-run A/B comparisons, where both sides share the
// machine's mood.
func DefaultTolerance() Tolerance {
	return Tolerance{Alpha: 0.01, RelFloor: 0.05, AbsFloorUS: 200, Permutations: 10000, Seed: 1}
}

// FileTolerance is for comparing a fresh run with a baseline recorded in
// another session. Measured here: with the load average at 10 on two
// cores, the median exec→pid1 went from 4.2 ms to 10.9 ms (2.6×) with no
// code change, and a permutation test calls that significant, because the
// two sessions really do differ. So across sessions only a doubling and
// 2 ms are treated as regressions: an injected 5 ms stall per marker
// (pid1 4 ms → 24 ms) still fails, machine moods do not. Same-run A/B is
// the way to catch 5 % changes.
func FileTolerance() Tolerance {
	t := DefaultTolerance()
	t.RelFloor, t.AbsFloorUS = 1.0, 2000
	return t
}

// Validate rejects tolerances that would make the gate meaningless.
func (t Tolerance) Validate() error {
	var errs []error
	if !(t.Alpha > 0 && t.Alpha < 1) {
		errs = append(errs, fmt.Errorf("alpha %v must lie in (0, 1)", t.Alpha))
	}
	if t.RelFloor < 0 || math.IsNaN(t.RelFloor) {
		errs = append(errs, fmt.Errorf("relative floor %v must be ≥ 0", t.RelFloor))
	}
	if t.AbsFloorUS < 0 || math.IsNaN(t.AbsFloorUS) {
		errs = append(errs, fmt.Errorf("absolute floor %v µs must be ≥ 0", t.AbsFloorUS))
	}
	if t.Permutations < 100 {
		errs = append(errs, fmt.Errorf("%d permutations are too few (≥ 100)", t.Permutations))
	}
	return errors.Join(errs...)
}

// ErrTooFewSamples means a side has fewer samples than MinSamples.
var ErrTooFewSamples = errors.New("too few samples")

// MinSamples is the smallest group Compare accepts: with 5 against 5, even
// a complete separation gives the median difference an exact p of
// 6/252 ≈ 0.024, so no regression of the median could ever reach p < 0.01;
// with 6 against 6 it is 0.0065. The gate asks for more (GateMinSamples)
// because it divides alpha among all its tests.
const MinSamples = 6

// Verdict is the outcome of comparing one quantile of one stage.
type Verdict struct {
	Quantile       float64
	BaseUS, CandUS float64
	DiffUS         float64 // CandUS - BaseUS; positive is slower
	Rel            float64 // DiffUS / BaseUS
	P              float64 // one-sided: probability of a difference this large by chance
	Regressed      bool
	Significant    bool // P < Alpha, whatever the floors say
	NBase, NCand   int
	Exact          bool      // P came from enumerating every split
	Statistic      Statistic // what P tests
}

// Statistic chooses what a Verdict's p-value tests.
type Statistic int

const (
	// QuantileDiff: the difference of the q-quantiles themselves.
	QuantileDiff Statistic = iota
	// RankShift: the rank sum of the candidate (the Mann–Whitney U
	// statistic, computed exactly or by permutation like the other).
	// It asks "is the candidate's distribution shifted up?" and keeps its
	// power when the pooled sample is bimodal, as it is when a loaded
	// machine stalls some boots of both sides: there the difference of
	// medians swings wildly between random splits and a real 5× slowdown
	// of the median can come out at p ≈ 0.01 with 20 boots a side.
	RankShift
)

// Compare asks whether cand is worse (larger) than base at quantile q with
// a one-sided permutation test on the difference of the q-quantiles.
// Under the null hypothesis both groups come from one distribution, so
// every split of the pooled samples into groups of the same sizes is
// equally likely; p is the share of splits whose difference is at least
// the observed one. Splits are enumerated when there are at most
// 2·Permutations of them, and sampled otherwise.
func Compare(base, cand []float64, q float64, tol Tolerance) (Verdict, error) {
	return compare(base, cand, q, QuantileDiff, tol)
}

// CompareShift is Compare with the p-value taken from the rank sum
// (RankShift) while the effect and the floors stay on the q-quantile. The
// gate uses it for the median: "significantly shifted up, and the median
// moved by more than the floor".
func CompareShift(base, cand []float64, q float64, tol Tolerance) (Verdict, error) {
	return compare(base, cand, q, RankShift, tol)
}

func compare(base, cand []float64, q float64, st Statistic, tol Tolerance) (Verdict, error) {
	if err := tol.Validate(); err != nil {
		return Verdict{}, fmt.Errorf("tolerance: %w", err)
	}
	if len(base) < MinSamples || len(cand) < MinSamples {
		return Verdict{}, fmt.Errorf("%w: %d baseline and %d candidate samples, need %d each", ErrTooFewSamples, len(base), len(cand), MinSamples)
	}
	for _, x := range append(slices.Clone(base), cand...) {
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return Verdict{}, fmt.Errorf("sample %v is not a finite number", x)
		}
	}
	v := Verdict{Quantile: q, NBase: len(base), NCand: len(cand), Statistic: st}
	v.BaseUS = Quantile(base, q)
	v.CandUS = Quantile(cand, q)
	v.DiffUS = v.CandUS - v.BaseUS
	if v.BaseUS > 0 {
		v.Rel = v.DiffUS / v.BaseUS
	}
	v.P, v.Exact = permutationP(base, cand, q, st, tol)
	v.Significant = v.P < tol.Alpha
	floor := math.Max(tol.RelFloor*math.Abs(v.BaseUS), tol.AbsFloorUS)
	v.Regressed = v.Significant && v.DiffUS > floor
	return v, nil
}

// permutationP returns the one-sided p-value of the statistic under random
// splits of the pooled samples into groups of the original sizes.
func permutationP(base, cand []float64, q float64, st Statistic, tol Tolerance) (float64, bool) {
	type obs struct {
		x      float64
		inBase bool
	}
	pool := make([]obs, 0, len(base)+len(cand))
	for _, x := range base {
		pool = append(pool, obs{x, true})
	}
	for _, x := range cand {
		pool = append(pool, obs{x, false})
	}
	// With the pool sorted once, walking it in order hands each group its
	// members already sorted, so a split costs O(n) instead of two sorts.
	slices.SortStableFunc(pool, func(a, b obs) int { return cmpFloat(a.x, b.x) })
	n, nBase := len(pool), len(base)
	// Mid-ranks, so that ties count half each way.
	ranks := make([]float64, n)
	for i := 0; i < n; {
		j := i
		for j < n && pool[j].x == pool[i].x {
			j++
		}
		for k := i; k < j; k++ {
			ranks[k] = float64(i+j+1) / 2
		}
		i = j
	}
	a := make([]float64, 0, nBase)
	b := make([]float64, 0, n-nBase)
	stat := func(mask []bool) float64 {
		if st == RankShift {
			var sum float64
			for i, inBase := range mask {
				if !inBase {
					sum += ranks[i]
				}
			}
			return sum
		}
		a, b = a[:0], b[:0]
		for i, o := range pool {
			if mask[i] {
				a = append(a, o.x)
			} else {
				b = append(b, o.x)
			}
		}
		return quantileSorted(b, q) - quantileSorted(a, q)
	}
	mask := make([]bool, n)
	for i, o := range pool {
		mask[i] = o.inBase
	}
	observed := stat(mask)
	// Statistics equal to the observed one up to rounding count as "at
	// least as large", or ties would make p too small.
	eps := 1e-9 * (1 + math.Abs(observed))
	if c, ok := binomial(n, nBase, 2*tol.Permutations); ok {
		var hits int
		idx := make([]int, nBase)
		for i := range idx {
			idx[i] = i
		}
		for {
			clear(mask)
			for _, i := range idx {
				mask[i] = true
			}
			if stat(mask) >= observed-eps {
				hits++
			}
			if !nextCombination(idx, n) {
				break
			}
		}
		return float64(hits) / float64(c), true
	}
	rng := rand.New(rand.NewPCG(tol.Seed, 0x766f6c74))
	perm := make([]int, n)
	var hits int
	for r := 0; r < tol.Permutations; r++ {
		for i := range perm {
			perm[i] = i
		}
		// A partial Fisher–Yates shuffle picks the base group.
		clear(mask)
		for i := 0; i < nBase; i++ {
			j := i + rng.IntN(n-i)
			perm[i], perm[j] = perm[j], perm[i]
			mask[perm[i]] = true
		}
		if stat(mask) >= observed-eps {
			hits++
		}
	}
	// The observed split is one of the possible ones; counting it keeps p
	// away from an impossible 0.
	return float64(hits+1) / float64(tol.Permutations+1), false
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// binomial returns C(n, k) when it is at most limit.
func binomial(n, k, limit int) (int, bool) {
	if k < 0 || k > n {
		return 0, false
	}
	k = min(k, n-k)
	c := 1
	for i := 1; i <= k; i++ {
		// c·(n-k+i)/i stays an integer at every step.
		c = c * (n - k + i) / i
		if c > limit {
			return 0, false
		}
	}
	return c, true
}

// nextCombination advances idx (strictly increasing, values < n) to the
// next k-subset in lexicographic order.
func nextCombination(idx []int, n int) bool {
	k := len(idx)
	i := k - 1
	for i >= 0 && idx[i] == n-k+i {
		i--
	}
	if i < 0 {
		return false
	}
	idx[i]++
	for j := i + 1; j < k; j++ {
		idx[j] = idx[j-1] + 1
	}
	return true
}
