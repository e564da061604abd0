package planner

import "math"

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
