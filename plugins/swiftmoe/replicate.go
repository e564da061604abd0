package swiftmoe

import "github.com/swiftmoe/swiftmoe/plugins/sdk"

// replicateTolerance is how much busier the busiest rank of the replicated
// layout (below) may be than that of the spread plan and still be chosen.
// Under spread, an expert whose replicas split unevenly over nodes (4 and
// 3, say) sends the surplus tokens of one node across: a per-rank-balanced
// split gives each replica the same share, not each node its own tokens.
// A token that crosses nodes costs about 20 times one that stays (12.5
// against 300 GB/s per GPU on common clusters), so a few percent of
// compute balance buy back more than they cost.
const replicateTolerance = 0.05

// savedPlan holds the spread plan and its counts while the replicated
// layout is tried.
type savedPlan struct {
	dst  []int
	reps []int32
}

// replicable returns the ranks per node when the replicated layout applies:
// spread policy, equal nodes, and every expert fits on one node's slots.
func (p *planner) replicable(t sdk.Topology) int {
	r := hierarchical(t)
	if r == 0 || p.opts.nodes != nodesSpread || p.nExperts > r*p.rk.s {
		return 0
	}
	return r
}

// tryReplicated plans the replicated layout and keeps it over the spread
// plan when its busiest rank is within replicateTolerance: one node's ranks
// are planned as a flat layer (counts, packing, count search), and every
// node gets a copy. Every expert then has the same replicas on every node,
// so with tokens drawn evenly from all ranks each node can process its own
// tokens (as in the static layout) while the ranks stay balanced as well as
// one node's ranks can be.
func (p *planner) tryReplicated(t sdk.Topology, r int) error {
	dst, cur, n := p.rk.dst, p.cur, p.rk.n
	hi := maxRankLoad(dst, p.wt.w, n, p.rk.s)
	p.saved.dst = grow(p.saved.dst, len(dst))
	p.saved.reps = grow(p.saved.reps, p.nExperts)
	copy(p.saved.dst, dst)
	copy(p.saved.reps, p.reps)

	per := r * p.rk.s
	node := sdk.Topology{WorldSize: r, SlotsPerRank: p.rk.s}
	p.rk.resize(r, dst[:per])
	p.cur = nil
	p.count()
	err := p.pack(node)
	if err == nil && p.searchable() {
		p.search.run(p, node)
	}
	p.rk.resize(n, dst)
	p.cur = cur
	if err == nil {
		for o := per; o < len(dst); o += per {
			copy(dst[o:o+per], dst[:per])
		}
		nodes := int32(n / r)
		for x := range p.nExperts {
			p.reps[x] *= nodes
		}
		p.weigh()
		if maxRankLoad(dst, p.wt.w, n, p.rk.s) <= hi*(1+replicateTolerance) {
			return nil
		}
	}
	// The spread plan stays.
	copy(dst, p.saved.dst)
	copy(p.reps, p.saved.reps)
	p.weigh()
	return nil
}
