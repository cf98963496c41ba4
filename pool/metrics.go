package pool

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metric names; the Grafana dashboard test checks its queries against
// MetricNames.
const (
	MetricAcquireSeconds = "volt_pool_acquire_seconds"
	MetricWarm           = "volt_pool_warm_vms"
	MetricLeased         = "volt_pool_leased_vms"
	MetricTarget         = "volt_pool_target_vms"
	MetricStarting       = "volt_pool_starting_vms"
	MetricRestores       = "volt_pool_restores_total"
	MetricRestoreSeconds = "volt_pool_restore_seconds"
	MetricFailures       = "volt_pool_failures_total"
	MetricDeaths         = "volt_pool_vm_deaths_total"
	MetricExpiries       = "volt_pool_lease_expiries_total"
	MetricReleases       = "volt_pool_releases_total"
)

// MetricNames lists every family the pool exports.
func MetricNames() []string {
	return []string{MetricAcquireSeconds, MetricWarm, MetricLeased, MetricTarget, MetricStarting, MetricRestores,
		MetricRestoreSeconds, MetricFailures, MetricDeaths, MetricExpiries, MetricReleases}
}

// metrics are the pool's Prometheus series, in a registry of their own.
// Labels are template, path (warm, cold), stage and state: few values each.
type metrics struct {
	reg            *prometheus.Registry
	acquire        *prometheus.HistogramVec
	restores       *prometheus.CounterVec
	restoreSeconds *prometheus.HistogramVec
	failures       *prometheus.CounterVec
	deaths         *prometheus.CounterVec
	expiries       *prometheus.CounterVec
	releases       *prometheus.CounterVec
}

func newMetrics(p *Pool) *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	m.acquire = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: MetricAcquireSeconds,
		Help: "Time to answer an acquire, from the request to the lease (warm: resume; cold: restore and resume).",
		// 100 µs to ~3.3 s, doubling: a warm resume to a slow cold restore.
		Buckets:                         prometheus.ExponentialBuckets(0.0001, 2, 16),
		NativeHistogramBucketFactor:     1.1,
		NativeHistogramMaxBucketNumber:  160,
		NativeHistogramMinResetDuration: time.Hour,
	}, []string{"template", "path"})
	m.restores = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: MetricRestores, Help: "Snapshot restores completed: for the warm pool (refills) or on demand (cold acquires).",
	}, []string{"template", "path"})
	m.restoreSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    MetricRestoreSeconds,
		Help:    "Time from the start of a VMM to its snapshot loaded (paused).",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
	}, []string{"template", "path"})
	m.failures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: MetricFailures, Help: "Failures by stage: spawn, load, resume, template.",
	}, []string{"template", "stage"})
	m.deaths = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: MetricDeaths, Help: "VMMs that exited on their own, by the state they were in (warm, leased); one that dies while it restores counts as a restore failure.",
	}, []string{"template", "state"})
	m.expiries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: MetricExpiries, Help: "Leases ended because their time ran out.",
	}, []string{"template"})
	m.releases = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: MetricReleases, Help: "Leases released by their holder.",
	}, []string{"template"})
	m.reg.MustRegister(m.acquire, m.restores, m.restoreSeconds, m.failures, m.deaths, m.expiries, m.releases, &gauges{p})
	return m
}

// gauges reads the per-template counts from the pool at scrape time, so
// that they are always consistent with each other.
type gauges struct{ p *Pool }

var (
	descWarm     = prometheus.NewDesc(MetricWarm, "VMMs restored, paused and ready to hand out.", []string{"template"}, nil)
	descLeased   = prometheus.NewDesc(MetricLeased, "VMs handed out and not yet released.", []string{"template"}, nil)
	descTarget   = prometheus.NewDesc(MetricTarget, "How many warm VMMs the pool keeps.", []string{"template"}, nil)
	descStarting = prometheus.NewDesc(MetricStarting, "VMMs being restored for the warm pool.", []string{"template"}, nil)
)

func (g *gauges) Describe(ch chan<- *prometheus.Desc) {
	ch <- descWarm
	ch <- descLeased
	ch <- descTarget
	ch <- descStarting
}

func (g *gauges) Collect(ch chan<- prometheus.Metric) {
	for _, s := range g.p.Status().Templates {
		ch <- prometheus.MustNewConstMetric(descWarm, prometheus.GaugeValue, float64(s.Warm), s.Template)
		ch <- prometheus.MustNewConstMetric(descLeased, prometheus.GaugeValue, float64(s.Leased), s.Template)
		ch <- prometheus.MustNewConstMetric(descTarget, prometheus.GaugeValue, float64(s.Target), s.Template)
		ch <- prometheus.MustNewConstMetric(descStarting, prometheus.GaugeValue, float64(s.Starting), s.Template)
	}
}
