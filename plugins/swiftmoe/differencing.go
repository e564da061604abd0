package swiftmoe

// Node packing by balanced differencing. A node's ranks are exactly full (r
// ranks, S slots, r*S replicas), so its packing is a partition of the
// replicas into r groups of S. LPT leaves such a partition about 1-2% above
// the mean with 4 slots per rank, and the refinement then spends most of a
// node's time swapping it down. The balanced largest differencing method
// (Karmarkar-Karp with equal group sizes) starts far closer: the replicas,
// heaviest first, form S partial partitions of r one-replica groups each;
// the two partials with the largest spread (heaviest group minus lightest)
// are merged, heaviest group of one with lightest of the other, until one
// partial of r groups of S replicas is left.

// packDifferencing packs node n's replicas (experts in list, counts in
// nodeCnt) onto ranks [lo, hi) by balanced differencing and reports
// whether it did. It does not when the replicas do not fill the ranks
// exactly or a rank would hold more replicas of an expert than its limit
// and no swap mends that; the ranks are then left empty for packRanks.
func (p *planner) packDifferencing(list []int32, n, nodes, lo, hi int) bool {
	r, s := hi-lo, p.nSlots
	total := r * s
	items := grow(p.dItems, total)[:0]
	multi := p.dMulti[:0]
	for _, x := range list {
		c := p.nodeCnt[int(x)*nodes+n]
		if len(items)+int(c) > total {
			return false
		}
		if c > p.capR[x] {
			multi = append(multi, x)
		}
		for range c {
			items = append(items, x)
		}
	}
	p.dItems, p.dMulti = items, multi
	if len(items) != total {
		return false
	}
	// Group g starts as item g alone; partial t holds groups t*r..t*r+r-1,
	// which are heaviest first since the items are.
	sum := grow(p.dSum, total)
	next := grow(p.dNext, total)
	tail := grow(p.dTail, total)
	part := grow(p.dPart, total)
	p.dSum, p.dNext, p.dTail, p.dPart = sum, next, tail, part
	for g, x := range items {
		sum[g] = p.w[x]
		next[g] = -1
		tail[g] = int32(g)
		part[g] = int32(g)
	}
	alive := s
	live := grow(p.dLive, s)
	p.dLive = live
	for t := range s {
		live[t] = int32(t)
	}
	for alive > 1 {
		// The two partials with the largest spread (ties: lower index).
		a, b := -1, -1
		var sa, sb float64
		for i, t := range live[:alive] {
			row := part[int(t)*r : int(t+1)*r]
			d := sum[row[0]] - sum[row[r-1]]
			switch {
			case a < 0 || d > sa:
				b, sb = a, sa
				a, sa = i, d
			case b < 0 || d > sb:
				b, sb = i, d
			}
		}
		ra := part[int(live[a])*r : int(live[a]+1)*r]
		rb := part[int(live[b])*r : int(live[b]+1)*r]
		for i, g := range ra {
			h := rb[r-1-i]
			next[tail[g]] = h
			tail[g] = tail[h]
			sum[g] += sum[h]
		}
		p.sortGroups(ra)
		alive--
		live[b] = live[alive]
	}
	// The groups of the last partial become the ranks, in order.
	final := part[int(live[0])*r : int(live[0]+1)*r]
	for i, g := range final {
		q := lo + i
		row := p.dst[q*s : (q+1)*s]
		j := 0
		var l float64
		for it := g; it >= 0; it = next[it] {
			x := items[it]
			row[j] = int(x)
			l += p.w[x]
			j++
		}
		p.fill[q], p.load[q] = int32(s), l
		p.stampE[q], p.stampC[q] = -1, 0
	}
	if p.mendLimits(lo, hi) {
		return true
	}
	for q := lo; q < hi; q++ {
		p.load[q], p.fill[q] = 0, 0
	}
	return false
}

// sortGroups orders a partial's groups heaviest first, ties by group id.
func (p *planner) sortGroups(g []int32) {
	sum := p.dSum
	for i := 1; i < len(g); i++ {
		for j := i; j > 0; j-- {
			a, b := g[j-1], g[j]
			if sum[a] > sum[b] || (sum[a] == sum[b] && a < b) {
				break
			}
			g[j-1], g[j] = b, a
		}
	}
}

// mendLimits swaps replicas until no rank in [lo, hi) holds more replicas
// of an expert than capR: a rank over the limit of x trades one x for a
// replica y of a rank that may take x (and it may take y), choosing the
// trade that leaves the lower larger load. It reports whether every rank
// ends within its limits.
func (p *planner) mendLimits(lo, hi int) bool {
	s := p.nSlots
	for guard := (hi - lo) * s; guard >= 0; guard-- {
		a, ia := p.overLimit(lo, hi)
		if a < 0 {
			return true
		}
		x := int32(p.dst[a*s+ia])
		la := p.load[a]
		bb, bj := -1, -1
		var bestM float64
		for b := lo; b < hi; b++ {
			if b == a || p.placed(int32(b), x) >= p.capR[x] {
				continue
			}
			for j, y := range p.dst[b*s : (b+1)*s] {
				if int32(y) == x || p.placed(int32(a), int32(y)) >= p.capR[y] {
					continue
				}
				m := max(la-p.w[x]+p.w[y], p.load[b]-p.w[y]+p.w[x])
				if bb < 0 || m < bestM {
					bb, bj, bestM = b, j, m
				}
			}
		}
		if bb < 0 {
			return false
		}
		ib := bb*s + bj
		y := p.dst[ib]
		p.dst[a*s+ia], p.dst[ib] = y, int(x)
		p.load[a] += p.w[y] - p.w[x]
		p.load[bb] += p.w[x] - p.w[y]
	}
	return false
}

// overLimit returns a rank in [lo, hi) holding more replicas of some expert
// than capR, and the slot of one of them; -1 when there is none. Only the
// experts with more replicas on the node than capR (dMulti) can be over.
func (p *planner) overLimit(lo, hi int) (int, int) {
	s := p.nSlots
	for _, x := range p.dMulti {
		for q := lo; q < hi; q++ {
			c, at := int32(0), 0
			for i, y := range p.dst[q*s : (q+1)*s] {
				if y == int(x) {
					c++
					at = i
				}
			}
			if c > p.capR[x] {
				return q, at
			}
		}
	}
	return -1, 0
}
