package swiftmoe

import (
	"errors"
	"math"
	"slices"

	"github.com/swiftmoe/swiftmoe/plugins/sdk"
)

// Planning for step time. With the cost model's inputs (a compute figure,
// token bytes and the bandwidth between nodes) and more than one node, a
// layer's plan is the candidate with the lowest estimated step time (see
// stepModel): the compute-balanced plan planLayer makes, hybrid layouts
// (hybrid.go) over a search of h, and the placement in force, which stays
// when no candidate is faster.

// stepCandidates bounds the hybrid layouts tried per layer, and
// stepBudget bounds their slots: a layer of K slots tries at most
// stepBudget/K of them (at least one), so that large layers stay within
// the planning time budget.
const (
	stepCandidates = 12
	stepBudget     = 2048
)

// homedNodes is the most nodes on which 2-homed hybrid layouts are tried.
const homedNodes = 8

// layerCost is what planning for step time needs of a layer beyond
// planLayer's inputs.
type layerCost struct {
	cm costModel
	// recent is the layer's input, whose LastLoad and Earlier reports the
	// replicated layout is weighed over (load_window = windowLen), and
	// window and weight those loads once read (window.go).
	recent    *sdk.LayerInput
	windowLen int
	window    [][]float64
	weight    float64
}

// stepScratch holds the best plan found while candidates are tried.
type stepScratch struct {
	best, cand []int
	dealt      []int // a candidate's intake-dealt node layouts (intake.go)
	intake     intakeScratch
	tried      []int32 // h values tried
	reps, seen []int32 // valid's scratch
	cut        int     // candidates whose packing stopped (errOutbound), for tests
}

// valid reports whether dst is a valid plan of e experts on n ranks of s
// slots (sdk.ValidateSlots' rules: every expert held, no rank holding more
// than ceil(replicas/n) of one), without allocating.
func (ss *stepScratch) valid(dst []int, e, n, s int) bool {
	ss.reps = grow(ss.reps, e)
	ss.seen = grow(ss.seen, e)
	clear(ss.reps)
	clear(ss.seen)
	for _, x := range dst {
		ss.reps[x]++
	}
	for _, r := range ss.reps {
		if r == 0 {
			return false
		}
	}
	for r := range n {
		row := dst[r*s : (r+1)*s]
		for _, x := range row {
			ss.seen[x]++
			if ss.seen[x] > (ss.reps[x]+int32(n)-1)/int32(n) {
				return false
			}
		}
		for _, x := range row {
			ss.seen[x] = 0
		}
	}
	return true
}

// planLayerStep writes the layer's plan for step time into dst. t must be
// hierarchical (see hierarchical) and lc.cm usable.
func (p *planner) planLayerStep(dst []int, loads []float64, cur []int, numExperts int, t sdk.Topology, o options, lc *layerCost) error {
	g := hierarchical(t)
	n, s := t.WorldSize, t.SlotsPerRank
	sm := &p.step
	sm.reset(lc.cm, loads, numExperts, n, g, s)
	ss := &p.stepPlans
	ss.best = grow(ss.best, len(dst))

	// score is a candidate's estimate; on up to intake_deal_nodes nodes
	// (8 by default), where the experts do not all fit in one node's
	// slots, its intake-dealt form (intake.go) replaces it in dst when that
	// is lower. (Where they fit, the load window weighs the replicated
	// layout, and dealt plans chosen on the prediction measured worse when
	// the hot set moved: E=32 top-2 on 4 nodes at 50 GB/s, p95 over the
	// bound 1.14 -> 1.22 moving, 1.13 -> 1.32 bursting.)
	m := n / g
	hmax := hybridMax(numExperts, m, g*s)
	deal := m <= o.dealNodes && hmax < numExperts
	ss.dealt = grow(ss.dealt, len(dst))
	dealt := false // score took the intake-dealt form
	// score's plan is evaluated already where its nodes were evaluated as
	// they were packed (evalCounts), which is only where it is not dealt.
	evaluated := false
	score := func() float64 {
		var ms float64
		if evaluated {
			ms, _, _ = sm.finish(dst)
		} else {
			ms = sm.score(dst)
		}
		dealt = false
		if deal && sm.intakeDeal(dst, ss.dealt, &ss.intake) {
			if md := sm.score(ss.dealt); md < ms {
				copy(dst, ss.dealt)
				dealt = true
				return md
			}
		}
		return ms
	}

	// The compute-balanced plan. Where the experts do not all fit in one
	// node's slots and candidates are not dealt (more nodes than
	// intake_deal_nodes), its estimate waits (lazy): most candidates'
	// bounds are above an upper bound on it (stepModel.upper), which then
	// rules them out as the estimate would have. Only a bound below that
	// upper bound settles the estimate, and every decision is then taken
	// against the estimate, as it is when nothing waits: the plans are the
	// same. (On the planner benchmark's 32 nodes this spares every layer
	// its estimate.)
	if err := p.planLayer(dst, loads, cur, numExperts, t, o); err != nil {
		return err
	}
	lazy := !o.eagerEstimate && !deal && hmax < numExperts
	var bestMs float64
	if lazy && p.planHi >= 0 {
		bestMs = sm.upperOf(p.planHi)
	} else if lazy {
		bestMs = sm.upper(dst)
	} else {
		bestMs = score()
	}
	copy(ss.best, dst)
	ordered := !dealt // planLayer ordered its slots (orderSlots)
	// settle replaces the upper bound with the estimate; rules reports
	// whether a bound lb rules its candidate out, settling when the upper
	// bound cannot tell.
	settle := func() {
		if lazy {
			bestMs, lazy = sm.score(ss.best), false
		}
	}
	rules := func(lb float64) bool {
		if beats(lb, bestMs) && lazy {
			settle()
		}
		return !beats(lb, bestMs)
	}
	wins := 0 // candidates that beat the best so far

	// Hybrid layouts: h from hybridMax down, coarse then around the best;
	// then, with more than two nodes and experts that do not all fit in
	// one node, the same search over layouts whose other experts are
	// 2-homed (hybrid.go), within a budget of their own.
	// (planLayer's weights order and counts are a close hint.)
	p.hybrid.rankExpertsNear(loads, numExperts, p.wt.order, p.reps)
	ss.tried = ss.tried[:0]
	try := func(h, k int) error {
		key := int32(h<<2 | k)
		if slices.Contains(ss.tried, key) {
			return nil
		}
		ss.tried = append(ss.tried, key)
		// A layout that does not exist, or that packing cannot complete,
		// is no candidate; nor is one whose bound shows it cannot be
		// faster, which is dropped before its ranks are packed.
		// Single-homed layouts are first bounded before their experts
		// are homed, which is most of their counting, then again once
		// homed, before their counts (neither bound settles a waiting
		// estimate: both are compared with the best as it stands).
		// While the estimate waits, a shape bound below the upper bound
		// lets the counting go ahead, and is weighed again once the
		// estimate is settled.
		shape := math.Inf(-1)
		if k == 1 {
			if shape = p.boundHybridShape(h, g, sm); !beats(shape, bestMs) {
				return nil
			}
		}
		err := p.hybridHomes(h, k, g)
		evaluated = false
		if err == nil {
			// (No bound once homed for k > 1: boundHybridHomed gives 0.)
			if !beats(p.boundHybridHomed(h), bestMs) {
				return nil
			}
			p.hybridCountsHomed(h, g)
			if rules(p.boundHybrid(h, sm)) || rules(shape) {
				return nil
			}
			// Where candidates are not dealt, each node is evaluated once
			// its ranks are packed, and the nodes evaluated so far bound
			// the estimate (the count bound's compute, and the larger of
			// its all-to-all and those nodes' across nodes): once that is
			// above the best, packing stops and the layout is out. The
			// evaluation is the estimate's, so a layout packed in full is
			// not evaluated again.
			var done func(int) bool
			if !deal && !o.packWhole {
				sm.evalCounts(p.reps)
				cross := p.hybrid.boundA2A
				done = func(nd int) bool {
					sm.evalNode(dst, nd)
					cross = max(cross, sm.crossMs(nd))
					return beats(p.hybrid.boundCompute+cross, bestMs)
				}
				evaluated = true
			}
			err = p.packHybrid(h, g, done)
		} else if !errors.Is(err, errNoLayout) && !errors.Is(err, errNoRepair) && rules(shape) {
			return nil // an error where the shape bound rules the layout out first
		}
		if errors.Is(err, errOutbound) {
			ss.cut++
			return nil
		}
		if errors.Is(err, errNoLayout) || errors.Is(err, errNoRepair) {
			return nil
		} else if err != nil {
			return err
		}
		if !ss.valid(dst, numExperts, n, s) {
			return nil
		}
		if ms := score(); ms < bestMs {
			bestMs, ordered = ms, false
			copy(ss.best, dst)
			wins++
		}
		return nil
	}
	budget := min(stepCandidates, max(1, stepBudget/len(dst)))
	search := func(hmax, k, budget int) error {
		bestH := hmax
		for _, f := range []int{4, 2, 3, 1, 0} {
			if len(ss.tried) >= budget {
				break
			}
			h := hmax * f / 4
			before := wins
			if err := try(h, k); err != nil {
				return err
			}
			if wins > before {
				bestH = h
			}
		}
		for step := hmax / 8; step >= 1 && len(ss.tried) < budget; step /= 2 {
			for _, h := range []int{bestH - step, bestH + step} {
				if h < 0 || h > hmax || len(ss.tried) >= budget {
					continue
				}
				before := wins
				if err := try(h, k); err != nil {
					return err
				}
				if wins > before {
					bestH = h
				}
			}
		}
		return nil
	}
	if err := search(hmax, 1, budget); err != nil {
		return err
	}
	// Only where the replicated layout does not fit: where it does, the
	// load window weighs it against the chosen plan (window.go), and a
	// 2-homed plan chosen on the prediction alone measured worse there when
	// the hot set moved (E=32 top-2 on 4 nodes at 50 GB/s: p95 over the
	// bound 1.21 -> 1.41 moving, 1.20 -> 1.35 bursting). And only on up to
	// homedNodes nodes: a second home keeps 1/M of an expert's tokens in
	// their node, which on many nodes is too little to pay for equal counts
	// per node of the global experts; on the planner benchmark's 32 nodes
	// no 2-homed layout won a layer and they cost 48% more instructions.
	if hmax2 := hybridMaxHomes(numExperts, m, g*s, 2); hmax2 >= 0 && hmax < numExperts && m <= homedNodes {
		// two_home_margin: a 2-homed layout within the margin above the
		// best wins (its bound is held to the raised mark too); when none
		// does, the best's own estimate stands.
		settle() // the margin is taken on the estimate
		plain, mark := bestMs, bestMs*(1+o.twoHome)
		bestMs = mark
		if err := search(hmax2, 2, len(ss.tried)+budget); err != nil {
			return err
		}
		if bestMs == mark {
			bestMs = plain
		}
	}
	copy(dst, ss.best)
	// planLayer indexed the current plan (p.cur, p.curReps) for this layer.
	// Its bound (any plan with ids in range has one) comes before the
	// check of its rank limits, which is needed only when it may win or
	// the best plan's slots are to be ordered after it; and the bound from
	// its counts alone comes first, which is lower, so that where it rules
	// the plan out the full bound would too, without settling.
	if p.cur != nil {
		keep := false
		if o.keep > 0 {
			// keep_margin: the current plan stays unless the best beats
			// it by more than the margin, taken on the estimate (settled).
			settle()
			bar := bestMs * (1 + o.keep)
			keep = beats(sm.boundCounts(p.curReps), bar) && beats(sm.boundPlan(p.cur), bar) &&
				p.currentValid() && sm.score(p.cur) <= bar
		} else {
			out := !beats(sm.boundCounts(p.curReps), bestMs) || rules(sm.boundPlan(p.cur))
			keep = !out && p.currentValid() && sm.score(p.cur) <= bestMs
		}
		if keep {
			copy(dst, p.cur)
		} else if !ordered && p.currentValid() {
			orderSlots(dst, p.cur, n, s)
		}
	}
	if hmax == numExperts && lc.recent != nil {
		if lc.window, lc.weight = p.windowLoads(lc.recent, lc.windowLen); len(lc.window) > 0 {
			return p.hedgeReplicated(dst, lc, g)
		}
	}
	return nil
}
