package metrics

import (
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
	m := New()
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

func TestNilMetricsRecordNothing(t *testing.T) {
	var m *Metrics
	m.ObservePlan("a", []float64{1}, 1, [][]uint32{{1}})
	m.ForgetJob("a")
	m.PluginRestarted("s", "crash")
	m.InvalidPlanRejected("s", "r")
	m.FallbackServed("s", "r")
	m.ObservePlanLatency("s", 1)
}
