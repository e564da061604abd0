package swiftmoe

import "slices"

const (
	// refineBudget bounds the iterations of refine per call: each is
	// charged its swap candidates plus two per rank, so that large layers
	// stay within the planning time budget while small ones get a thorough
	// search.
	refineBudget = 1 << 13
	// refinePartners is how many of the lightest ranks the busiest rank
	// may swap with in one iteration.
	refinePartners = 8
)

// refine improves the packing of ranks [lo, hi) by local search: while some
// swap of two replicas between the busiest rank and one of the lightest
// ranks lowers the larger of their two loads below the busiest load, apply
// the best such swap. Swaps keep every rank within its per-expert limit.
// It stops early once the busiest rank is at most floor: a caller that
// knows the plan's busiest rank elsewhere will be at least floor gains
// nothing from going lower (floor 0: no such bound). It returns the busiest
// load of [lo, hi) it leaves.
//
// The ranks are sorted once by load (heap keys, see rankheap.go); a swap
// changes two loads and moves just those two ranks, so each iteration costs
// its swap candidates rather than a scan of every rank.
func (p *planner) refine(lo, hi int, floor float64) float64 {
	s := p.nSlots
	k := min(refinePartners, hi-lo-1)
	if k < 1 {
		return p.maxLoad(lo, hi)
	}
	var sum, top float64
	for _, l := range p.load[lo:hi] {
		sum += l
		top = max(top, l)
	}
	stop := max(sum/float64(hi-lo)*(1+1e-9), floor)
	if top <= 0 || top <= stop {
		return top
	}
	keys := p.sorted[:0]
	for q := lo; q < hi; q++ {
		keys = append(keys, p.hkey(int32(q)))
	}
	sortKeys(keys, p.sortTmp, p.sortCnt)
	p.sorted = keys

	iters := max(4, refineBudget/(s*s*k+2*(hi-lo)))
	for range iters {
		a := p.hrank(keys[len(keys)-1])
		la := p.load[a]
		if la <= 0 || la <= stop {
			return la
		}
		tol := la * 1e-12
		bestM := la - tol
		bi, bb, bj, bk := -1, int32(-1), -1, -1
		rowA := p.dst[int(a)*s : int(a+1)*s]
		for ki, key := range keys[:k] {
			b := p.hrank(key)
			lb := p.load[b]
			// No swap leaves the pair below their mean, and the rest
			// are no lighter.
			if lb+tol >= la || (la+lb)/2 >= bestM {
				break
			}
			rowB := p.dst[int(b)*s : int(b+1)*s]
			for i, x := range rowA {
				wx := p.w[x]
				for j, y := range rowB {
					wy := p.w[y]
					if y == x || wy >= wx {
						continue
					}
					m := max(la-wx+wy, lb-wy+wx)
					if m >= bestM {
						continue
					}
					if p.placed(b, int32(x)) >= p.capR[x] || p.placed(a, int32(y)) >= p.capR[y] {
						continue
					}
					bi, bb, bj, bk, bestM = i, b, j, ki, m
				}
			}
		}
		if bi < 0 {
			return la
		}
		ia, ib := int(a)*s+bi, int(bb)*s+bj
		x, y := p.dst[ia], p.dst[ib]
		p.dst[ia], p.dst[ib] = y, x
		p.load[a] += p.w[y] - p.w[x]
		p.load[bb] += p.w[x] - p.w[y]
		p.resort(keys, bb, bk)
		p.resort(keys, a, len(keys)-1)
	}
	return p.load[p.hrank(keys[len(keys)-1])]
}

// maxLoad is the busiest load among ranks [lo, hi).
func (p *planner) maxLoad(lo, hi int) float64 {
	var m float64
	for _, l := range p.load[lo:hi] {
		m = max(m, l)
	}
	return m
}

// resort moves rank q's key in the sorted keys to its place under q's new
// load. hint is where the key most likely is.
func (p *planner) resort(keys []uint64, q int32, hint int) {
	i := hint
	if p.hrank(keys[i]) != q {
		i = slices.IndexFunc(keys, func(k uint64) bool { return p.hrank(k) == q })
	}
	copy(keys[i:], keys[i+1:])
	rest := keys[:len(keys)-1]
	k := p.hkey(q)
	j, _ := slices.BinarySearch(rest, k)
	copy(keys[j+1:], keys[j:len(keys)-1])
	keys[j] = k
}
