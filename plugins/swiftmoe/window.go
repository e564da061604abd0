package swiftmoe

import (
	"errors"
	"math"
	"slices"

	"github.com/swiftmoe/swiftmoe/plugins/sdk"
)

// Weighing the replicated layout over a window of loads. Planning for step
// time chooses its plan on the predicted loads; where crossing nodes is
// cheap (50 GB/s) that plan trades locality for compute balance, leaving
// cold experts in one node. When the hot set moves, a newly hot expert in
// one node sends every other node's tokens for it across, and the step after
// the move costs several times the plan's estimate. With load_window = W >=
// 2 and the reports the sidecar sends (LayerInput.LastLoad and Earlier), a
// layer whose experts all fit in one node's slots also weighs the replicated
// layout (every expert in every node, hybrid.go's h = E): it replaces the
// chosen plan when its mean estimate over the prediction and the last W
// reports is lower. A moving hot set makes the chosen plan expensive on the
// older reports and the replicated layout wins; a fixed one leaves the
// chosen plan ahead, and the choice is the prediction's.
//
// Only that one alternative is weighed over the window. Scoring every
// candidate (and the plan in force) by its window mean was measured in the
// simulator and lost: among plans made for one hot set each, the mean
// favours a plan for an older hot set as often as the fresh one, and where
// no layout holds every expert in every node (E=64 with 6 slots per GPU on
// nodes of 8) none hedges against the move, and the mean only added noise
// to the choice (plugins/swiftmoe/README.md has the figures).

// windowLoads returns the loads the replicated layout is weighed over
// beside the prediction (the last w reports, latest first, in the planner's
// scratch; the latest is left out when it equals the prediction, as with
// the default predictor, so that it is not estimated twice) and the
// prediction's weight: as much as those reports together. Weighing every
// vector alike (the prediction 1 or 2 of 8) chose the replicated layout too
// often on the recorded E=32 trace, whose hot set drifts rather than jumps:
// its mean step over the bound rose 1.3-3.2% against no window, and 0.8-2.5%
// with the prediction weighed as half, while the synthetic moving and burst
// rows kept their gains (plugins/swiftmoe/README.md has the figures). No
// window (nil, 1) when w < 2 or the request carries no earlier report.
func (p *planner) windowLoads(l *sdk.LayerInput, w int) ([][]float64, float64) {
	if w < 2 || len(l.Earlier) == 0 || len(l.LastLoad) == 0 {
		return nil, 1
	}
	reports := min(w, 1+len(l.Earlier))
	e := l.NumExperts
	p.winBuf = grow(p.winBuf, reports*e)
	p.winVecs = p.winVecs[:0]
	for i := range reports {
		src := l.LastLoad
		if i > 0 {
			src = l.Earlier[i-1]
		}
		v := p.winBuf[i*e : (i+1)*e : (i+1)*e]
		for x, t := range src {
			v[x] = float64(t)
		}
		if i == 0 && slices.Equal(v, l.Predicted) {
			continue // the prediction is the latest report: estimated once
		}
		p.winVecs = append(p.winVecs, v)
	}
	if len(p.winVecs) == 0 {
		return nil, 1
	}
	return p.winVecs, float64(len(p.winVecs))
}

// resetWindow prepares one step model per load vector of lc's window.
func (p *planner) resetWindow(lc *layerCost, e, n, g, s int) {
	if len(p.winModels) < len(lc.window) {
		p.winModels = append(p.winModels, make([]stepModel, len(lc.window)-len(p.winModels))...)
	}
	for i, v := range lc.window {
		p.winModels[i].reset(lc.cm, v, e, n, g, s)
	}
}

// windowTotal is the summed weight of the window's loads.
func (lc *layerCost) windowTotal() float64 { return lc.weight + float64(len(lc.window)) }

// windowMean is the mean estimate of dst over the prediction (p.step) and
// lc's window. Once the estimates summed so far put the mean above limit
// (times 1+1e-9) it stops and returns a value above limit.
func (p *planner) windowMean(dst []int, lc *layerCost, limit float64) float64 {
	total := lc.windowTotal()
	stop := limit * total * (1 + 1e-9)
	sum := lc.weight * p.step.score(dst)
	for i := range lc.window {
		if sum > stop {
			break
		}
		sum += p.winModels[i].score(dst)
	}
	return sum / total
}

// windowBoundHybrid is a lower bound on windowMean of the hybrid layout h
// whose counts hybridCounts set: the mean of its bounds, each at most the
// estimate it bounds.
func (p *planner) windowBoundHybrid(h int, lc *layerCost) float64 {
	sum := lc.weight * p.boundHybrid(h, &p.step)
	for i := range lc.window {
		sum += p.boundHybrid(h, &p.winModels[i])
	}
	return sum / lc.windowTotal()
}

// hedgeReplicated replaces the chosen plan in dst with the replicated
// layout (hybrid h = E, every expert in every node of g ranks) when that
// has the lower mean estimate over lc's window; the replicated layout is
// dropped by its bound before its ranks are packed when it cannot win.
func (p *planner) hedgeReplicated(dst []int, lc *layerCost, g int) error {
	n, s := p.rk.n, p.rk.s
	ss := &p.stepPlans
	p.resetWindow(lc, p.nExperts, n, g, s)
	ss.cand = grow(ss.cand, len(dst))
	copy(ss.cand, dst)
	chosen := p.windowMean(ss.cand, lc, math.Inf(1))
	// keep_margin: where the plan so far is the current one, the replicated
	// layout must beat it by more than the margin.
	if p.opts.keep > 0 && p.cur != nil && slices.Equal(ss.cand, p.cur) {
		chosen /= 1 + p.opts.keep
	}
	h := p.nExperts
	err := p.hybridCounts(h, g)
	if err == nil {
		if !beats(p.windowBoundHybrid(h, lc), chosen) {
			return nil
		}
		err = p.packHybrid(h, g, nil)
	}
	switch {
	case errors.Is(err, errNoLayout) || errors.Is(err, errNoRepair):
		copy(dst, ss.cand)
		return nil
	case err != nil:
		return err
	}
	if !ss.valid(dst, p.nExperts, n, s) || p.windowMean(dst, lc, chosen) >= chosen {
		copy(dst, ss.cand)
		return nil
	}
	if p.currentValid() {
		orderSlots(dst, p.cur, n, s)
	}
	return nil
}
