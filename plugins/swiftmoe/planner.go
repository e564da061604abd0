package swiftmoe

import (
	"errors"
	"math"

	"github.com/swiftmoe/swiftmoe/plugins/sdk"
)

// errNoRepair means packing found no legal swap to finish a placement. The
// counting argument in repairRank rules it out for valid counts; it is an
// error rather than a panic so that a bug costs one plan, not the plugin.
var errNoRepair = errors.New("no legal swap completes the placement")

// planner plans one layer. It runs the phases in order, each a small type
// that owns its scratch and takes what it needs as arguments:
//
//   - counts (counter, replicas.go): replica counts from the predicted loads;
//   - weights (weights.go): from the counts, each expert's load per replica,
//     the most replicas a rank may hold, and the packing order;
//   - flat packing (rankPacker, pack.go and rankqueue.go): replicas onto a
//     range of ranks by LPT;
//   - node packing (nodePacker, nodes.go and spread.go): replicas onto
//     nodes first, by the node policy, which gives each node its demand
//     (nodeDemand: the replicas of each expert it must hold); a node's
//     ranks then take their demand by balanced differencing (differencer,
//     differencing.go) or flat packing (noderanks.go);
//   - refinement (refiner, refine.go): swaps between the busiest and the
//     lightest ranks of a range.
//
// Around them: the count search of small layers (countSearch, search.go),
// the replicated layout (replicate.go), and the slot order and the choice
// to keep the current plan (layout.go). The placement being built and each
// rank's load are the packing phases' shared state (ranks, ranks.go).
//
// A planner is reused across layers and calls (through a sync.Pool), so its
// slices grow once and planning a layer allocates nothing.
type planner struct {
	// The layer being planned.
	nExperts int
	opts     options
	loads    []float64 // per expert; nil means all zero
	cur      []int     // placement in force; nil when none
	reps     []int32   // replica count per expert
	curReps  []int32   // replica count per expert in cur
	curW     []float64 // load per replica in cur
	tally    []int32   // spreadOverNodes' scratch
	light    []float64 // packBound's scratch
	// planHi is the busiest rank of planLayer's plan as the packers kept
	// it (summed in another order than the slots'), or -1 where the plan
	// is not the packing's (the search, the replicated layout or the
	// plan in force replaced it).
	planHi float64

	counts counter
	wt     weights
	rk     ranks // the plan being built, rk.dst
	flat   rankPacker
	nodes  nodePacker
	diff   differencer
	refine refiner
	search countSearch
	saved  savedPlan

	// Planning for step time (costplan.go).
	step      stepModel
	stepPlans stepScratch
	hybrid    hybridScratch
	// Weighing the replicated layout over a window of loads (window.go):
	// the loads as floats, and one step model per load vector.
	winBuf    []float64
	winVecs   [][]float64
	winModels []stepModel
}

// grow returns s resized to n, reusing its array when it is large enough.
func grow[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n)
	}
	return s[:n]
}

// loadOf is expert e's load, with no prediction (empty loads) meaning zero.
func loadOf(loads []float64, e int) float64 {
	if len(loads) == 0 {
		return 0
	}
	return loads[e]
}

// planLayer writes one layer's plan into dst (len WorldSize*SlotsPerRank).
// loads is empty or one value >= 0 per expert; cur is empty or a placement
// with ids in range. Inputs are validated by the caller.
func (p *planner) planLayer(dst []int, loads []float64, cur []int, numExperts int, t sdk.Topology, o options) error {
	p.begin(dst, loads, cur, numExperts, t, o)
	if err := p.pack(t); err != nil {
		return err
	}
	// The packers keep each rank's load (summed in another order than the
	// slots'); the search and the replicated layout replace the plan
	// without them.
	loadsKept := true
	if !o.noSearch && p.searchable() {
		p.search.run(p, t)
		loadsKept = false
	}
	if r := p.replicable(t); r > 0 {
		if err := p.tryReplicated(t, r); err != nil {
			return err
		}
		loadsKept = false
	}
	orderSlots(p.rk.dst, p.cur, p.rk.n, p.rk.s)
	above := math.Inf(1)
	p.planHi = -1
	if loadsKept {
		p.planHi = p.rk.maxLoad(0, p.rk.n)
		above = p.planHi * (1 + 1e-9)
	}
	if p.keepCurrentIfAsGood(t, above) {
		p.planHi = -1
	}
	return nil
}

// begin sets p up to plan one layer into dst (see planLayer): the inputs,
// the current plan's counts, and the replica counts.
func (p *planner) begin(dst []int, loads []float64, cur []int, numExperts int, t sdk.Topology, o options) {
	p.nExperts = numExperts
	p.opts = o
	p.loads, p.cur = loads, nil
	if len(cur) == len(dst) {
		p.cur = cur
	}
	p.rk.reset(dst, t.WorldSize, t.SlotsPerRank)
	p.reps = grow(p.reps, numExperts)
	p.curReps = grow(p.curReps, numExperts)
	p.curW = grow(p.curW, numExperts)
	p.indexCurrent()
	p.count()
}

// errAbove means packBelow stopped: the counts cannot pack below its bound.
var errAbove = errors.New("the counts cannot pack below the bound")

// nodesBound is a lower bound on the busiest rank of any packing of the
// node layout lay, whose nodes' slots are all filled: the busiest node's
// mean, and in each node its heaviest replica with its S-1 lightest.
func (p *planner) nodesBound(lay *nodeLayout) float64 {
	s := p.rk.s
	var lb float64
	for n := range lay.nodes {
		lb = max(lb, lay.load[n]/float64(lay.r))
		d := lay.demand(n)
		if len(d.experts) == 0 {
			continue
		}
		v := p.wt.w[d.experts[0]]
		// The S-1 lightest, from the node's list's end (experts in
		// packing order, lightest last).
		need := int32(s - 1)
		for i := len(d.experts) - 1; i >= 0 && need > 0; i-- {
			x := d.experts[i]
			r := d.replicas(x)
			if i == 0 {
				r-- // the heaviest is counted
			}
			c := min(need, r)
			v += float64(c) * p.wt.w[x]
			need -= c
		}
		lb = max(lb, v)
	}
	return lb
}

// packBound is a lower bound on the busiest rank of any packing of the
// current counts (weighed, p.wt) onto the ranks, from the counts alone:
// for each k < s, some rank holds k+1 of the k*n+1 heaviest replicas, at
// least the k+1 lightest of them, and s-k-1 more replicas, at least the
// s-k-1 lightest of all. (Those positions do not overlap: (n-1)(s-k) >= 0
// replicas lie between them.) Its sums are in another order than a rank's
// load, so a caller allows for rounding. It needs no node layout, so it
// stops counts before they are spread (about a quarter of the count
// search's on small layers with nodes) and, on one node, before any
// packing.
func (p *planner) packBound() float64 {
	order, w, reps := p.wt.order, p.wt.w, p.reps
	n, s := p.rk.n, p.rk.s
	// The s-1 lightest replicas, summed from the lightest: light[j] is
	// the sum of the j lightest.
	light := grow(p.light, s)[:1]
	light[0] = 0
	for i := len(order) - 1; i >= 0 && len(light) < s; i-- {
		x := order[i]
		for c := reps[x]; c > 0 && len(light) < s; c-- {
			light = append(light, light[len(light)-1]+w[x])
		}
	}
	p.light = light
	if len(light) < s {
		return 0 // fewer replicas than a rank's slots
	}
	var lb float64
	// A cursor over the replicas heaviest first: expert order[i], whose
	// replicas take positions [at, at+reps).
	i, at := 0, 0
	for k := range s {
		first, last := k*n-k, k*n // the k+1 positions to sum
		if first < at {
			i, at = 0, 0 // fewer ranks than slots: the ranges overlap
		}
		var top float64
		for pos := first; pos <= last; pos++ {
			for i < len(order) && at+int(reps[order[i]]) <= pos {
				at += int(reps[order[i]])
				i++
			}
			if i == len(order) {
				return lb
			}
			top += w[order[i]]
		}
		lb = max(lb, top+light[s-k-1])
	}
	return lb
}

// indexCurrent counts the replicas of each expert in cur.
func (p *planner) indexCurrent() {
	reps := p.curReps // a local: through p, every increment reloads it
	clear(reps)
	for _, e := range p.cur {
		reps[e]++
	}
}

// count sets reps for the slots of the ranks being planned (see counter).
func (p *planner) count() {
	var curReps []int32
	if p.cur != nil {
		curReps = p.curReps
	}
	p.counts.count(p.reps, p.loads, len(p.rk.dst), curReps)
}

// weigh sets the weights of the current counts (see weights).
func (p *planner) weigh() {
	p.wt.set(p.reps, p.loads, p.rk.n, len(p.rk.dst))
}

// pack packs the current counts: weights, then node-aware (by the node
// policy) or flat packing with local refinement.
func (p *planner) pack(t sdk.Topology) error { return p.packBelow(t, math.Inf(1)) }

// packBelow is pack, but it stops with errAbove, before packing any rank,
// where the counts bound the plan's busiest rank above hi (packBound,
// before any layout) or their node layout does: a rank holds at least its
// node's mean load, and the rank with a node's heaviest replica holds at
// least that and the node's S-1 lightest (every slot is filled), so the
// plan cannot score below hi; and, with nodes, once a node's packed ranks
// are above hi (packNodeRanks).
func (p *planner) packBelow(t sdk.Topology, hi float64) error {
	p.weigh()
	return p.packWeighed(t, hi)
}

// packWeighed is packBelow for counts already weighed (p.wt).
func (p *planner) packWeighed(t sdk.Topology, hi float64) error {
	if !math.IsInf(hi, 1) && p.packBound() > hi*(1+1e-9)*(1+1e-12) {
		return errAbove
	}
	p.rk.empty()
	if r := hierarchical(t); r > 0 {
		var err error
		if p.opts.nodes == nodesPack {
			err = p.nodes.pack(p.reps, p.loads, &p.wt, r, p.rk.n/r, p.rk.s)
		} else {
			err = p.nodes.spread(p.reps, &p.wt, r, p.rk.n/r, p.rk.s)
		}
		if err != nil {
			return err
		}
		if !math.IsInf(hi, 1) && p.nodesBound(&p.nodes.lay) > hi*(1+1e-9) {
			return errAbove
		}
		return p.packNodeRanks(&p.nodes.lay, hi, nil)
	}
	if err := p.flat.pack(&p.rk, &p.wt, p.reps, 0, p.rk.n); err != nil {
		return err
	}
	p.refine.refine(&p.rk, &p.wt, 0, p.rk.n, 0)
	return nil
}
