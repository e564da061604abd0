package swiftmoe

// packRanks places need[e] replicas of every expert onto the ranks [lo, hi):
// LPT packing, experts heaviest per replica first, each replica onto the
// least-loaded rank with a free slot that holds fewer than capR[e] replicas
// of it, so that one expert's replicas land on distinct ranks unless its
// count forces doubling. Ties go to the lower rank.
func (p *planner) packRanks(lo, hi int) error {
	p.buildFree(lo, hi)
	for _, e := range p.order {
		if k := p.need[e]; k > 0 {
			if err := p.placeExpert(e, k, lo, hi); err != nil {
				return err
			}
		}
	}
	return nil
}

// count returns the replicas of e placed on rank q so far (e's replicas are
// placed together, so a per-rank stamp suffices).
func (p *planner) count(q, e int32) int32 {
	if p.stampE[q] == e {
		return p.stampC[q]
	}
	return 0
}

// assign puts one replica of e into the next free slot of rank q.
func (p *planner) assign(q, e int32) {
	p.dst[int(q)*p.nSlots+int(p.fill[q])] = int(e)
	p.fill[q]++
	p.load[q] += p.w[e]
	p.bump(q, e)
}

func (p *planner) bump(q, e int32) {
	if p.stampE[q] == e {
		p.stampC[q]++
	} else {
		p.stampE[q], p.stampC[q] = e, 1
	}
}

// placeExpert places k replicas of e in rounds: each round puts one replica
// on each of the least-loaded eligible ranks.
func (p *planner) placeExpert(e, k int32, lo, hi int) error {
	limit := p.capR[e]
	for k > 0 {
		placed := p.takeFree(e, k, limit)
		k -= placed
		if placed == 0 {
			if err := p.repairRank(e, lo, hi); err != nil {
				return err
			}
			k--
		}
	}
	return nil
}

// placed returns the replicas of e among rank q's filled slots.
func (p *planner) placed(q, e int32) int32 {
	var c int32
	base := int(q) * p.nSlots
	for _, x := range p.dst[base : base+int(p.fill[q])] {
		if x == int(e) {
			c++
		}
	}
	return c
}

// repairRank places one replica of e when every rank with a free slot
// already holds capR[e] of it: a full rank p that may take e gives one of
// its replicas f to a free rank q that may take f, and takes e in its place.
//
// Such a swap always exists while e has replicas left (need <= ranks*capR):
// some full rank p holds fewer than capR[e]; if q held capR[f] of every f
// on p, q would hold at least S - count(p,e) + capR[e] > S replicas.
func (p *planner) repairRank(e int32, lo, hi int) error {
	if len(p.free) == 0 {
		return errNoRepair
	}
	q := p.hrank(p.free[0])
	s := p.nSlots
	bestP, bestJ := -1, -1
	var bestM float64
	for r := lo; r < hi; r++ {
		rr := int32(r)
		if p.fill[r] < int32(s) || p.count(rr, e) >= p.capR[e] {
			continue
		}
		for j := range s {
			f := int32(p.dst[r*s+j])
			if f == e || p.placed(q, f) >= p.capR[f] {
				continue
			}
			m := max(p.load[q]+p.w[f], p.load[r]-p.w[f]+p.w[e])
			if bestP < 0 || m < bestM {
				bestP, bestJ, bestM = r, j, m
			}
		}
	}
	if bestP < 0 {
		return errNoRepair
	}
	f := int32(p.dst[bestP*s+bestJ])
	pp := int32(bestP)
	p.dst[bestP*s+bestJ] = int(e)
	p.load[pp] += p.w[e] - p.w[f]
	p.bump(pp, e)
	p.dst[int(q)*s+int(p.fill[q])] = int(f)
	p.fill[q]++
	p.load[q] += p.w[f]
	p.refixFront()
	return nil
}
