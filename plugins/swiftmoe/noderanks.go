package swiftmoe

// packNodeRanks packs each node's demand (node packing's layout lay) onto
// the node's ranks and refines them there. Under node_policy=spread a node
// starts from balanced differencing, else (or when differencing declines)
// from flat packing.
//
// The busiest rank of the plan is at least the heaviest replica and at
// least the mean rank load of the busiest node, and at least the busiest
// rank of every node refined so far. Refining a node below that bound
// cannot lower the plan's busiest rank, so each node's refinement stops
// there (a node that cannot reach it refines exactly as it would alone, so
// the plan's busiest rank is never higher than with full refinement). The
// nodes go busiest first, which raises the bound soonest.
//
// done, when not nil, is called with each node once its ranks are final;
// when it returns false, packing stops there with errOutbound. Packing also
// stops, with errAbove, once a node's ranks (or the bound) are above hi by
// more than rounding: the plan's busiest rank then is too, and the count
// search (hi finite) has no use for it.
func (p *planner) packNodeRanks(lay *nodeLayout, hi float64, done func(node int) bool) error {
	seq := lay.byLoad()
	floor := p.wt.w[p.wt.order[0]]
	floor = max(floor, lay.load[lay.node(seq[len(seq)-1])]/float64(lay.r))
	for i := len(seq) - 1; i >= 0; i-- {
		d := lay.demand(lay.node(seq[i]))
		if p.opts.nodes != nodesSpread || !p.diff.pack(&p.rk, &p.wt, d) {
			p.flat.start(&p.rk, d.lo, d.hi)
			for _, x := range d.experts {
				if err := p.flat.place(&p.rk, &p.wt, x, d.replicas(x), d.lo, d.hi); err != nil {
					return err
				}
			}
		}
		floor = max(floor, p.refine.refine(&p.rk, &p.wt, d.lo, d.hi, floor))
		if floor > hi*(1+1e-9) {
			return errAbove
		}
		if done != nil && !done(d.node) {
			return errOutbound
		}
	}
	return nil
}
