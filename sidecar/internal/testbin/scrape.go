package testbin

import (
	"context"
	"fmt"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// ScrapeHistogram returns the sample sum and count of histogram name over
// the series whose labels include labels.
func ScrapeHistogram(ctx context.Context, url, name string, labels map[string]string) (sum float64, count uint64, err error) {
	fams, err := scrape(ctx, url)
	if err != nil {
		return 0, 0, err
	}
	for _, m := range fams[name].GetMetric() {
		if HasLabels(m, labels) {
			sum += m.GetHistogram().GetSampleSum()
			count += m.GetHistogram().GetSampleCount()
		}
	}
	return sum, count, nil
}

// Scrape fetches url (a Prometheus /metrics endpoint) and returns the sum of
// the counter or gauge values of metric name over the series whose labels
// include labels.
func Scrape(ctx context.Context, url, name string, labels map[string]string) (float64, error) {
	fams, err := scrape(ctx, url)
	if err != nil {
		return 0, err
	}
	var sum float64
	for _, m := range fams[name].GetMetric() {
		if HasLabels(m, labels) {
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum, nil
}

// Gathered is Scrape on a registry in the test's own process.
func Gathered(g prometheus.Gatherer, name string, labels map[string]string) (float64, error) {
	fams, err := g.Gather()
	if err != nil {
		return 0, err
	}
	var sum float64
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if HasLabels(m, labels) {
				sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
	}
	return sum, nil
}

// HasLabels reports whether metric m carries every label of labels.
func HasLabels(m *dto.Metric, labels map[string]string) bool {
	got := map[string]string{}
	for _, l := range m.GetLabel() {
		got[l.GetName()] = l.GetValue()
	}
	for k, v := range labels {
		if got[k] != v {
			return false
		}
	}
	return true
}

func scrape(ctx context.Context, url string) (map[string]*dto.MetricFamily, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scraping %s: %w", url, err)
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scraping %s: %s", url, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("parsing %s: %w", url, err)
	}
	return fams, nil
}
