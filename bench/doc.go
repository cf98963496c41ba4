// Package bench is voltbench's runner: it boots guests under a VMM (or runs
// the floor helpers of bench/floor) many times, each timed from its exec by
// the eBPF tracer of package trace, interleaved so that a shared machine's
// moods hit every arm alike, and records every stage of every boot.
//
// A boot counts only when the VMM exits 0, the guest powered off (shutdown
// marker, no panic marker) and every row of its stages was reached.
//
// The rest lives in packages with one job each, none of which boots
// anything: results (runs, HDR histograms, the JSON file), stats (quantiles
// and permutation tests), gate (the CI gate's verdicts and decision),
// report (tables and SVG plots) and smaps (the kernel's memory accounting,
// for clones). bench talks to volt-vmm from outside only: its command line,
// its console, and its API socket through vmm/api/client.
package bench
