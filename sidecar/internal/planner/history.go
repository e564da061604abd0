package planner

import (
	"math"
	"slices"
	"strings"

	pb "github.com/swiftmoe/swiftmoe/bridge/gen/swiftmoe/v1"
)

// DefaultHistory is how many reports a job keeps per layer.
const DefaultHistory = 16

// history is one layer's recent loads: a ring of the last reports and their
// exponentially weighted moving average.
type history struct {
	ring  [][]uint64 // ring[(next-1) mod len] is the latest report
	next  int
	count int
	ewma  []float64
}

func newHistory(experts, size int) *history {
	return &history{ring: make([][]uint64, size), ewma: make([]float64, experts)}
}

// add records one iteration's loads; alpha weighs it in the EWMA. The ring
// entry it overwrites, len(ring) reports old, is reused.
func (h *history) add(tokens []uint64, alpha float64) {
	cp := h.ring[h.next]
	if cap(cp) < len(tokens) {
		cp = make([]uint64, len(tokens))
	}
	cp = cp[:len(tokens)]
	copy(cp, tokens)
	h.ring[h.next] = cp
	h.next = (h.next + 1) % len(h.ring)
	if h.count == 0 {
		for e, x := range cp {
			h.ewma[e] = float64(x)
		}
	} else {
		for e, x := range cp {
			h.ewma[e] = alpha*float64(x) + (1-alpha)*h.ewma[e]
		}
	}
	if h.count < len(h.ring) {
		h.count++
	}
}

// last returns the latest report, nil before any.
func (h *history) last() []uint64 {
	if h.count == 0 {
		return nil
	}
	return h.ring[(h.next-1+len(h.ring))%len(h.ring)]
}

// len returns how many reports are kept.
func (h *history) len() int { return h.count }

// predict returns the predicted loads of the next iteration (zeros before any
// report).
func (h *history) predict(cfg predictorConfig) []float64 {
	out := make([]float64, len(h.ewma))
	h.predictInto(out, cfg)
	return out
}

// predictInto writes predict's answer into out (len(h.ewma) entries).
func (h *history) predictInto(out []float64, cfg predictorConfig) {
	switch {
	case h.count == 0:
		clear(out)
	case cfg.kind == PredictEWMA:
		copy(out, h.ewma)
	case cfg.kind == PredictMax:
		h.windowMax(out, cfg.window)
	case cfg.kind == PredictHedge:
		h.hedge(out, cfg.window, cfg.sigmas)
	default:
		for e, x := range h.last() {
			out[e] = float64(x)
		}
	}
}

// The named per-expert series a history exports besides its reports, so
// that a resumed job predicts exactly as the uninterrupted one. A predictor
// that keeps state between reports adds its series here, with its export and
// import in seriesOf and setSeries.
const seriesEWMA = "ewma"

var historySeries = []string{seriesEWMA}

// seriesOf returns the state series name holds (nil for an unknown name).
func (h *history) seriesOf(name string) []float64 {
	if name == seriesEWMA {
		return h.ewma
	}
	return nil
}

// export is the history as the bridge carries it: the reports kept, oldest
// first, and every state series (only when there are reports).
func (h *history) export() *pb.LayerHistory {
	out := &pb.LayerHistory{Reports: make([]*pb.LayerLoads, h.count)}
	first := (h.next - h.count + len(h.ring)) % len(h.ring)
	for i := range h.count {
		out.Reports[i] = &pb.LayerLoads{Tokens: slices.Clone(h.ring[(first+i)%len(h.ring)])}
	}
	if h.count > 0 {
		for _, name := range historySeries {
			out.Series = append(out.Series, &pb.NamedSeries{Name: name, Values: slices.Clone(h.seriesOf(name))})
		}
	}
	return out
}

// restore replaces h's reports and state with lh's, which validateHistory
// checked against the layer's shape.
func (h *history) restore(lh *pb.LayerHistory) {
	clear(h.ring)
	clear(h.ewma)
	reports := lh.GetReports()
	for i, r := range reports {
		h.ring[i] = slices.Clone(r.GetTokens())
	}
	h.count = len(reports)
	h.next = len(reports) % len(h.ring)
	for _, s := range lh.GetSeries() {
		copy(h.seriesOf(s.GetName()), s.GetValues())
	}
}

// exportHistory is every layer's history.
func exportHistory(hist []*history) *pb.JobHistory {
	out := &pb.JobHistory{Layers: make([]*pb.LayerHistory, len(hist))}
	for l, h := range hist {
		out.Layers[l] = h.export()
	}
	return out
}

// validateHistory checks a history to restore against the job's experts per
// layer: one entry per layer, at most DefaultHistory reports of one count per
// expert each, and the state series the sidecar keeps, once each, with one
// finite value >= 0 per expert, present exactly when there are reports.
func validateHistory(jh *pb.JobHistory, experts []uint32, p *problems) {
	if jh == nil {
		return
	}
	layers := jh.GetLayers()
	if len(layers) != len(experts) {
		p.addf("history.layers: %d entries, want one per MoE layer (%d); send ExportJob's history of this job, or none", len(layers), len(experts))
		return
	}
	for l, lh := range layers {
		e := int(experts[l])
		reports := lh.GetReports()
		if len(reports) > DefaultHistory {
			p.addf("history.layers[%d].reports: %d reports, more than the %d the sidecar keeps; send ExportJob's history", l, len(reports), DefaultHistory)
		}
		for i, r := range reports {
			if n := len(r.GetTokens()); n != e {
				p.addf("history.layers[%d].reports[%d].tokens: %d entries, want one per expert of the layer (%d)", l, i, n, e)
			}
		}
		seen := map[string]bool{}
		for i, s := range lh.GetSeries() {
			name := s.GetName()
			switch {
			case !slices.Contains(historySeries, name):
				p.addf("history.layers[%d].series[%d].name: unknown series %q; the sidecar keeps %s", l, i, truncate(name), strings.Join(historySeries, ", "))
				continue
			case seen[name]:
				p.addf("history.layers[%d].series[%d]: series %q appears twice; send each once", l, i, name)
			case len(s.GetValues()) != e:
				p.addf("history.layers[%d].series[%d] (%s): %d values, want one per expert of the layer (%d)", l, i, name, len(s.GetValues()), e)
			}
			seen[name] = true
			for k, v := range s.GetValues() {
				if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
					p.addf("history.layers[%d].series[%d] (%s) value %d: %v; want a finite number >= 0", l, i, name, k, v)
					break
				}
			}
		}
		switch {
		case len(reports) == 0 && len(lh.GetSeries()) > 0:
			p.addf("history.layers[%d].series: state without reports; send ExportJob's history, whose series come with its reports", l)
		case len(reports) > 0 && len(seen) != len(historySeries):
			p.addf("history.layers[%d].series: has %d of the series %s; send ExportJob's history", l, len(seen), strings.Join(historySeries, ", "))
		}
	}
}

// recent returns the i-th latest report (0: the latest), i < h.count.
func (h *history) recent(i int) []uint64 {
	return h.ring[(h.next-1-i+2*len(h.ring))%len(h.ring)]
}

// windowMax writes each expert's largest load of the last window reports
// (as many as are kept) into out.
func (h *history) windowMax(out []float64, window int) {
	n := min(window, h.count)
	for e, x := range h.recent(0) {
		out[e] = float64(x)
	}
	for i := 1; i < n; i++ {
		for e, x := range h.recent(i) {
			out[e] = max(out[e], float64(x))
		}
	}
}

// hedge writes the latest loads plus sigmas standard deviations of each
// expert's load over the last window reports (as many as are kept) into out.
func (h *history) hedge(out []float64, window int, sigmas float64) {
	n := min(window, h.count)
	for e := range out {
		var sum, sq float64
		for i := range n {
			x := float64(h.recent(i)[e])
			sum += x
			sq += x * x
		}
		mean := sum / float64(n)
		v := max(0, sq/float64(n)-mean*mean)
		out[e] = float64(h.recent(0)[e]) + sigmas*math.Sqrt(v)
	}
}
