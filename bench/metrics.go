package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metric names; the Grafana dashboard test checks every query against
// MetricNames.
const (
	MetricStageSeconds   = "volt_boot_stage_seconds"
	MetricBoots          = "volt_boots_total"
	MetricBootFailures   = "volt_boot_failures_total"
	MetricUserspaceExits = "volt_boot_userspace_exits_total"
	MetricKVMExits       = "volt_boot_kvm_exits_total"
)

// Metrics exports boot results for Prometheus. Labels are only "stage"
// and "vmm": both have a handful of values, so series stay few.
type Metrics struct {
	reg       *prometheus.Registry
	stage     *prometheus.HistogramVec
	boots     *prometheus.CounterVec
	failures  *prometheus.CounterVec
	userExits *prometheus.CounterVec
	kvmExits  *prometheus.CounterVec
}

// NewMetrics registers the metrics with a private registry, so that
// nothing else in the process leaks into the scrape.
func NewMetrics() *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	m.stage = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: MetricStageSeconds,
		Help: "Time from the exec of the VMM to each boot stage, measured in the kernel with eBPF.",
		// 100 µs to ~1.6 s, doubling: covers VMM set-up to a slow exit.
		Buckets: prometheus.ExponentialBuckets(0.0001, 2, 15),
		// Native buckets grow by at most 10 %, fine enough for p99.
		NativeHistogramBucketFactor:     1.1,
		NativeHistogramMaxBucketNumber:  160,
		NativeHistogramMinResetDuration: time.Hour,
	}, []string{"stage", "vmm"})
	m.boots = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: MetricBoots,
		Help: "Boots attempted.",
	}, []string{"vmm"})
	m.failures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: MetricBootFailures,
		Help: "Boots that failed or timed out.",
	}, []string{"vmm"})
	m.userExits = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: MetricUserspaceExits,
		Help: "KVM exits to the VMM (kvm:kvm_userspace_exit) during each boot stage.",
	}, []string{"stage", "vmm"})
	m.kvmExits = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: MetricKVMExits,
		Help: "All KVM exits (kvm:kvm_exit) during each boot stage.",
	}, []string{"stage", "vmm"})
	m.reg.MustRegister(m.stage, m.boots, m.failures, m.userExits, m.kvmExits)
	return m
}

// MetricNames lists every metric family the exporter registers.
func MetricNames() []string {
	return []string{MetricStageSeconds, MetricBoots, MetricBootFailures, MetricUserspaceExits, MetricKVMExits}
}

// Registry exposes the private registry (for tests and linting).
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Observe records one boot.
func (m *Metrics) Observe(vmm string, b Boot) {
	m.boots.WithLabelValues(vmm).Inc()
	if b.Err != nil {
		m.failures.WithLabelValues(vmm).Inc()
		return
	}
	// KVM exits are exported only when they were measured: a host whose
	// kvm:kvm_exit never fires would otherwise show zeros beside exits to
	// user space, which is impossible. The series is then absent ("no
	// data" in Grafana), never a false zero.
	var kvm, user uint64
	for _, st := range b.Stages {
		kvm += uint64(st.KVMExits)
		user += uint64(st.UserExits)
	}
	kvmMeasured := !b.KVMExitsUntraced && (kvm > 0 || user == 0)
	// Every row the boot was timed by: Stages for boots, RestoreStages
	// for restores and their cold-boot peers.
	for name, st := range b.Stages {
		m.stage.WithLabelValues(name, vmm).Observe(st.At.Seconds())
		m.userExits.WithLabelValues(name, vmm).Add(float64(st.UserExits))
		if kvmMeasured {
			m.kvmExits.WithLabelValues(name, vmm).Add(float64(st.KVMExits))
		}
	}
}

// Serve serves the metrics on addr (host:port; port 0 picks one) at
// /metrics until stop is called, which shuts the server down and waits
// for it. It returns the address it listens on. Errors of the running
// server go to logf.
func (m *Metrics) Serve(addr string, logf func(format string, args ...any)) (bound string, stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, fmt.Errorf("metrics: listen on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", m.Handler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logf("metrics server: %v", err)
		}
	}()
	return ln.Addr().String(), func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-done
	}, nil
}

// Handler serves the registry in the Prometheus exposition formats
// (protobuf when asked, which carries native histograms).
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}
