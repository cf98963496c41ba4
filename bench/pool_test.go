package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/voltvmm/volt/guest/agent"
	"github.com/voltvmm/volt/pool"
	pc "github.com/voltvmm/volt/pool/client"
)

func TestPoolDashboardQueriesNamePoolMetrics(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("grafana", "dashboards", "volt-pool.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash map[string]any
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	if dash["uid"] != "volt-pool" {
		t.Errorf("uid %v", dash["uid"])
	}
	exported := map[string]bool{}
	for _, n := range pool.MetricNames() {
		exported[n] = true
		if strings.HasSuffix(n, "_seconds") {
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				exported[n+s] = true
			}
		}
	}
	var queries []string
	promQueries(dash, "", &queries)
	if len(queries) < 8 {
		t.Fatalf("only %d queries", len(queries))
	}
	used := map[string]bool{}
	for _, q := range queries {
		names := metricNamesIn(q)
		if len(names) == 0 {
			t.Errorf("query names no metric: %s", q)
		}
		for _, n := range names {
			used[n] = true
			if !exported[n] {
				t.Errorf("query uses %s, which voltpool does not export: %s", n, q)
			}
		}
	}
	for _, want := range []string{pool.MetricAcquireSeconds + "_bucket", pool.MetricWarm, pool.MetricLeased, pool.MetricTarget, pool.MetricFailures, pool.MetricExpiries} {
		if !used[want] {
			t.Errorf("no panel queries %s", want)
		}
	}
}

func TestPoolTableSaysWhatWasNotMeasured(t *testing.T) {
	rep := &PoolReport{Agent: true}
	warm := newPoolCell(PoolArmWarm, 8)
	for i := 0; i < 120; i++ {
		warm.record(PoolStageAcquire, time.Duration(1000+i)*time.Microsecond, nil)
		warm.record(PoolStageRelease, 2*time.Millisecond, nil)
	}
	warm.Paths["warm"] = 120
	boot := newPoolCell(PoolArmColdBoot, 8)
	boot.record(PoolStageFirstAnswer, 40*time.Millisecond, nil)
	boot.Errors, boot.FirstErr = 1, "no answer"
	rep.Cells = []*PoolCell{warm, boot}
	rep.WarmPSS = []uint64{2000, 2100, 2200}
	var b bytes.Buffer
	if err := WritePool(&b, rep); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"8 callers (ms)", "warm p50", "p90", "cold-boot p50", "1.059", "1.107", "40.031", "warm 120; 0; 0", "first: no answer", "median 2100 kB"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	// The boot arm has one sample: no p99, and its acquire is n/a.
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "first-answer") && !strings.Contains(line, "n/a") {
			t.Errorf("first-answer row claims a value the warm arm never measured: %s", line)
		}
	}
}

// promtool accepts voltbench's expositions (the boot exporter and the pool
// bench's).
func TestPromtoolChecksVoltbenchMetrics(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("skipping: promtool not found: install Debian's prometheus package (scripts/setup should)")
	}
	m := NewMetrics()
	m.Observe("volt", Boot{Stages: map[string]StageTime{"pid1": {At: 5 * time.Millisecond, UserExits: 3, KVMExits: 9}}})
	pm := NewPoolMetrics()
	pm.Observe(PoolArmWarm, 8, PoolStageAcquire, time.Millisecond)
	for name, h := range map[string]*httptest.Server{
		"boot": httptest.NewServer(promhttp.HandlerFor(m.Registry(), promhttp.HandlerOpts{})),
		"pool": httptest.NewServer(promhttp.HandlerFor(pm.Registry(), promhttp.HandlerOpts{})),
	} {
		resp, err := h.Client().Get(h.URL)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		h.Close()
		if !bytes.Contains(body, []byte("volt_")) {
			t.Errorf("%s: no volt_ series in %q", name, body)
		}
		cmd := exec.Command(promtool, "check", "metrics")
		cmd.Stdin = bytes.NewReader(body)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool check metrics (%s): %v\n%s", name, err, out)
		}
	}
}

// The cold-boot arm's few rounds are spread over the run: exactly k of
// total, the first round among them, none two in a row when k ≤ total/2.
func TestPoolRoundDueSpreadsAnArmsRounds(t *testing.T) {
	for _, tc := range []struct{ k, total int }{{3, 100}, {1, 7}, {2, 2}, {5, 3}, {4, 9}, {50, 100}, {13, 13}, {0, 5}} {
		var due []int
		for r := 0; r < tc.total; r++ {
			if roundDue(r, tc.k, tc.total) {
				due = append(due, r)
			}
		}
		if want := min(tc.k, tc.total); len(due) != want {
			t.Errorf("k=%d total=%d: due in rounds %v, want %d of them", tc.k, tc.total, due, want)
			continue
		}
		if tc.k > 0 && due[0] != 0 {
			t.Errorf("k=%d total=%d: first due round %d, want 0", tc.k, tc.total, due[0])
		}
		for i := 1; i < len(due) && 2*tc.k <= tc.total; i++ {
			if due[i]-due[i-1] < 2 {
				t.Errorf("k=%d total=%d: rounds %v bunch up", tc.k, tc.total, due)
			}
		}
	}
}

func TestPoolArmRoundsShapeTheColdBootArm(t *testing.T) {
	base := PoolSpec{Warm: "w", Cold: "c", Samples: 100}
	for _, tc := range []struct {
		name    string
		boot    *PoolColdBoot
		callers int
		want    []PoolArm
	}{
		{"no boot arm", nil, 8, []PoolArm{{Arm: PoolArmWarm, Rounds: 13}, {Arm: PoolArmColdRestore, Rounds: 13}}},
		{"boot like the others", &PoolColdBoot{}, 8, []PoolArm{{Arm: PoolArmWarm, Rounds: 13}, {Arm: PoolArmColdRestore, Rounds: 13}, {Arm: PoolArmColdBoot, Rounds: 13}}},
		{"few boots", &PoolColdBoot{Samples: 3}, 1, []PoolArm{{Arm: PoolArmWarm, Rounds: 100}, {Arm: PoolArmColdRestore, Rounds: 100}, {Arm: PoolArmColdBoot, Rounds: 3}}},
		{"few boots, whole rounds", &PoolColdBoot{Samples: 3}, 8, []PoolArm{{Arm: PoolArmWarm, Rounds: 13}, {Arm: PoolArmColdRestore, Rounds: 13}, {Arm: PoolArmColdBoot, Rounds: 1}}},
		{"boots at 1 caller only, here", &PoolColdBoot{Samples: 3, Callers: []int{1}}, 1, []PoolArm{{Arm: PoolArmWarm, Rounds: 100}, {Arm: PoolArmColdRestore, Rounds: 100}, {Arm: PoolArmColdBoot, Rounds: 3}}},
		{"boots at 1 caller only, not at 64", &PoolColdBoot{Samples: 3, Callers: []int{1}}, 64, []PoolArm{{Arm: PoolArmWarm, Rounds: 2}, {Arm: PoolArmColdRestore, Rounds: 2}}},
	} {
		spec := base
		spec.Boot = tc.boot
		got := PoolArmRounds(spec, tc.callers)
		if len(got) != len(tc.want) {
			t.Errorf("%s: %+v, want %+v", tc.name, got, tc.want)
			continue
		}
		for i := range got {
			if got[i].Arm != tc.want[i].Arm || got[i].Rounds != tc.want[i].Rounds {
				t.Errorf("%s: arm %d is %s×%d, want %s×%d", tc.name, i, got[i].Arm, got[i].Rounds, tc.want[i].Arm, tc.want[i].Rounds)
			}
		}
	}
	spec := base
	spec.Cold = ""
	if got := PoolArmRounds(spec, 1); len(got) != 1 || got[0].Arm != PoolArmWarm {
		t.Errorf("without a cold template: %+v", got)
	}
	spec.Primed = "p"
	if got := PoolArmRounds(spec, 8); len(got) != 2 || got[1].Arm != PoolArmWarmPrimed || got[1].Rounds != 13 || spec.template(PoolArmWarmPrimed) != "p" {
		t.Errorf("with a primed template: %+v", got)
	}
}

// fakePool serves the parts of voltpool's API a pool cycle uses on a Unix
// socket, with one template that always has warm VMs, and a hybrid vsock
// socket whose first resets connections are closed right after the
// CONNECT handshake (what a just-restored Linux clone can do) before it
// answers like the agent.
type fakePool struct {
	sock     string
	mu       sync.Mutex
	released int
	conns    int
	ttls     []string // of every acquire
	// warm is how many warm VMs the status reports (64 unless set before
	// the first request); releaseDelay holds every release this long.
	warm         int
	releaseDelay time.Duration
}

func newFakePool(t *testing.T, resets int) *fakePool {
	t.Helper()
	dir := t.TempDir()
	f := &fakePool{sock: filepath.Join(dir, "p.sock"), warm: 64}
	uds := filepath.Join(dir, "v.sock")
	vln, err := net.Listen("unix", uds)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		vln.Close()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			conn, err := vln.Accept()
			if err != nil {
				return
			}
			f.mu.Lock()
			f.conns++
			reset := f.conns <= resets
			f.mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				line, err := bufio.NewReader(conn).ReadString('\n')
				if err != nil || line != "CONNECT 10240\n" {
					conn.Close()
					return
				}
				io.WriteString(conn, "OK 1073741824\n")
				if reset {
					conn.Close()
					return
				}
				agent.ServeConn(context.Background(), conn.(*net.UnixConn), agent.HandlerFunc(func(ctx context.Context, req agent.Request, stdout, stderr io.Writer) agent.Status {
					io.WriteString(stdout, strings.Join(req.Args[1:], " ")+"\n")
					return agent.Status{Kind: agent.Exited}
				}))
			}()
		}
	}()
	ln, err := net.Listen("unix", f.sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodGet && r.URL.Path == "/v1/status":
			f.mu.Lock()
			warm := f.warm
			f.mu.Unlock()
			json.NewEncoder(w).Encode(pc.Status{Templates: []pc.TemplateStatus{{Template: "w", Warm: warm, Target: 64}}})
		case r.Method == http.MethodPost && r.URL.Path == "/v1/leases":
			var req pc.AcquireRequest
			json.NewDecoder(r.Body).Decode(&req)
			f.mu.Lock()
			f.ttls = append(f.ttls, req.TTL)
			f.mu.Unlock()
			w.WriteHeader(http.StatusCreated)
			json.NewEncoder(w).Encode(pc.Lease{ID: "l1", Template: "w", VsockUDS: uds, Path: pc.PathWarm, ExpiresAt: time.Now().Add(time.Minute)})
		case r.Method == http.MethodDelete && r.URL.Path == "/v1/leases/l1":
			f.mu.Lock()
			f.released++
			delay := f.releaseDelay
			f.mu.Unlock()
			select {
			case <-time.After(delay):
			case <-r.Context().Done():
				return
			}
			w.WriteHeader(http.StatusNoContent)
		default:
			w.WriteHeader(http.StatusNotFound)
			io.WriteString(w, `{"error":"not faked"}`)
		}
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return f
}

// A request that fails before its answer is asked again up to Retries
// times, each retry counted; beyond them the cycle is an error. Every
// lease is released either way.
func TestPoolCycleAsksAgainUpToRetries(t *testing.T) {
	for _, tc := range []struct {
		name              string
		resets, retries   int
		wantErrors        int
		wantRetries       int
		wantFirstAnswered bool
	}{
		{"answered at once", 0, 2, 0, 0, true},
		{"one reset, retried", 1, 2, 0, 1, true},
		{"two resets, two retries", 2, 2, 0, 2, true},
		{"reset, no retries", 1, 0, 1, 0, false},
		{"more resets than retries", 3, 2, 1, 2, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakePool(t, tc.resets)
			c := pc.New(f.sock)
			defer c.Close()
			rep, err := RunPool(context.Background(), PoolSpec{Client: c, Warm: "w", Callers: []int{1}, Samples: 1, Agent: true,
				Ask: agent.Request{Args: []string{"echo", "answer"}}, Retries: tc.retries, Timeout: 20 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			cell := rep.Cells[0]
			if cell.Errors != tc.wantErrors || cell.Retries != tc.wantRetries {
				t.Errorf("errors %d (first %q), retries %d; want %d and %d", cell.Errors, cell.FirstErr, cell.Retries, tc.wantErrors, tc.wantRetries)
			}
			if got := cell.Stages[PoolStageFirstAnswer].TotalCount() == 1; got != tc.wantFirstAnswered {
				t.Errorf("first answer recorded: %v, want %v", got, tc.wantFirstAnswered)
			}
			if tc.wantRetries > 0 && cell.FirstRetry == "" {
				t.Error("retries without the failure that caused them")
			}
			f.mu.Lock()
			defer f.mu.Unlock()
			if f.released != 1 {
				t.Errorf("%d releases, want 1", f.released)
			}
			if want := min(tc.resets, tc.retries) + 1; f.conns != want {
				t.Errorf("%d connections to the agent, want %d", f.conns, want)
			}
			var b bytes.Buffer
			WritePool(&b, rep)
			paths := "warm 1"
			if tc.wantErrors > 0 {
				paths = ""
			}
			if want := fmt.Sprintf("  %s; %d; %d", paths, tc.wantErrors, tc.wantRetries); !strings.Contains(b.String(), want) {
				t.Errorf("cycles row does not say %q (paths; errors; retries):\n%s", want, b.String())
			}
		})
	}
}

// fakeVMM writes a shell script standing in for volt-vmm: it records its
// arguments and then runs body.
func fakeVMM(t *testing.T, body string) (bin, argsFile string) {
	t.Helper()
	dir := t.TempDir()
	bin, argsFile = filepath.Join(dir, "vmm"), filepath.Join(dir, "args")
	script := "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done > " + argsFile + "\n" + body + "\n"
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return bin, argsFile
}

// A cold boot without an agent ends at the console line that starts with
// ReadyLine (volt-init's goes on with its counts); with an agent, a VMM
// that exits before its agent answered fails the cycle at once, saying
// so, not at the cycle's timeout. The initramfs and the extra flags reach
// the VMM.
func TestPoolBootCycleReadyLineAndEarlyExit(t *testing.T) {
	bin, argsFile := fakeVMM(t, "echo 'volt-init: ready cpus=1 mem=121'; exec sleep 60")
	b := &PoolColdBoot{VMMBin: bin, Kernel: "/k", Initrd: "/i", Args: []string{"--guest-profile", "nested-pvm"}, ReadyLine: LinuxReadyLine, Dir: t.TempDir()}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st, err := bootCycle(ctx, b, agent.Request{})
	if err != nil {
		t.Fatalf("console ready line: %v", err)
	}
	if st[PoolStageFirstAnswer] <= 0 || st[PoolStageTotal] != st[PoolStageFirstAnswer] {
		t.Errorf("stages %v", st)
	}
	args, err := os.ReadFile(argsFile)
	if err != nil {
		t.Fatal(err)
	}
	if want := "--kernel\n/k\n--initrd\n/i\n--guest-profile\nnested-pvm\n--console\nstdio\n"; string(args) != want {
		t.Errorf("VMM arguments:\n%s\nwant:\n%s", args, want)
	}

	dead, _ := fakeVMM(t, "exit 1")
	b = &PoolColdBoot{VMMBin: dead, Kernel: "/k", Agent: true, Dir: t.TempDir(), Poll: time.Millisecond}
	_, err = bootCycle(ctx, b, agent.Request{})
	if err == nil || !strings.Contains(err.Error(), "exited before its agent answered") {
		t.Errorf("a VMM that exits: %v", err)
	}
	if ctx.Err() != nil {
		t.Errorf("the cycle ran into its timeout: %v", ctx.Err())
	}
}

// A lease outlasts the cycle that holds it, or the pool would kill a slow
// guest's VMM under the bench's wait (a Linux clone among eight took more
// than a minute here).
func TestPoolLeaseOutlastsTheCycle(t *testing.T) {
	for _, tc := range []struct {
		timeout time.Duration
		want    string
	}{{20 * time.Second, "1m0s"}, {5 * time.Minute, "5m30s"}} {
		f := newFakePool(t, 0)
		c := pc.New(f.sock)
		rep, err := RunPool(context.Background(), PoolSpec{Client: c, Warm: "w", Callers: []int{2}, Samples: 2, Agent: true, Timeout: tc.timeout})
		c.Close()
		if err != nil {
			t.Fatal(err)
		}
		if rep.Cells[0].Errors != 0 {
			t.Fatalf("errors: %s", rep.Cells[0].FirstErr)
		}
		f.mu.Lock()
		if len(f.ttls) != 2 || f.ttls[0] != tc.want || f.ttls[1] != tc.want {
			t.Errorf("timeout %v: acquired with TTLs %q, want %s", tc.timeout, f.ttls, tc.want)
		}
		f.mu.Unlock()
	}
}

// The release and warm-wait limits are the spec's, not fixed ones: a
// release slower than ReleaseTimeout fails its cycle, a pool that does not
// refill within WarmTimeout ends the run with an error naming the wait.
func TestPoolReleaseAndWarmTimeoutsAreTheSpecs(t *testing.T) {
	f := newFakePool(t, 0)
	f.mu.Lock()
	f.releaseDelay = 300 * time.Millisecond
	f.mu.Unlock()
	c := pc.New(f.sock)
	defer c.Close()
	spec := PoolSpec{Client: c, Warm: "w", Callers: []int{1}, Samples: 1, Agent: true,
		Ask: agent.Request{Args: []string{"echo", "answer"}}, Timeout: 20 * time.Second, ReleaseTimeout: 50 * time.Millisecond}
	rep, err := RunPool(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	if cell := rep.Cells[0]; cell.Errors != 1 {
		t.Errorf("a release slower than ReleaseTimeout: %d errors, want 1", cell.Errors)
	}
	spec.ReleaseTimeout = 5 * time.Second
	if rep, err = RunPool(context.Background(), spec); err != nil || rep.Cells[0].Errors != 0 {
		t.Fatalf("a release within ReleaseTimeout: %v, %+v", err, rep.Cells[0])
	}

	f.mu.Lock()
	f.warm = 0
	f.mu.Unlock()
	spec.WarmTimeout = 100 * time.Millisecond
	t0 := time.Now()
	_, err = RunPool(context.Background(), spec)
	if err == nil || !strings.Contains(err.Error(), "waiting for 1 warm VMs") {
		t.Fatalf("no warm VMs: %v, want the warm wait to time out", err)
	}
	if took := time.Since(t0); took < spec.WarmTimeout {
		t.Errorf("gave up after %v, before WarmTimeout %v", took, spec.WarmTimeout)
	}
}

// A stage of minutes (a Linux answer among eight clones here took 5-7) is
// in the table, not dropped by the histogram's range.
func TestPoolCellRecordsLongStages(t *testing.T) {
	c := newPoolCell(PoolArmWarm, 8)
	for _, d := range []time.Duration{292 * time.Second, 399 * time.Second, 2 * time.Hour} {
		c.record(PoolStageTotal, d, nil)
	}
	h := c.Stages[PoolStageTotal]
	if h.TotalCount() != 3 {
		t.Fatalf("%d of 3 long stages recorded", h.TotalCount())
	}
	if p50 := h.ValueAtQuantile(50); p50 < 398_000_000 || p50 > 400_000_000 {
		t.Errorf("p50 %d µs, want about 399 s", p50)
	}
}
