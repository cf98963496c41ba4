package pool

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	pc "github.com/voltvmm/volt/pool/client"
)

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// requireTool skips when Debian's prometheus package is not installed.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("skipping: %s not found: install Debian's prometheus package (scripts/setup should)", name)
	}
	return p
}

// promtoolCheck runs `promtool check metrics` on the exposition at url.
func promtoolCheck(t *testing.T, promtool, url string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %v", url, resp.StatusCode, err)
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(body)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics on %s: %v\n%s", url, err, out)
	}
}

// A real Prometheus server scrapes voltpool, and the acquire histogram is
// read back through its HTTP API; promtool accepts the exposition.
func TestPrometheusScrapesTheAcquireHistogram(t *testing.T) {
	prometheus := requireTool(t, "prometheus")
	promtool := requireTool(t, "promtool")
	vmmBin, _, _ := fixture(t)
	dir := shortDir(t)
	metricsPort := freePort(t)
	cfg := Config{StateDir: filepath.Join(dir, "s"), VMMBin: vmmBin}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan *Pool, 1)
	done := make(chan error, 1)
	socket := filepath.Join(dir, "pool.sock")
	go func() {
		done <- Serve(ctx, cfg, ServerConfig{Socket: socket, MetricsListen: "127.0.0.1:" + strconv.Itoa(metricsPort), Ready: func(p *Pool) { ready <- p }})
	}()
	select {
	case <-ready:
	case err := <-done:
		cancel()
		t.Fatal(err)
	}
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
		assertNoVMMs(t, cfg.StateDir)
	}()
	s := &served{client: pc.New(socket), socket: socket, state: cfg.StateDir}
	s.probeTemplate(t, "probe", 1)
	s.waitWarm(t, "probe", 1)
	for range 3 {
		l, err := s.client.Acquire(context.Background(), "probe", 0)
		if err != nil {
			t.Fatal(err)
		}
		s.client.Release(context.Background(), l.ID)
		s.waitWarm(t, "probe", 1)
	}
	metricsURL := fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort)
	promtoolCheck(t, promtool, metricsURL)

	promPort := freePort(t)
	conf := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(`global:
  scrape_interval: 1s
scrape_configs:
  - job_name: voltpool
    static_configs:
      - targets: ["127.0.0.1:%d"]
`, metricsPort)), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(prometheus, "--config.file="+conf, "--storage.tsdb.path="+filepath.Join(dir, "tsdb"),
		"--web.listen-address=127.0.0.1:"+strconv.Itoa(promPort))
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	base := fmt.Sprintf("http://127.0.0.1:%d", promPort)
	query := func(q string) (float64, bool) {
		resp, err := http.Get(base + "/api/v1/query?query=" + url.QueryEscape(q))
		if err != nil {
			return 0, false
		}
		defer resp.Body.Close()
		var r struct {
			Status string `json:"status"`
			Data   struct {
				Result []struct {
					Metric map[string]string `json:"metric"`
					Value  []any             `json:"value"`
				} `json:"result"`
			} `json:"data"`
		}
		if json.NewDecoder(resp.Body).Decode(&r) != nil || r.Status != "success" || len(r.Data.Result) != 1 || len(r.Data.Result[0].Value) != 2 {
			return 0, false
		}
		v, err := strconv.ParseFloat(fmt.Sprint(r.Data.Result[0].Value[1]), 64)
		return v, err == nil
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		v, ok := query(`volt_pool_acquire_seconds_count{job="voltpool",template="probe",path="warm"}`)
		if ok && v == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Prometheus never had the 3 warm acquires (last %v %v); its log:\n%s", v, ok, lastLines(log.String(), 20))
		}
		time.Sleep(200 * time.Millisecond)
	}
	// The buckets arrive too: a quantile can be computed from them.
	if v, ok := query(`histogram_quantile(0.5, sum by (le) (volt_pool_acquire_seconds_bucket{template="probe",path="warm"}))`); !ok || v <= 0 || v > 30 {
		t.Errorf("median acquire through Prometheus: %v %v", v, ok)
	}
	if v, ok := query(`volt_pool_target_vms{template="probe"}`); !ok || v != 1 {
		t.Errorf("target gauge through Prometheus: %v %v", v, ok)
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
