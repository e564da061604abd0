package metrics

import (
	"strconv"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// planSnapshot is what the metrics show of a job's plan in force.
type planSnapshot struct {
	layerMaxOverMean []float64
	maxOverMean      float64
	replicas         [][]uint32
}

// planCollector exposes the plan in force of every job. A report only
// swaps the job's snapshot; the per-layer and per-expert series are built
// at scrape time, so planning never pays for tens of thousands of gauges.
type planCollector struct {
	layerMOM, planMOM, replicas *prometheus.Desc

	mu   sync.Mutex
	jobs map[string]planSnapshot
}

func newPlanCollector() *planCollector {
	return &planCollector{
		layerMOM: prometheus.NewDesc("swiftmoe_layer_max_over_mean",
			"Predicted busiest-rank load over mean rank load of the plan in force, per MoE layer (1.0 is perfect balance).",
			[]string{"job", "layer"}, nil),
		planMOM: prometheus.NewDesc("swiftmoe_plan_max_over_mean",
			"Maximum over layers of the layer max_over_mean of the plan in force.",
			[]string{"job"}, nil),
		replicas: prometheus.NewDesc("swiftmoe_expert_replicas",
			"Slots holding each expert in the plan in force.",
			[]string{"job", "layer", "expert"}, nil),
		jobs: map[string]planSnapshot{},
	}
}

func (c *planCollector) set(job string, s planSnapshot) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.jobs[job] = s
}

func (c *planCollector) forget(job string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.jobs, job)
}

// Describe implements prometheus.Collector.
func (c *planCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.layerMOM
	ch <- c.planMOM
	ch <- c.replicas
}

// Collect implements prometheus.Collector.
func (c *planCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	jobs := make(map[string]planSnapshot, len(c.jobs))
	for k, v := range c.jobs {
		jobs[k] = v
	}
	c.mu.Unlock()
	experts := []string{}
	for job, s := range jobs {
		ch <- prometheus.MustNewConstMetric(c.planMOM, prometheus.GaugeValue, s.maxOverMean, job)
		for l, v := range s.layerMaxOverMean {
			ch <- prometheus.MustNewConstMetric(c.layerMOM, prometheus.GaugeValue, v, job, strconv.Itoa(l))
		}
		for l, layer := range s.replicas {
			ls := strconv.Itoa(l)
			for len(experts) < len(layer) {
				experts = append(experts, strconv.Itoa(len(experts)))
			}
			for e, n := range layer {
				ch <- prometheus.MustNewConstMetric(c.replicas, prometheus.GaugeValue, float64(n), job, ls, experts[e])
			}
		}
	}
}
