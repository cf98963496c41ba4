package pool

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/voltvmm/volt/bench/smaps"
	"github.com/voltvmm/volt/guest/agent"
	pc "github.com/voltvmm/volt/pool/client"
	"github.com/voltvmm/volt/vmm/api/types"
)

// touchedPages is how much of the template's memory holds data: the probe
// writes a pattern to this many 4 KiB pages before the snapshot (16 MiB),
// so that clones map real content rather than a few pages of an idle
// guest.
const touchedPages = 4096

// touchedSnapshot boots the probe with its agent, has it write
// touchedPages pages, and snapshots it into a new directory (flat files).
func touchedSnapshot(b testing.TB) string {
	b.Helper()
	vmmBin, kernel, _ := fixture(b)
	dir := shortDir(b)
	snap := filepath.Join(dir, "snap")
	if err := os.Mkdir(snap, 0o755); err != nil {
		b.Fatal(err)
	}
	v, err := spawn(context.Background(), spawnSpec{id: "touch", dir: filepath.Join(dir, "vm"), vmmBin: vmmBin,
		extraArgs: []string{"--console", "none", "--snapshot-dir", snap}, vsock: true})
	if v == nil {
		b.Fatal(err)
	}
	go v.proc.wait()
	defer func() {
		v.proc.kill()
		<-v.proc.done
	}()
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := v.api
	for _, step := range []func() error{
		func() error { return c.PutMachineConfig(ctx, types.MachineConfiguration{VCPUCount: 1, MemSizeMib: 64}) },
		func() error {
			return c.PutBootSource(ctx, types.BootSource{KernelImagePath: kernel, BootArgs: "console=ttyS0 reboot=k panic=1 probe.agent"})
		},
		func() error { return c.PutVsock(ctx, types.Vsock{GuestCID: 3, UDSPath: v.vsockUDS}) },
		func() error { return c.Start(ctx) },
		func() error { return waitReady(ctx, v, true, "", 0) },
		func() error {
			res, err := pc.RunOn(ctx, pc.Lease{ID: "touch", VsockUDS: v.vsockUDS}, agent.Request{Args: []string{"touch", fmt.Sprint(touchedPages)}}, nil)
			if err == nil && !res.Success() {
				err = fmt.Errorf("touch: %+v %s", res.Status, res.Stdout)
			}
			return err
		},
		func() error { return c.Pause(ctx) },
		func() error {
			return c.CreateSnapshot(ctx, types.SnapshotCreateParams{SnapshotPath: filepath.Join(snap, types.SnapshotStateFile), MemFilePath: filepath.Join(snap, types.SnapshotMemFile)})
		},
	} {
		if err := step(); err != nil {
			b.Fatal(err)
		}
	}
	return snap
}

// arm is one way of running the pool, measured beside the others.
type arm struct {
	name               string
	s                  *served
	warm, cold         []time.Duration // acquire latencies
	warmPSS, leasedPSS []uint64        // kB per clone
	leasedPrivate      []uint64        // kB per clone
	sumWant            string
}

const armWarm = 3

// BenchmarkPoolArms measures, side by side in one run, four ways of
// running the pool on the same snapshot (the probe with 16 MiB written):
// memory in flat files or in the CAS, VMMs unjailed or jailed. Each
// iteration takes every arm in turn (the order rotating), each with its
// pool refilled first: a warm acquire (resume), then a cold one (restore on
// demand). At the end it reads the PSS of each arm's warm clones, and of
// three clones leased at once that each read all 16 MiB (sum), which their
// page cache shares.
//
//	go test -run '^$' -bench PoolArms -benchtime 40x ./pool
func BenchmarkPoolArms(b *testing.B) {
	requireRoot(b)
	snapTool, jailer := tools(b)
	snap := touchedSnapshot(b)
	mk := func(name string, jailed, withCAS bool) *arm {
		cfg := Config{SnapshotTool: snapTool}
		if jailed {
			cfg.Jail = &JailConfig{Jailer: jailer, UIDs: testUIDs}
		}
		if withCAS {
			cfg.StoreDir = filepath.Join(shortDir(b), "cas")
		}
		a := &arm{name: name, s: serve(b, cfg)}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for _, t := range []struct {
			name string
			warm int
		}{{"w", armWarm}, {"c", 0}} {
			if _, err := a.s.client.CreateTemplate(ctx, pc.TemplateSpec{Name: t.name, FromSnapshot: snap, Vsock: true, Warm: t.warm}); err != nil {
				b.Fatalf("%s: template %s: %v", name, t.name, err)
			}
		}
		return a
	}
	arms := []*arm{mk("flat", false, false), mk("cas", false, true), mk("flat-jailed", true, false), mk("cas-jailed", true, true)}
	for _, a := range arms {
		a.s.waitWarm(b, "w", armWarm)
	}
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for k := range arms {
			a := arms[(i+k)%len(arms)]
			a.s.waitWarm(b, "w", armWarm)
			t0 := time.Now()
			l, err := a.s.client.Acquire(ctx, "w", time.Minute)
			d := time.Since(t0)
			if err != nil || l.Path != pc.PathWarm {
				b.Fatalf("%s: warm acquire %+v %v", a.name, l, err)
			}
			a.warm = append(a.warm, d)
			a.s.client.Release(ctx, l.ID)
			a.s.waitWarm(b, "w", armWarm)
			t0 = time.Now()
			l, err = a.s.client.Acquire(ctx, "c", time.Minute)
			d = time.Since(t0)
			if err != nil || l.Path != pc.PathCold {
				b.Fatalf("%s: cold acquire %+v %v", a.name, l, err)
			}
			a.cold = append(a.cold, d)
			a.s.client.Release(ctx, l.ID)
		}
	}
	b.StopTimer()
	for _, a := range arms {
		a.s.waitWarm(b, "w", armWarm)
		for _, v := range a.s.pool.VMs() {
			if v.Template == "w" && v.State == string(vmWarm) {
				r, err := smaps.ReadRollup(v.PID)
				if err != nil {
					b.Fatal(err)
				}
				a.warmPSS = append(a.warmPSS, r.Pss)
			}
		}
		a.measureLeased(b)
	}
	var tab strings.Builder
	fmt.Fprintf(&tab, "BenchmarkPoolArms: %d rounds; ms p50 / p99; PSS kB per clone (median)\n", b.N)
	fmt.Fprintf(&tab, "%-12s %17s %17s %10s %12s %14s\n", "arm", "warm acquire", "cold acquire", "warm PSS", "leased PSS", "leased private")
	for _, a := range arms {
		fmt.Fprintf(&tab, "%-12s %7.2f / %7.2f %7.2f / %7.2f %10d %12d %14d\n", a.name,
			ms(pct(a.warm, 50)), ms(pct(a.warm, 99)), ms(pct(a.cold, 50)), ms(pct(a.cold, 99)),
			medianKB(a.warmPSS), medianKB(a.leasedPSS), medianKB(a.leasedPrivate))
		b.ReportMetric(ms(pct(a.warm, 50)), a.name+"-warm-p50-ms")
		b.ReportMetric(ms(pct(a.cold, 50)), a.name+"-cold-p50-ms")
		b.ReportMetric(float64(medianKB(a.warmPSS)), a.name+"-warm-pss-kB")
		b.ReportMetric(float64(medianKB(a.leasedPSS)), a.name+"-leased-pss-kB")
	}
	ratio := func(x, y *arm, f func(*arm) float64) float64 { return f(x) / f(y) }
	warm50 := func(a *arm) float64 { return ms(pct(a.warm, 50)) }
	cold50 := func(a *arm) float64 { return ms(pct(a.cold, 50)) }
	fmt.Fprintf(&tab, "jailed/unjailed p50: warm flat %.2f, cas %.2f; cold flat %.2f, cas %.2f\n",
		ratio(arms[2], arms[0], warm50), ratio(arms[3], arms[1], warm50), ratio(arms[2], arms[0], cold50), ratio(arms[3], arms[1], cold50))
	fmt.Fprintf(&tab, "cas/flat p50: warm %.2f, cold %.2f (unjailed)\n", ratio(arms[1], arms[0], warm50), ratio(arms[1], arms[0], cold50))
	// On stdout: a benchmark's b.Log output is cut after a few lines.
	fmt.Print(tab.String())
}

// measureLeased leases three clones at once, has each read the touched
// pages, and reads their PSS and private memory.
func (a *arm) measureLeased(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var ls []pc.Lease
	for range armWarm {
		l, err := a.s.client.Acquire(ctx, "w", time.Minute)
		if err != nil {
			b.Fatal(err)
		}
		ls = append(ls, l)
	}
	for _, l := range ls {
		res, err := pc.RunOn(ctx, l, agent.Request{Args: []string{"sum", fmt.Sprint(touchedPages)}}, nil)
		if err != nil || !res.Success() {
			b.Fatalf("%s: sum: %+v %v", a.name, res.Status, err)
		}
		out := strings.TrimSpace(string(res.Stdout))
		if a.sumWant == "" {
			a.sumWant = out
		} else if out != a.sumWant {
			b.Fatalf("%s: clones read different memory: %q and %q", a.name, out, a.sumWant)
		}
	}
	for _, l := range ls {
		r, err := smaps.ReadRollup(l.PID)
		if err != nil {
			b.Fatal(err)
		}
		a.leasedPSS = append(a.leasedPSS, r.Pss)
		a.leasedPrivate = append(a.leasedPrivate, r.PrivateClean+r.PrivateDirty)
	}
	for _, l := range ls {
		a.s.client.Release(ctx, l.ID)
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// pct is the p-th percentile (nearest rank) of ds.
func pct(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := (p*len(s) + 99) / 100
	return s[max(0, min(len(s)-1, i-1))]
}

func medianKB(v []uint64) uint64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]uint64(nil), v...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}
