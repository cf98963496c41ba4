// Package bench boots guests under a VMM many times, times every boot stage
// from the kernel's side (package trace), keeps one HDR histogram per stage,
// prints and stores the results, compares VMMs and gates regressions with a
// permutation test.
package bench
