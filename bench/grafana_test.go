package bench

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// promQueries walks a decoded dashboard and returns every PromQL string:
// panel targets ("expr") and query variables ("query", a string or an
// object holding one).
func promQueries(v any, key string, out *[]string) {
	switch x := v.(type) {
	case map[string]any:
		for k, val := range x {
			if s, ok := val.(string); ok && (k == "expr" || (k == "query" && key != "")) {
				*out = append(*out, s)
				continue
			}
			next := ""
			if k == "templating" || key != "" {
				next = "templating"
			}
			promQueries(val, next, out)
		}
	case []any:
		for _, val := range x {
			promQueries(val, key, out)
		}
	}
}

var (
	reString     = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|` + "`[^`]*`")
	reGrafanaVar = regexp.MustCompile(`\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*`)
	reBraces     = regexp.MustCompile(`\{[^{}]*\}`)
	reRange      = regexp.MustCompile(`\[[^\]]*\]`)
	reGrouping   = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	reLabelVals  = regexp.MustCompile(`\blabel_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*,\s*[A-Za-z_][A-Za-z0-9_]*\s*\)`)
	reIdent      = regexp.MustCompile(`[A-Za-z_:][A-Za-z0-9_:]*(\s*\()?`)
)

var promKeywords = map[string]bool{
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
	"bool": true, "and": true, "or": true, "unless": true, "offset": true, "inf": true, "nan": true,
}

// metricNamesIn returns the metric names a PromQL expression selects. It is
// a small tokenizer, not a parser: strings, label matchers, ranges,
// grouping clauses and Grafana variables are blanked first, then every
// identifier not followed by "(" must be a metric.
func metricNamesIn(expr string) []string {
	e := reString.ReplaceAllString(expr, `""`)
	e = reLabelVals.ReplaceAllString(e, " $1 ")
	e = reGrafanaVar.ReplaceAllString(e, "0")
	e = reBraces.ReplaceAllString(e, " ")
	e = reRange.ReplaceAllString(e, " ")
	e = reGrouping.ReplaceAllString(e, " ")
	var names []string
	for _, m := range reIdent.FindAllStringSubmatch(e, -1) {
		if m[1] != "" || promKeywords[strings.ToLower(m[0])] {
			continue
		}
		names = append(names, m[0])
	}
	return names
}

func TestMetricNamesInQueries(t *testing.T) {
	got := metricNamesIn(`sum by (stage, vmm) (rate(volt_a_total{vmm=~"$vmm", stage="x"}[$__rate_interval])) / on (vmm) group_left () sum by (vmm) (rate(volt_b_total[5m])) * 60`)
	if !slices.Equal(got, []string{"volt_a_total", "volt_b_total"}) {
		t.Errorf("got %q", got)
	}
	if got := metricNamesIn(`label_values(volt_c_count, stage)`); !slices.Equal(got, []string{"volt_c_count"}) {
		t.Errorf("label_values: got %q", got)
	}
}

func TestGrafanaDashboardQueriesNameExportedMetrics(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("grafana", "dashboards", "volt-boot.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash map[string]any
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	for _, k := range []string{"uid", "title", "panels", "templating"} {
		if _, ok := dash[k]; !ok {
			t.Errorf("dashboard has no %q", k)
		}
	}

	// The series the exporter really exposes, after one boot.
	m := NewMetrics()
	m.Observe("volt", Boot{Stages: map[string]StageTime{"pid1": {At: 5 * time.Millisecond, UserExits: 3, KVMExits: 9}}})
	m.Observe("volt", Boot{Err: ErrTimeout})
	families, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	exported := map[string]bool{}
	for _, f := range families {
		name := f.GetName()
		exported[name] = true
		if f.GetType().String() == "HISTOGRAM" {
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				exported[name+suffix] = true
			}
		}
	}
	for _, name := range MetricNames() {
		if !exported[name] {
			t.Errorf("MetricNames lists %s, which the registry does not expose", name)
		}
	}

	var queries []string
	promQueries(dash, "", &queries)
	if len(queries) < 6 {
		t.Fatalf("found only %d queries in the dashboard", len(queries))
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
				t.Errorf("query uses %s, which voltbench does not export: %s", n, q)
			}
		}
	}
	for _, want := range []string{MetricStageSeconds + "_bucket", MetricUserspaceExits} {
		if !used[want] {
			t.Errorf("no panel queries %s", want)
		}
	}
}

func TestGrafanaProvisioningFiles(t *testing.T) {
	for path, wants := range map[string][]string{
		"grafana/provisioning/dashboards/volt.yaml":        {"apiVersion: 1", "providers:", "type: file", "path:"},
		"grafana/provisioning/datasources/prometheus.yaml": {"apiVersion: 1", "datasources:", "type: prometheus", "uid: volt-prometheus"},
	} {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range wants {
			if !strings.Contains(string(data), w) {
				t.Errorf("%s lacks %q", path, w)
			}
		}
		if strings.Contains(string(data), "\t") {
			t.Errorf("%s has tabs, which YAML forbids for indentation", path)
		}
	}
}
