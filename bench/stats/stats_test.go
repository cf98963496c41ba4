package stats

import (
	"errors"
	"math"
	"math/rand/v2"
	"testing"
)

func TestQuantileInterpolates(t *testing.T) {
	xs := []float64{40, 10, 30, 20}
	for _, c := range []struct{ q, want float64 }{
		{0, 10}, {0.5, 25}, {1, 40}, {0.25, 17.5}, {0.99, 39.7},
	} {
		if got := Quantile(xs, c.q); math.Abs(got-c.want) > 1e-9 {
			t.Errorf("Quantile(%v) = %v, want %v", c.q, got, c.want)
		}
	}
	if !math.IsNaN(Quantile(nil, 0.5)) {
		t.Error("Quantile of nothing should be NaN")
	}
	if xs[0] != 40 {
		t.Error("Quantile sorted its input")
	}
}

// boots draws n synthetic stage times (µs): a lognormal body like the
// measured ones, scaled to median m.
func boots(rng *rand.Rand, n int, m float64) []float64 {
	xs := make([]float64, n)
	for i := range xs {
		xs[i] = m * math.Exp(0.15*rng.NormFloat64())
	}
	return xs
}

func TestCompareIdenticalDistributionsPass(t *testing.T) {
	tol := DefaultTolerance()
	rng := rand.New(rand.NewPCG(7, 7))
	var regressed, significant int
	const trials = 100
	for i := 0; i < trials; i++ {
		a, b := boots(rng, 20, 7000), boots(rng, 20, 7000)
		for _, q := range []float64{0.5, 0.99} {
			v, err := Compare(a, b, q, tol)
			if err != nil {
				t.Fatal(err)
			}
			if v.Regressed {
				regressed++
			}
			if v.Significant {
				significant++
			}
		}
	}
	// One test in a hundred is significant by chance at alpha = 0.01;
	// that is what the gate's Bonferroni correction is for (see
	// TestGateCleanRunsPass). Binomial(200, 0.01) exceeds 7 with
	// probability about 0.005.
	if significant > 7 || regressed > significant {
		t.Errorf("%d significant, %d regressed of %d tests; want about 2", significant, regressed, 2*trials)
	}
}

func TestCompareShiftedDistributionFails(t *testing.T) {
	tol := DefaultTolerance()
	rng := rand.New(rand.NewPCG(8, 8))
	a, b := boots(rng, 20, 7000), boots(rng, 20, 7000*1.3)
	v, err := Compare(a, b, 0.5, tol)
	if err != nil {
		t.Fatal(err)
	}
	if !v.Regressed || v.P >= 0.01 {
		t.Fatalf("a 30 %% slower median passed: %+v", v)
	}
	// The same shift the other way is an improvement, not a failure.
	if v, _ := Compare(b, a, 0.5, tol); v.Regressed || v.P < 0.5 {
		t.Fatalf("an improvement failed the one-sided test: %+v", v)
	}
	// A whole-distribution shift shows at p99 too.
	if v, _ := Compare(a, b, 0.99, tol); !v.Regressed {
		t.Fatalf("a 30 %% slower p99 passed: %+v", v)
	}
}

func TestCompareFloorsIgnoreSmallButSignificantShifts(t *testing.T) {
	tol := DefaultTolerance()
	// Tight, well separated groups: 3 % slower is significant, but under
	// the 5 % floor.
	var a, b []float64
	for i := 0; i < 30; i++ {
		a = append(a, 10000+float64(i))
		b = append(b, 10300+float64(i))
	}
	v, err := Compare(a, b, 0.5, tol)
	if err != nil {
		t.Fatal(err)
	}
	if !v.Significant || v.Regressed {
		t.Fatalf("3 %% shift: %+v, want significant but not regressed", v)
	}
	// 50 % of 300 µs is significant and over the relative floor, but only
	// 150 µs: under the absolute floor.
	a, b = a[:0], b[:0]
	for i := 0; i < 30; i++ {
		a = append(a, 300+float64(i)/10)
		b = append(b, 450+float64(i)/10)
	}
	if v, _ := Compare(a, b, 0.5, tol); !v.Significant || v.Regressed {
		t.Fatalf("150 µs shift: %+v, want significant but not regressed", v)
	}
}

func TestCompareSmallSamples(t *testing.T) {
	tol := DefaultTolerance()
	// Fewer than MinSamples: refused rather than silently passed.
	_, err := Compare([]float64{1, 2, 3, 4, 5}, []float64{9, 9, 9, 9, 9}, 0.5, tol)
	if !errors.Is(err, ErrTooFewSamples) {
		t.Fatalf("5 vs 5: err = %v, want ErrTooFewSamples", err)
	}
	// 6 vs 6, completely separated: exact enumeration of C(12,6) = 924
	// splits. The median difference is at least the observed one in 6 of
	// them (p ≈ 0.0065), the p99 difference in 1 (p = 1/924).
	base := []float64{1000, 1010, 1020, 1030, 1040, 1050}
	cand := []float64{5000, 5010, 5020, 5030, 5040, 5050}
	v, err := Compare(base, cand, 0.5, tol)
	if err != nil {
		t.Fatal(err)
	}
	if !v.Exact || math.Abs(v.P-6.0/924) > 1e-12 || !v.Regressed {
		t.Fatalf("6 vs 6 separated, median: %+v, want exact p = 6/924 and a regression", v)
	}
	v, _ = Compare(base, cand, 0.99, tol)
	if !v.Exact || math.Abs(v.P-1.0/924) > 1e-12 || !v.Regressed {
		t.Fatalf("6 vs 6 separated, p99: %+v, want exact p = 1/924", v)
	}
	// 6 vs 6 interleaved: nowhere near significant.
	v, _ = Compare([]float64{1000, 1200, 1400, 1600, 1800, 2000}, []float64{1100, 1300, 1500, 1700, 1900, 2100}, 0.5, tol)
	if v.P < 0.1 || v.Regressed {
		t.Fatalf("6 vs 6 interleaved: %+v", v)
	}
}

func TestCompareMonteCarloMatchesExact(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 9))
	a, b := boots(rng, 8, 1000), boots(rng, 8, 1150)
	exact := DefaultTolerance()
	mc2 := exact
	mc2.Permutations = 20000
	ve, _ := Compare(a, b, 0.5, Tolerance{Alpha: 0.01, Permutations: 20000, Seed: 1})
	if !ve.Exact {
		t.Fatalf("expected exact enumeration: %+v", ve)
	}
	mc2.Permutations = 5000 // 12870 > 10000: sampled
	vm, _ := Compare(a, b, 0.5, mc2)
	if vm.Exact {
		t.Fatal("expected Monte Carlo")
	}
	if math.Abs(vm.P-ve.P) > 0.03 {
		t.Errorf("Monte Carlo p %.4f vs exact %.4f", vm.P, ve.P)
	}
}

func TestCompareRejectsBadInput(t *testing.T) {
	tol := DefaultTolerance()
	ok := []float64{1, 2, 3, 4, 5}
	if _, err := Compare(ok, []float64{1, 2, 3, 4, math.NaN()}, 0.5, tol); err == nil {
		t.Error("NaN sample accepted")
	}
	bad := tol
	bad.Alpha = 0
	if _, err := Compare(ok, ok, 0.5, bad); err == nil {
		t.Error("alpha 0 accepted")
	}
}

func TestBinomialAndCombinations(t *testing.T) {
	if c, ok := binomial(10, 5, 1000); !ok || c != 252 {
		t.Errorf("C(10,5) = %d, %v", c, ok)
	}
	if _, ok := binomial(40, 20, 20000); ok {
		t.Error("C(40,20) should exceed the limit")
	}
	idx := []int{0, 1}
	n := 1
	for nextCombination(idx, 4) {
		n++
	}
	if n != 6 {
		t.Errorf("walked %d 2-subsets of 4, want 6", n)
	}
}

func TestCompareShiftExactAndIdentical(t *testing.T) {
	tol := DefaultTolerance()
	base := []float64{1000, 1010, 1020, 1030, 1040, 1050}
	cand := []float64{5000, 5010, 5020, 5030, 5040, 5050}
	v, err := CompareShift(base, cand, 0.5, tol)
	if err != nil {
		t.Fatal(err)
	}
	// Only the observed split has the largest rank sum.
	if !v.Exact || math.Abs(v.P-1.0/924) > 1e-12 || !v.Regressed || v.Statistic != RankShift {
		t.Fatalf("6 vs 6 separated: %+v, want exact p = 1/924", v)
	}
	rng := rand.New(rand.NewPCG(11, 11))
	var significant int
	for i := 0; i < 100; i++ {
		v, err := CompareShift(boots(rng, 20, 7000), boots(rng, 20, 7000), 0.5, tol)
		if err != nil {
			t.Fatal(err)
		}
		if v.Significant {
			significant++
		}
	}
	// Binomial(100, 0.01) exceeds 5 with probability about 0.0006.
	if significant > 5 {
		t.Errorf("%d of 100 identical pairs significant", significant)
	}
}

// On a loaded machine some boots of both sides stall, and the pooled sample
// is bimodal; the difference of medians then swings between random splits
// and loses power, while the rank sum keeps more of it. These figures are shaped
// like a measured run (pid1, µs) with a 20 ms injected delay.
func TestCompareShiftKeepsPowerUnderStalls(t *testing.T) {
	rng := rand.New(rand.NewPCG(12, 12))
	var base, cand []float64
	for i := 0; i < 20; i++ {
		b := 5000 * math.Exp(0.2*rng.NormFloat64())
		c := 25000 * math.Exp(0.2*rng.NormFloat64())
		// A fifth of the boots of either side hit a stall of 10–100 ms.
		if i%5 == 0 {
			b += 10000 + 90000*rng.Float64()
		}
		if i%5 == 1 {
			c += 10000 + 90000*rng.Float64()
		}
		base, cand = append(base, b), append(cand, c)
	}
	tol := DefaultTolerance()
	tol.Alpha = 0.01 / 12 // as the gate uses it
	q, _ := Compare(base, cand, 0.5, tol)
	r, _ := CompareShift(base, cand, 0.5, tol)
	t.Logf("median difference p = %.4f, rank sum p = %.5f", q.P, r.P)
	if !r.Regressed {
		t.Errorf("rank-sum test missed a 5× slower median under stalls: %+v", r)
	}
	if r.P >= q.P {
		t.Errorf("rank sum p %.5f not below median-difference p %.5f", r.P, q.P)
	}
}

func TestTailIsTheMaximumBelowAHundredSamples(t *testing.T) {
	for _, c := range []struct {
		n     int
		q     float64
		label string
	}{{0, 1, "max"}, {20, 1, "max"}, {99, 1, "max"}, {100, 0.99, "p99"}, {5000, 0.99, "p99"}} {
		q, label := Tail(c.n)
		if q != c.q || label != c.label {
			t.Errorf("Tail(%d) = %v %q, want %v %q", c.n, q, label, c.q, c.label)
		}
	}
}
