package swiftmoe

import (
	"errors"
	"slices"

	"github.com/swiftmoe/swiftmoe/plugins/sdk"
)

// Hybrid layouts: when tokens crossing nodes cost more than they save in
// compute balance, an expert's replicas belong in the nodes that route
// tokens to it. A hybrid layout of h gives the h most loaded experts
// (global) replicas in every node, in proportion to that node's own demand
// for them, and each other expert (single-homed) all its replicas in one
// node. Node m's ranks are then planned as a flat layer of their own, whose
// loads are m's demand for the global experts and the whole load of the
// experts homed there: counts, packing and refinement as for any layer.
// With tokens routed evenly from every rank, a global expert's replicas
// keep every node's tokens for it in the node, and only the tokens of
// single-homed experts cross. h = E (when every expert fits in one node) is
// the replicated layout; larger h moves fewer tokens between nodes and
// leaves fewer slots for balancing compute, which the step-time estimate
// weighs (costplan.go).

// errNoLayout means a hybrid layout does not exist for the h asked: a node
// would hold no expert, or the single-homed experts find no room.
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
	free     []int32   // per node
	present  []int32   // experts of the node being planned
	subLoads []float64
	sub      *planner
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

// planHybrid writes the hybrid layout of h into dst (len N*S) for the
// model's layer, each node planned flat (rankExperts must have run).
func (p *planner) planHybrid(dst []int, h int, sm *stepModel) error {
	hs := &p.hybrid
	e, m, g, s := sm.e, sm.m, sm.g, sm.s
	per := g * s
	hs.home = grow(hs.home, e)
	hs.nodeLoad = grow(hs.nodeLoad, m)
	hs.free = grow(hs.free, m)
	clear(hs.nodeLoad)
	for nd := range m {
		hs.free[nd] = int32(per - h)
	}
	for i, x := range hs.order {
		if i < h {
			hs.home[x] = -1
			for nd := range m {
				hs.nodeLoad[nd] += sm.demand(int(x), nd)
			}
		}
	}
	// Single-homed experts, heaviest first, each onto the least-loaded node
	// with a free slot (ties: the node that routes most of its tokens, then
	// the lower node).
	for _, x := range hs.order[h:] {
		best := -1
		for nd := range m {
			if hs.free[nd] == 0 {
				continue
			}
			if best < 0 || hs.nodeLoad[nd] < hs.nodeLoad[best] ||
				(hs.nodeLoad[nd] == hs.nodeLoad[best] && sm.demand(int(x), nd) > sm.demand(int(x), best)) {
				best = nd
			}
		}
		if best < 0 {
			return errNoLayout
		}
		hs.home[x] = int32(best)
		hs.free[best]--
		hs.nodeLoad[best] += loadOf(sm.loads, int(x))
	}
	if hs.sub == nil {
		hs.sub = new(planner)
	}
	node := sdk.Topology{WorldSize: g, SlotsPerRank: s}
	for nd := range m {
		present := hs.present[:0]
		sub := hs.subLoads[:0]
		for x := range e {
			switch hs.home[x] {
			case -1:
				present = append(present, int32(x))
				sub = append(sub, sm.demand(x, nd))
			case int32(nd):
				present = append(present, int32(x))
				sub = append(sub, loadOf(sm.loads, x))
			}
		}
		hs.present, hs.subLoads = present, sub
		if len(present) == 0 {
			return errNoLayout // fewer experts than nodes
		}
		out := dst[nd*per : (nd+1)*per]
		if err := hs.sub.planLayer(out, sub, nil, len(present), node, options{noSearch: true}); err != nil {
			return err
		}
		for i, k := range out {
			out[i] = int(present[k])
		}
	}
	return nil
}
