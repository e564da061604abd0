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

// differencer packs one node's ranks by balanced differencing.
type differencer struct {
	items []int32 // the node's replicas (experts), heaviest first
	sum   []float64
	next  []int32
	tail  []int32
	part  []int32
	live  []int32
	multi []int32 // experts the node holds more of than one rank may
	at    []int32 // each item's rank, from the node's first
	held  []int32 // over's count of one expert's replicas per rank
	// mark is, per expert in multi, the stamp of overLimit's pass in the
	// high 32 bits and the expert's place in multi in the low ones.
	mark  []uint64
	stamp uint32
}

// pack packs node d's demand onto its ranks by balanced differencing and
// reports whether it did. It does not when the replicas do not fill the
// ranks exactly or a rank would hold more replicas of an expert than its
// limit and no swap mends that; the ranks are then left empty for flat
// packing.
func (df *differencer) pack(rk *ranks, wt *weights, d nodeDemand) bool {
	lo, hi := d.lo, d.hi
	r, s := hi-lo, rk.s
	w := wt.w
	total := r * s
	if !df.collect(d, wt.capR, total) {
		return false
	}
	items := df.items
	// Group g starts as item g alone; partial t holds groups t*r..t*r+r-1,
	// which are heaviest first since the items are.
	sum := grow(df.sum, total)
	next := grow(df.next, total)
	tail := grow(df.tail, total)
	part := grow(df.part, total)
	df.sum, df.next, df.tail, df.part = sum, next, tail, part
	sum, next, tail, part = sum[:len(items)], next[:len(items)], tail[:len(items)], part[:len(items)]
	// A group's items are linked by next from the group on; it ends with
	// one item of each partial, S in all, so the links need no end mark.
	for g, x := range items {
		sum[g] = w[x]
		tail[g] = int32(g)
		part[g] = int32(g)
	}
	alive := s
	live := grow(df.live, s)
	df.live = live
	for t := range s {
		live[t] = int32(t)
	}
	for alive > 1 {
		// The two partials with the largest spread (ties: lower index).
		a, b := -1, -1
		var sa, sb float64
		for i, t := range live[:alive] {
			o := int(t) * r
			gap := sum[part[o]] - sum[part[o+r-1]]
			switch {
			case a < 0 || gap > sa:
				b, sb = a, sa
				a, sa = i, gap
			case b < 0 || gap > sb:
				b, sb = i, gap
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
		df.sortGroups(ra)
		alive--
		live[b] = live[alive]
	}
	// The groups of the last partial become the ranks, in order.
	final := part[int(live[0])*r : int(live[0]+1)*r]
	dst := rk.dst
	at := grow(df.at, total) // each item's rank, from lo
	df.at = at
	for i, g := range final {
		q := lo + i
		row := dst[q*s : (q+1)*s]
		sw := rk.sw[q*s : (q+1)*s]
		var l float64
		it := g
		if s == 4 {
			// Unrolled: the common rank of four slots.
			row, sw := (*[4]int)(row), (*[4]float64)(sw)
			i0 := it
			i1 := next[i0]
			i2 := next[i1]
			i3 := next[i2]
			x0, x1, x2, x3 := items[i0], items[i1], items[i2], items[i3]
			w0, w1, w2, w3 := w[x0], w[x1], w[x2], w[x3]
			row[0], row[1], row[2], row[3] = int(x0), int(x1), int(x2), int(x3)
			sw[0], sw[1], sw[2], sw[3] = w0, w1, w2, w3
			at[i0], at[i1], at[i2], at[i3] = int32(i), int32(i), int32(i), int32(i)
			l = 0 + w0 + w1 + w2 + w3 // from 0, as the loop sums (-0 weights)
		} else {
			for j := range row {
				x := items[it]
				wx := w[x]
				row[j], sw[j] = int(x), wx
				at[it] = int32(i)
				l += wx
				it = next[it]
			}
		}
		rk.fill[q], rk.load[q] = int32(s), l
		rk.stampE[q], rk.stampC[q] = -1, 0
	}
	if !df.over(wt.capR, r) || df.mendLimits(rk, wt, lo, hi) {
		return true
	}
	for q := lo; q < hi; q++ {
		rk.load[q], rk.fill[q] = 0, 0
	}
	return false
}

// collect lists node d's replicas, experts in packing order, in items, and
// the experts it holds more of than one rank may (capR) in multi. It
// reports whether the replicas fill the node's total slots exactly.
func (df *differencer) collect(d nodeDemand, capR []int32, total int) bool {
	items := grow(df.items, total)
	multi := df.multi[:0]
	n := 0
	for _, x := range d.experts {
		c := d.replicas(x)
		end := n + int(c)
		if end > total {
			return false
		}
		if c == 1 { // most: no loop, whose exit would mispredict
			items[n] = x
			n++
			continue
		}
		if c > capR[x] {
			multi = append(multi, x)
		}
		for ; n < end; n++ {
			items[n] = x
		}
	}
	df.items, df.multi = items[:n], multi
	return n == total
}

// over reports whether a rank holds more replicas of an expert than capR,
// from the ranks pack gave the items (at) of the node's r ranks. Only the
// experts in multi can. An expert's replicas are consecutive items, and
// multi lists its experts in the items' order, so one pass finds them.
// Each rank takes one item of each starting partial (items t*r to
// t*r+r-1), so only an expert whose items span more partials than its
// limit needs its ranks counted.
func (df *differencer) over(capR []int32, r int) bool {
	items, at := df.items, df.at
	held := grow(df.held, r)
	clear(held)
	df.held = held
	i := 0
	for _, x := range df.multi {
		for items[i] != x {
			i++
		}
		end := i + 1
		for end < len(items) && items[end] == x {
			end++
		}
		c := capR[x]
		if int32((end-1)/r-i/r) < c {
			// The items of one partial (r in a row) go to distinct
			// ranks, so no rank holds more of x than the partials
			// its items span.
			i = end
			continue
		}
		for _, q := range at[i:end] {
			held[q]++
			if held[q] > c {
				return true
			}
		}
		for _, q := range at[i:end] {
			held[q] = 0
		}
		i = end
	}
	return false
}

// sortGroups orders a partial's groups heaviest first, ties by group id.
func (df *differencer) sortGroups(g []int32) {
	sum := df.sum
	for i := 1; i < len(g); i++ {
		v := g[i]
		sv := sum[v]
		j := i
		for ; j > 0; j-- {
			u := g[j-1]
			if su := sum[u]; su > sv || (su == sv && u < v) {
				break
			}
			g[j] = u
		}
		g[j] = v
	}
}

// mendLimits swaps replicas until no rank in [lo, hi) holds more replicas
// of an expert than capR: a rank over the limit of x trades one x for a
// replica y of a rank that may take x (and it may take y), choosing the
// trade that leaves the lower larger load. It reports whether every rank
// ends within its limits.
func (df *differencer) mendLimits(rk *ranks, wt *weights, lo, hi int) bool {
	s := rk.s
	for guard := (hi - lo) * s; guard >= 0; guard-- {
		a, ia := df.overLimit(rk, wt, lo, hi)
		if a < 0 {
			return true
		}
		x := int32(rk.dst[a*s+ia])
		la := rk.load[a]
		bb, bj := -1, -1
		var bestM float64
		for b := lo; b < hi; b++ {
			if b == a || rk.placed(int32(b), x) >= wt.capR[x] {
				continue
			}
			for j, y := range rk.dst[b*s : (b+1)*s] {
				if int32(y) == x || rk.placed(int32(a), int32(y)) >= wt.capR[y] {
					continue
				}
				m := max(la-wt.w[x]+wt.w[y], rk.load[b]-wt.w[y]+wt.w[x])
				if bb < 0 || m < bestM {
					bb, bj, bestM = b, j, m
				}
			}
		}
		if bb < 0 {
			return false
		}
		ib := bb*s + bj
		y := rk.dst[ib]
		rk.dst[a*s+ia], rk.dst[ib] = y, int(x)
		rk.sw[a*s+ia], rk.sw[ib] = wt.w[y], wt.w[x]
		rk.load[a] += wt.w[y] - wt.w[x]
		rk.load[bb] += wt.w[x] - wt.w[y]
	}
	return false
}

// overLimit returns a rank in [lo, hi) holding more replicas of some expert
// than capR, and the slot of the last of them; -1 when there is none. Only
// the experts with more replicas on the node than capR (multi) can be over.
// Of several, it is the one of the expert first in multi, then the lowest
// rank. One pass over the ranks' slots counts the replicas of multi's
// experts (marked for the pass, with their place in multi), which
// differencing rarely puts together.
func (df *differencer) overLimit(rk *ranks, wt *weights, lo, hi int) (int, int) {
	multi := df.multi
	if len(multi) == 0 {
		return -1, 0
	}
	s := rk.s
	df.mark = grow(df.mark, len(wt.capR))
	df.stamp++
	if df.stamp == 0 { // wrapped: stale marks could match
		clear(df.mark)
		df.stamp = 1
	}
	mark, stamp := df.mark, uint64(df.stamp)<<32
	for i, x := range multi {
		mark[x] = stamp | uint64(i)
	}
	// Marked experts whose place is below best: their tags lie in
	// [stamp, stamp+best).
	best, bestQ, bestAt := uint64(len(multi)), -1, 0
	for q := lo; q < hi; q++ {
		row := rk.dst[q*s : (q+1)*s]
		for i, x := range row {
			if mark[x]-stamp >= best {
				continue
			}
			// From x's first slot on the rank (a later one counts
			// fewer, and this rank already holds x's best).
			c, at := int32(1), i
			for j := i + 1; j < len(row); j++ {
				if row[j] == x {
					c++
					at = j
				}
			}
			if c > wt.capR[x] {
				best, bestQ, bestAt = mark[x]-stamp, q, at
				if best == 0 {
					return bestQ, bestAt
				}
			}
		}
	}
	return bestQ, bestAt
}
