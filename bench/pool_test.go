package bench

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/voltvmm/volt/pool"
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
	for _, want := range []string{"8 callers (ms)", "warm p50", "cold-boot p50", "1.059", "40.031", "warm 120; 0", "first: no answer", "median 2100 kB"} {
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
