package swiftmoe

const (
	// refineBudget bounds the work of refine per call (swap candidates and
	// rank scans, summed over iterations), so that large layers stay within the
	// planning time budget while small ones get a thorough search.
	refineBudget = 1 << 13
	// refinePartners is how many of the lightest ranks the busiest rank
	// may swap with in one iteration.
	refinePartners = 8
)

// refine improves the packing of ranks [lo, hi) by local search: while some
// swap of two replicas between the busiest rank and one of the lightest
// ranks lowers the larger of their two loads below the busiest load, apply
// the best such swap. Swaps keep every rank within its per-expert limit.
func (p *planner) refine(lo, hi int) {
	s := p.nSlots
	k := min(refinePartners, hi-lo-1)
	if k < 1 {
		return
	}
	iters := max(4, refineBudget/(s*s*k+2*(hi-lo)))
	var partners [refinePartners]int32
	for range iters {
		a, sum := lo, 0.0
		for q := lo; q < hi; q++ {
			sum += p.load[q]
			if p.load[q] > p.load[a] {
				a = q
			}
		}
		la := p.load[a]
		if la <= 0 || la <= sum/float64(hi-lo)*(1+1e-9) {
			return
		}
		part := p.lightest(partners[:0], lo, hi, a, k)
		tol := la * 1e-12
		bestM := la - tol
		bi, bb, bj := -1, int32(-1), -1
		for i := range s {
			x := int32(p.dst[a*s+i])
			wx := p.w[x]
			for _, b := range part {
				lb := p.load[b]
				if lb+tol >= la {
					continue
				}
				base := int(b) * s
				for j := range s {
					y := int32(p.dst[base+j])
					wy := p.w[y]
					if y == x || wy >= wx {
						continue
					}
					m := max(la-wx+wy, lb-wy+wx)
					if m >= bestM {
						continue
					}
					if p.placed(b, x) >= p.capR[x] || p.placed(int32(a), y) >= p.capR[y] {
						continue
					}
					bi, bb, bj, bestM = i, b, j, m
				}
			}
		}
		if bi < 0 {
			return
		}
		x, y := p.dst[a*s+bi], p.dst[int(bb)*s+bj]
		p.dst[a*s+bi], p.dst[int(bb)*s+bj] = y, x
		p.load[a] += p.w[y] - p.w[x]
		p.load[bb] += p.w[x] - p.w[y]
	}
}

// lightest appends to out the k least-loaded ranks in [lo, hi) other than
// skip, lightest first (ties to the lower rank).
func (p *planner) lightest(out []int32, lo, hi, skip, k int) []int32 {
	for q := lo; q < hi; q++ {
		if q == skip {
			continue
		}
		lq := p.load[q]
		if len(out) == k && lq >= p.load[out[k-1]] {
			continue
		}
		if len(out) < k {
			out = append(out, int32(q))
		} else {
			out[k-1] = int32(q)
		}
		for i := len(out) - 1; i > 0 && p.load[out[i]] < p.load[out[i-1]]; i-- {
			out[i], out[i-1] = out[i-1], out[i]
		}
	}
	return out
}
