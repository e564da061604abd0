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

// replicable returns the ranks per node when the replicated layout applies:
// spread policy, equal nodes, and every expert fits on one node's slots.
func (p *planner) replicable(t sdk.Topology) int {
	r := hierarchical(t)
	if r == 0 || p.opts.nodes != nodesSpread || p.nExperts > r*p.nSlots {
		return 0
	}
	return r
}

// tryReplicated plans the replicated layout and keeps it over the spread
// plan in dst when its busiest rank is within replicateTolerance: one
// node's ranks are planned as a flat layer (counts, packing, count search),
// and every node gets a copy. Every expert then has the same replicas on
// every node, so with tokens drawn evenly from all ranks each node can
// process its own tokens (as in the static layout) while the ranks stay
// balanced as well as one node's ranks can be.
func (p *planner) tryReplicated(t sdk.Topology, r int) error {
	dst, cur, n := p.dst, p.cur, p.nRanks
	hi := maxRankLoad(dst, p.w, n, p.nSlots)
	p.spreadDst = grow(p.spreadDst, len(dst))
	p.spreadReps = grow(p.spreadReps, p.nExperts)
	copy(p.spreadDst, dst)
	copy(p.spreadReps, p.reps)

	per := r * p.nSlots
	node := sdk.Topology{WorldSize: r, SlotsPerRank: p.nSlots}
	p.nRanks, p.dst, p.cur = r, dst[:per], nil
	p.setRankBits()
	p.replicaCounts()
	err := p.pack(node)
	if err == nil && p.searchable() {
		p.searchCounts(node)
	}
	p.nRanks, p.dst, p.cur = n, dst, cur
	p.setRankBits()
	if err == nil {
		for o := per; o < len(dst); o += per {
			copy(dst[o:o+per], dst[:per])
		}
		nodes := int32(n / r)
		for x := range p.nExperts {
			p.reps[x] *= nodes
		}
		p.sortByWeight()
		if maxRankLoad(dst, p.w, n, p.nSlots) <= hi*(1+replicateTolerance) {
			return nil
		}
	}
	// The spread plan stays.
	copy(dst, p.spreadDst)
	copy(p.reps, p.spreadReps)
	p.sortByWeight()
	return nil
}
