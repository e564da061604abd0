package metrics

import (
	"fmt"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
)

func scrape(t *testing.T, m *Metrics) string {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, err := io.ReadAll(rec.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(body)
}

func TestPlanSeriesFollowJobs(t *testing.T) {
	m := NewWith(Options{PerExpert: true})
	m.ObservePlan("a", []float64{1.5, 1.25}, 1.5, [][]uint32{{2, 1}, {1, 2}})
	m.ObservePlan("b", []float64{1}, 1, [][]uint32{{3}})
	m.PluginRestarted("swiftmoe", "crash")
	m.InvalidPlanRejected("swiftmoe", "invalid_slots")
	m.FallbackServed("swiftmoe", "crash")
	m.ObservePlanLatency("swiftmoe", 0.003)
	out := scrape(t, m)
	for _, want := range []string{
		`swiftmoe_layer_max_over_mean{job="a",layer="1"} 1.25`,
		`swiftmoe_plan_max_over_mean{job="a"} 1.5`,
		`swiftmoe_expert_replicas{expert="1",job="a",layer="1"} 2`,
		`swiftmoe_expert_replicas{expert="0",job="b",layer="0"} 3`,
		`swiftmoe_plugin_restarts_total{reason="crash",strategy="swiftmoe"} 1`,
		`swiftmoe_invalid_plans_rejected_total{reason="invalid_slots",strategy="swiftmoe"} 1`,
		`swiftmoe_fallbacks_served_total{reason="crash",strategy="swiftmoe"} 1`,
		`swiftmoe_plan_latency_seconds_count{strategy="swiftmoe"} 1`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	m.ForgetJob("a")
	out = scrape(t, m)
	if strings.Contains(out, `job="a"`) {
		t.Error(`series of job "a" remain after ForgetJob`)
	}
	if !strings.Contains(out, `job="b"`) {
		t.Error(`series of job "b" vanished with job "a"`)
	}
}

// countSeries counts the samples of metric name in a scrape.
func countSeries(out, name string) int {
	n := 0
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, name+"{") {
			n++
		}
	}
	return n
}

func TestPerExpertSeriesOnlyWhenAsked(t *testing.T) {
	m := New()
	m.ObservePlan("a", []float64{1.5, 1.25}, 1.5, [][]uint32{{2, 1}, {1, 2}})
	out := scrape(t, m)
	if n := countSeries(out, "swiftmoe_expert_replicas"); n != 0 {
		t.Errorf("got %d per-expert series by default, want 0", n)
	}
	for _, want := range []string{
		`swiftmoe_layer_max_over_mean{job="a",layer="0"} 1.5`,
		`swiftmoe_plan_max_over_mean{job="a"} 1.5`,
		`swiftmoe_metrics_series_omitted{kind="expert"} 0`,
		`swiftmoe_metrics_series_omitted{kind="layer"} 0`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// TestSeriesAreCapped observes more layers and experts than the caps allow:
// a scrape has exactly the capped series, the first jobs in id order, and
// says how many it left out.
func TestSeriesAreCapped(t *testing.T) {
	m := NewWith(Options{PerExpert: true})
	const jobs, layers, experts = 5, 4096, 4 // 20480 layers, 81920 experts
	for j := 0; j < jobs; j++ {
		mom := make([]float64, layers)
		reps := make([][]uint32, layers)
		for l := range reps {
			mom[l] = 1
			reps[l] = make([]uint32, experts)
		}
		m.ObservePlan(fmt.Sprintf("job-%d", j), mom, 1, reps)
	}
	out := scrape(t, m)
	for _, c := range []struct {
		name string
		want int
	}{
		{"swiftmoe_plan_max_over_mean", jobs},
		{"swiftmoe_layer_max_over_mean", MaxLayerSeries},
		{"swiftmoe_expert_replicas", MaxExpertSeries},
	} {
		if got := countSeries(out, c.name); got != c.want {
			t.Errorf("%s: got %d series, want %d", c.name, got, c.want)
		}
	}
	for _, want := range []string{
		fmt.Sprintf(`swiftmoe_metrics_series_omitted{kind="layer"} %d`, jobs*layers-MaxLayerSeries),
		fmt.Sprintf(`swiftmoe_metrics_series_omitted{kind="expert"} %d`, jobs*layers*experts-MaxExpertSeries),
		`swiftmoe_layer_max_over_mean{job="job-3",layer="4095"} 1`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if strings.Contains(out, `swiftmoe_layer_max_over_mean{job="job-4"`) {
		t.Error("job-4, last in id order, has layer series beyond the cap")
	}
}

func TestNilMetricsRecordNothing(t *testing.T) {
	var m *Metrics
	m.ObservePlan("a", []float64{1}, 1, [][]uint32{{1}})
	m.ForgetJob("a")
	m.PluginRestarted("s", "crash")
	m.InvalidPlanRejected("s", "r")
	m.FallbackServed("s", "r")
	m.ObservePlanLatency("s", 1)
}
