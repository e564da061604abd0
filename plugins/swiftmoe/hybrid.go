package swiftmoe

import (
	"errors"
	"slices"
)

// Hybrid layouts: when tokens crossing nodes cost more than they save in
// compute balance, an expert's replicas belong in the nodes that route
// tokens to it. A hybrid layout of h gives the h most loaded experts
// (global) the same number of replicas in every node, and each other
// expert (single-homed) its replicas in one node. With tokens routed evenly
// from every rank, every node then processes its own tokens of a global
// expert, and only the tokens of single-homed experts cross nodes.
//
// Equal counts per node are what make the engine's split keep those tokens
// in their node: the split starts from each expert's load spread evenly
// over its replicas and moves tokens only to balance the ranks (engine/
// split/amounts.py), and with equal counts per node the even spread is
// every node's own demand. The layout is then a node layout like the
// spread policy's (nodes.go): each node's ranks are packed by balanced
// differencing and refined (noderanks.go).
//
// Counts: the single-homed experts get one replica each, as evenly over the
// nodes as they go (q or q+1 per node), onto the least-loaded node,
// heaviest first; the global experts share the slots every node has left
// by EPLB's rule (one replica each, then each extra replica to the highest
// load per replica); a node with one slot to spare gives it to its heaviest
// single-homed expert (or, with none, its heaviest global one). h = E (when
// every expert fits in one node) is the replicated layout; a larger h moves
// fewer tokens between nodes and leaves fewer slots for balancing compute,
// which the step-time estimate weighs (costplan.go).

// errNoLayout means a hybrid layout does not exist for the h asked: a node
// would hold no expert, or the slots do not hold the experts.
var errNoLayout = errors.New("no hybrid layout of this h")

// hybridMax is the largest h whose layout fits: the global experts take
// one slot per node each, and the single-homed ones one slot somewhere:
// h <= slots per node and M*(F-h) >= E-h.
func hybridMax(e, nodes, perNode int) int {
	if nodes < 2 {
		return 0
	}
	h := (nodes*perNode - e) / (nodes - 1)
	return max(0, min(h, e, perNode))
}

// hybridScratch is the hybrid planner's per-layer state.
type hybridScratch struct {
	order    []int32   // experts by load, heaviest first
	home     []int32   // per expert: its node, -1 for a global expert
	nodeLoad []float64 // per node
	nSingle  []int32   // per node: single-homed experts
	spare    []int32   // per node: the expert its spare slot goes to, -1 for none
	subLoads []float64
	subReps  []int32
	counts   counter
}

// rankExperts orders the layer's experts by load, heaviest first (ties by
// id), once per layer.
func (hs *hybridScratch) rankExperts(loads []float64, e int) {
	hs.order = grow(hs.order, e)
	for i := range hs.order {
		hs.order[i] = int32(i)
	}
	slices.SortStableFunc(hs.order, func(a, b int32) int {
		la, lb := loadOf(loads, int(a)), loadOf(loads, int(b))
		switch {
		case la > lb:
			return -1
		case la < lb:
			return 1
		default:
			return 0
		}
	})
}

// planHybrid writes the hybrid layout of h into the plan being built
// (p.rk.dst) over nodes of r ranks, with its counts in p.reps and their
// weights in p.wt (rankExperts must have run for the layer).
func (p *planner) planHybrid(h, r int) error {
	hs := &p.hybrid
	e, s := p.nExperts, p.rk.s
	m, per := p.rk.n/r, r*s
	singles := e - h
	q, rho := singles/m, singles%m
	most := q
	if rho > 0 {
		most++
	}
	extra := per - h - most // the global experts' slots beyond one each, per node
	if h > e || extra < 0 || (h == 0 && q == 0) {
		return errNoLayout
	}
	hs.home = grow(hs.home, e)
	hs.nodeLoad = grow(hs.nodeLoad, m)
	hs.nSingle = grow(hs.nSingle, m)
	hs.spare = grow(hs.spare, m)
	clear(hs.nodeLoad)
	clear(hs.nSingle)
	for nd := range m {
		hs.spare[nd] = -1
	}
	for _, x := range hs.order[:h] {
		hs.home[x] = -1
	}
	// Single-homed experts, heaviest first, onto the least-loaded node
	// (ties: the lower node) that holds fewer than q of them, or q while
	// fewer than rho nodes hold q+1.
	full := 0 // nodes holding q+1
	for _, x := range hs.order[h:] {
		best := -1
		for nd := range m {
			c := hs.nSingle[nd]
			if c > int32(q) || (c == int32(q) && full >= rho) {
				continue
			}
			if best < 0 || hs.nodeLoad[nd] < hs.nodeLoad[best] {
				best = nd
			}
		}
		if best < 0 {
			return errNoLayout
		}
		hs.home[x] = int32(best)
		if hs.nSingle[best]++; hs.nSingle[best] == int32(q)+1 {
			full++
		}
		hs.nodeLoad[best] += loadOf(p.loads, int(x))
	}
	// The global experts' counts per node: EPLB over h+extra slots.
	sub := grow(hs.subLoads, h)
	subReps := grow(hs.subReps, h)
	for i, x := range hs.order[:h] {
		sub[i] = loadOf(p.loads, int(x))
	}
	hs.subLoads, hs.subReps = sub, subReps
	if h > 0 {
		hs.counts.count(subReps, sub, h+extra, nil)
	}
	np := &p.nodes
	np.reset(e, r, m, s)
	lay := &np.lay
	for i, x := range hs.order[:h] {
		c := subReps[i]
		p.reps[x] = c * int32(m)
		row := lay.cnt[int(x)*m : int(x+1)*m]
		for nd := range row {
			row[nd] = c
		}
	}
	for _, x := range hs.order[h:] {
		p.reps[x] = 1
		lay.cnt[int(x)*m+int(hs.home[x])] = 1
	}
	// A node with a slot to spare gives it to its heaviest single-homed
	// expert (the first in order; it needs a second rank), else to its
	// heaviest global one.
	if rho > 0 {
		for _, x := range hs.order {
			nd := hs.home[x]
			if r > 1 && nd >= 0 && hs.nSingle[nd] < int32(most) && hs.spare[nd] < 0 {
				hs.spare[nd] = x
			}
		}
		for nd := range m {
			if hs.nSingle[nd] == int32(most) {
				continue
			}
			x := hs.spare[nd]
			if x < 0 {
				if h == 0 {
					return errNoLayout
				}
				x = hs.order[0]
				hs.spare[nd] = x
			}
			p.reps[x]++
			lay.cnt[int(x)*m+nd]++
		}
	}
	p.weigh()
	// Node loads and expert lists: a global expert is on every node, a
	// single-homed one (or a spare replica) on one, O(E + h*M) rather than
	// a pass over every (expert, node).
	var base float64
	for _, x := range hs.order[:h] {
		base += float64(p.reps[x]/int32(m)) * p.wt.w[x]
	}
	for nd := range m {
		lay.load[nd] = base
	}
	lay.resetLists()
	for _, x := range p.wt.order {
		if hs.home[x] < 0 {
			for nd := range m {
				lay.listExpert(x, nd)
			}
			continue
		}
		nd := int(hs.home[x])
		lay.listExpert(x, nd)
		lay.load[nd] += float64(lay.cnt[int(x)*m+nd]) * p.wt.w[x]
	}
	for nd := range m {
		// A global expert's spare replica in this node.
		if x := hs.spare[nd]; x >= 0 && hs.home[x] < 0 {
			lay.load[nd] += p.wt.w[x]
		}
	}
	p.rk.empty()
	return p.packNodeRanks(lay)
}
