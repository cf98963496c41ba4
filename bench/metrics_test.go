package bench

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func observedMetrics() *Metrics {
	m := NewMetrics()
	for i := 0; i < 3; i++ {
		m.Observe("volt", Boot{Stages: map[string]StageTime{
			"vmm-ready": {At: 2 * time.Millisecond},
			"pid1":      {At: 7 * time.Millisecond, UserExits: 4, KVMExits: 9},
			"exit":      {At: 20 * time.Millisecond, UserExits: 40},
		}})
	}
	m.Observe("qemu", Boot{Err: ErrTimeout})
	return m
}

func TestMetricsFollowPrometheusNamingRules(t *testing.T) {
	m := observedMetrics()
	problems, err := testutil.GatherAndLint(m.Registry())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
	if n := testutil.CollectAndCount(m.stage, MetricStageSeconds); n != 3 {
		t.Errorf("%d stage series, want 3 (vmm-ready, pid1, exit for volt)", n)
	}
	want := `
# HELP volt_boots_total Boots attempted.
# TYPE volt_boots_total counter
volt_boots_total{vmm="qemu"} 1
volt_boots_total{vmm="volt"} 3
`
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(want), MetricBoots); err != nil {
		t.Error(err)
	}
	if got := testutil.ToFloat64(m.userExits.WithLabelValues("pid1", "volt")); got != 12 {
		t.Errorf("pid1 user exits = %v, want 12", got)
	}
}

func TestMetricsOnlyStageAndVMMLabels(t *testing.T) {
	families, err := observedMetrics().Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		for _, metric := range f.GetMetric() {
			for _, l := range metric.GetLabel() {
				if l.GetName() != "stage" && l.GetName() != "vmm" {
					t.Errorf("%s has label %q", f.GetName(), l.GetName())
				}
			}
		}
		if f.GetName() == MetricStageSeconds {
			h := f.GetMetric()[0].GetHistogram()
			if len(h.GetBucket()) == 0 {
				t.Error("no classic buckets")
			}
			if h.GetSchema() == 0 && len(h.GetPositiveSpan()) == 0 {
				t.Error("no native histogram (schema and spans empty)")
			}
		}
	}
}

func TestMetricsHandlerServesAScrape(t *testing.T) {
	srv := httptest.NewServer(observedMetrics().Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`volt_boot_stage_seconds_bucket{stage="pid1",vmm="volt",le="0.0064"} 0`,
		`volt_boot_stage_seconds_bucket{stage="pid1",vmm="volt",le="0.0128"} 3`,
		`volt_boot_stage_seconds_count{stage="exit",vmm="volt"} 3`,
		`volt_boot_failures_total{vmm="qemu"} 1`,
		`volt_boot_userspace_exits_total{stage="exit",vmm="volt"} 120`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("scrape lacks %q", want)
		}
	}
}

// KVM exits are exported only where they were measured: zero KVM exits
// beside exits to user space, or an untraced kvm:kvm_exit, leave the series
// out rather than report a false zero.
func TestMetricsLeaveOutUnmeasuredKVMExits(t *testing.T) {
	for _, c := range []struct {
		name string
		boot Boot
		want int
	}{
		{"measured", Boot{Stages: map[string]StageTime{"pid1": {At: time.Millisecond, UserExits: 2, KVMExits: 5}}}, 1},
		{"never fired", Boot{Stages: map[string]StageTime{"pid1": {At: time.Millisecond, UserExits: 2}}}, 0},
		{"untraced", Boot{Stages: map[string]StageTime{"pid1": {At: time.Millisecond, KVMExits: 5}}, KVMExitsUntraced: true}, 0},
		{"no VM, no exits", Boot{Stages: map[string]StageTime{"exit": {At: time.Millisecond}}}, 1},
	} {
		m := NewMetrics()
		m.Observe("volt", c.boot)
		if n := testutil.CollectAndCount(m.kvmExits, MetricKVMExits); n != c.want {
			t.Errorf("%s: %d kvm exit series, want %d", c.name, n, c.want)
		}
		if n := testutil.CollectAndCount(m.userExits, MetricUserspaceExits); n != 1 {
			t.Errorf("%s: %d user exit series, want 1", c.name, n)
		}
	}
}
