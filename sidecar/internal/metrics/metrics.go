// Package metrics holds the sidecar's Prometheus metrics on a registry of its
// own. Every method is safe on a nil *Metrics, which records nothing, so the
// offline CLI can run the same code without a registry.
package metrics

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics is the sidecar's metric set.
type Metrics struct {
	reg            *prometheus.Registry
	plans          *planCollector
	planLatency    *prometheus.HistogramVec
	pluginRestarts *prometheus.CounterVec
	invalidPlans   *prometheus.CounterVec
	fallbacks      *prometheus.CounterVec
	pluginRefused  *prometheus.CounterVec
}

// Options configure the metric set.
type Options struct {
	// PerExpert exports swiftmoe_expert_replicas{job,layer,expert}, at most
	// MaxExpertSeries series; without it the plan series are per job and
	// per layer only.
	PerExpert bool
}

// New registers the sidecar's metrics, plus the Go runtime and process
// collectors, on a fresh registry, with the default Options.
func New() *Metrics { return NewWith(Options{}) }

// NewWith is New with options.
func NewWith(o Options) *Metrics {
	m := &Metrics{
		reg:   prometheus.NewRegistry(),
		plans: newPlanCollector(o.PerExpert),
		planLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "swiftmoe_plan_latency_seconds",
			Help:    "Time to produce the plan answered to ReportLoads, including the strategy call.",
			Buckets: []float64{0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1},
		}, []string{"strategy"}),
		pluginRestarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "swiftmoe_plugin_restarts_total",
			Help: "Strategy plugin processes killed and restarted, by reason.",
		}, []string{"strategy", "reason"}),
		invalidPlans: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "swiftmoe_invalid_plans_rejected_total",
			Help: "Plans returned by a strategy plugin that failed validation, by reason.",
		}, []string{"strategy", "reason"}),
		fallbacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "swiftmoe_fallbacks_served_total",
			Help: "Plans served from the last valid or the static plan because the strategy failed, by reason.",
		}, []string{"strategy", "reason"}),
		pluginRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "swiftmoe_plugin_refused_total",
			Help: "Strategy plugin binaries refused because their SHA-256 is not the one trusted (checksum: differs from SHA256SUMS or the pinned digest; not_listed: missing from SHA256SUMS; pin_conflict: a job first saw another digest than the one this sidecar pinned).",
		}, []string{"strategy", "reason"}),
	}
	m.reg.MustRegister(m.plans, m.planLatency,
		m.pluginRestarts, m.invalidPlans, m.fallbacks, m.pluginRefused,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Registry returns the registry the metrics live on.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the registry in the Prometheus exposition format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// ObservePlan records the per-layer balance and replica counts of the plan
// now in force for job. replicas[l][e] is the slot count of expert e. The
// slices are kept, not copied, until the next ObservePlan for job: callers
// must not modify them.
func (m *Metrics) ObservePlan(job string, layerMaxOverMean []float64, planMaxOverMean float64, replicas [][]uint32) {
	if m == nil {
		return
	}
	m.plans.set(job, planSnapshot{layerMaxOverMean: layerMaxOverMean, maxOverMean: planMaxOverMean, replicas: replicas})
}

// ForgetJob deletes every series labelled with job (on re-registration).
func (m *Metrics) ForgetJob(job string) {
	if m == nil {
		return
	}
	m.plans.forget(job)
}

// ObservePlanLatency records the time one ReportLoads took to plan.
func (m *Metrics) ObservePlanLatency(strategy string, seconds float64) {
	if m == nil {
		return
	}
	m.planLatency.WithLabelValues(strategy).Observe(seconds)
}

// PluginRestarted counts a plugin process killed for reason.
func (m *Metrics) PluginRestarted(strategy, reason string) {
	if m == nil {
		return
	}
	m.pluginRestarts.WithLabelValues(strategy, reason).Inc()
}

// InvalidPlanRejected counts a strategy plan that failed validation.
func (m *Metrics) InvalidPlanRejected(strategy, reason string) {
	if m == nil {
		return
	}
	m.invalidPlans.WithLabelValues(strategy, reason).Inc()
}

// FallbackServed counts a plan served instead of a failed strategy's.
func (m *Metrics) FallbackServed(strategy, reason string) {
	if m == nil {
		return
	}
	m.fallbacks.WithLabelValues(strategy, reason).Inc()
}

// PluginRefused counts a plugin binary refused for reason ("checksum",
// "not_listed" or "pin_conflict").
func (m *Metrics) PluginRefused(strategy, reason string) {
	if m == nil {
		return
	}
	m.pluginRefused.WithLabelValues(strategy, reason).Inc()
}
