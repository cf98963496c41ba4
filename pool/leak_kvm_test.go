package pool

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	pc "github.com/voltvmm/volt/pool/client"
)

// resources are what a leak would grow.
type resources struct {
	fds, threads, goroutines, vmms, netns, mounts, namedNetns int
	heap, rss                                                 uint64 // bytes
}

func countDir(path string) int {
	ents, _ := os.ReadDir(path)
	return len(ents)
}

func countLines(path string) int {
	b, _ := os.ReadFile(path)
	return bytes.Count(b, []byte("\n"))
}

func statusField(name string) uint64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), name+":"); ok {
			fs := strings.Fields(rest)
			if len(fs) > 0 {
				v, _ := strconv.ParseUint(fs[0], 10, 64)
				if len(fs) > 1 && fs[1] == "kB" {
					v *= 1024
				}
				return v
			}
		}
	}
	return 0
}

func measure(state string) resources {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	r := resources{
		fds:        countDir("/proc/self/fd"),
		threads:    int(statusField("Threads")),
		goroutines: runtime.NumGoroutine(),
		mounts:     countLines("/proc/self/mountinfo"),
		namedNetns: countDir("/run/netns"),
		heap:       ms.HeapAlloc,
		rss:        statusField("VmRSS"),
	}
	netns := map[string]bool{}
	for _, pid := range vmmsUnder(state) {
		r.vmms++
		if ns, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/ns/net"); err == nil {
			netns[ns] = true
		}
	}
	r.netns = len(netns)
	return r
}

// TestTenThousandCyclesLeakNothing acquires and releases a VM of a template
// with a network (a netns and a TAP per clone) 10,000 times (300 with
// -short, or $VOLTPOOL_CYCLES) and compares what the daemon holds at the
// midpoint and at the end, each time after the pool has settled to its warm
// target: file descriptors, threads, goroutines, VMM processes, network
// namespaces, mounts and the live Go heap must not grow.
func TestTenThousandCyclesLeakNothing(t *testing.T) {
	cycles := 10000
	if testing.Short() {
		cycles = 300
	}
	if env := os.Getenv("VOLTPOOL_CYCLES"); env != "" {
		n, err := strconv.Atoi(env)
		if err != nil || n < 2 {
			t.Fatalf("$VOLTPOOL_CYCLES=%q", env)
		}
		cycles = n
	}
	const warm = 2
	s := serve(t, Config{RefillConcurrency: 2})
	s.probeTemplate(t, "base", 0)
	ctx := context.Background()
	if _, err := s.client.CreateTemplate(ctx, pc.TemplateSpec{Name: "net", FromSnapshot: filepath.Join(s.state, "templates", "base", "snapshot"),
		Warm: warm, Network: &pc.Network{HostDevName: "vtap0"}}); err != nil {
		t.Fatal(err)
	}
	settle := func() resources {
		s.waitWarm(t, "net", warm)
		waitFor(t, "released VMMs to be reaped", func() bool { return len(s.pool.VMs()) == warm && len(vmmsUnder(s.state)) == warm })
		// Idle keep-alive connections of the client are not leaks.
		s.client.Close()
		time.Sleep(50 * time.Millisecond)
		return measure(s.state)
	}
	var mid resources
	paths := map[string]int{}
	start := time.Now()
	for i := 1; i <= cycles; i++ {
		l, err := s.client.Acquire(ctx, "net", 30*time.Second)
		if err != nil {
			t.Fatalf("cycle %d: acquire: %v", i, err)
		}
		paths[l.Path]++
		if err := s.client.Release(ctx, l.ID); err != nil {
			t.Fatalf("cycle %d: release: %v", i, err)
		}
		if i == cycles/2 {
			mid = settle()
		}
	}
	elapsed := time.Since(start)
	end := settle()
	t.Logf("%d cycles in %v (%v per cycle; %d warm, %d cold)", cycles, elapsed.Round(time.Millisecond), (elapsed / time.Duration(cycles)).Round(time.Microsecond), paths[pc.PathWarm], paths[pc.PathCold])
	t.Logf("midpoint: %+v", mid)
	t.Logf("end:      %+v", end)
	for _, c := range []struct {
		what     string
		mid, end int
	}{
		{"file descriptors", mid.fds, end.fds},
		{"threads", mid.threads, end.threads},
		{"goroutines", mid.goroutines, end.goroutines},
		{"VMM processes", mid.vmms, end.vmms},
		{"network namespaces of the VMMs", mid.netns, end.netns},
		{"mounts", mid.mounts, end.mounts},
		{"named network namespaces", mid.namedNetns, end.namedNetns},
	} {
		// Threads may vary by a few with the Go scheduler's needs.
		slack := 0
		if c.what == "threads" {
			slack = 4
		}
		if c.end > c.mid+slack {
			t.Errorf("%s grew from %d to %d over %d cycles", c.what, c.mid, c.end, cycles-cycles/2)
		}
	}
	if end.vmms != warm || end.netns != warm {
		t.Errorf("at rest: %d VMMs in %d namespaces, want %d each", end.vmms, end.netns, warm)
	}
	// The only state kept per ended lease is a bounded record (maxEnded
	// of them); the live heap must not keep growing past that.
	if end.heap > mid.heap+2<<20 {
		t.Errorf("live heap grew from %d to %d bytes", mid.heap, end.heap)
	}
	if end.rss > mid.rss+32<<20 {
		t.Errorf("RSS grew from %d to %d bytes", mid.rss, end.rss)
	}
}
