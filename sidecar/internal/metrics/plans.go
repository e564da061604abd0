package metrics

import (
	"sort"
	"strconv"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Caps on the plan series one scrape exports, over all jobs: the series of
// jobs in job id order until the cap, and swiftmoe_metrics_series_omitted
// counting the rest. One series costs a scrape a few hundred bytes.
const (
	// MaxLayerSeries caps swiftmoe_layer_max_over_mean series.
	MaxLayerSeries = 16384
	// MaxExpertSeries caps swiftmoe_expert_replicas series (exported only
	// with Options.PerExpert).
	MaxExpertSeries = 65536
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
	layerMOM, planMOM, replicas, omitted *prometheus.Desc
	perExpert                            bool

	mu   sync.Mutex
	jobs map[string]planSnapshot
}

func newPlanCollector(perExpert bool) *planCollector {
	return &planCollector{
		layerMOM: prometheus.NewDesc("swiftmoe_layer_max_over_mean",
			"Predicted busiest-rank load over mean rank load of the plan in force, per MoE layer (1.0 is perfect balance).",
			[]string{"job", "layer"}, nil),
		planMOM: prometheus.NewDesc("swiftmoe_plan_max_over_mean",
			"Maximum over layers of the layer max_over_mean of the plan in force.",
			[]string{"job"}, nil),
		replicas: prometheus.NewDesc("swiftmoe_expert_replicas",
			"Slots holding each expert in the plan in force (serve --metrics-per-expert).",
			[]string{"job", "layer", "expert"}, nil),
		omitted: prometheus.NewDesc("swiftmoe_metrics_series_omitted",
			"Per-layer and per-expert series left out of this scrape by their caps ("+strconv.Itoa(MaxLayerSeries)+" and "+strconv.Itoa(MaxExpertSeries)+" over all jobs, in job id order).",
			[]string{"kind"}, nil),
		perExpert: perExpert,
		jobs:      map[string]planSnapshot{},
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
	ch <- c.omitted
}

// Collect implements prometheus.Collector.
func (c *planCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	ids := make([]string, 0, len(c.jobs))
	snaps := make(map[string]planSnapshot, len(c.jobs))
	for k, v := range c.jobs {
		ids = append(ids, k)
		snaps[k] = v
	}
	c.mu.Unlock()
	sort.Strings(ids)
	layerLeft, expertLeft := MaxLayerSeries, MaxExpertSeries
	var layerOmitted, expertOmitted int
	var numbers []string // "0", "1", ...: layer and expert labels
	label := func(i int) string {
		for len(numbers) <= i {
			numbers = append(numbers, strconv.Itoa(len(numbers)))
		}
		return numbers[i]
	}
	for _, job := range ids {
		s := snaps[job]
		ch <- prometheus.MustNewConstMetric(c.planMOM, prometheus.GaugeValue, s.maxOverMean, job)
		for l, v := range s.layerMaxOverMean {
			if layerLeft == 0 {
				layerOmitted += len(s.layerMaxOverMean) - l
				break
			}
			layerLeft--
			ch <- prometheus.MustNewConstMetric(c.layerMOM, prometheus.GaugeValue, v, job, label(l))
		}
		if !c.perExpert {
			continue
		}
		for l, layer := range s.replicas {
			for e, n := range layer {
				if expertLeft == 0 {
					expertOmitted += len(layer) - e
					break
				}
				expertLeft--
				ch <- prometheus.MustNewConstMetric(c.replicas, prometheus.GaugeValue, float64(n), job, label(l), label(e))
			}
		}
	}
	ch <- prometheus.MustNewConstMetric(c.omitted, prometheus.GaugeValue, float64(layerOmitted), "layer")
	ch <- prometheus.MustNewConstMetric(c.omitted, prometheus.GaugeValue, float64(expertOmitted), "expert")
}
