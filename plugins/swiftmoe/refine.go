package swiftmoe

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

// refiner is the refinement phase: a local search that swaps replicas
// between the busiest rank of a range and its lightest ones.
type refiner struct {
	keys []uint64 // the range's rank keys, sorted by load
	tmp  []uint64 // sortKeys scratch
	cnt  []int32
	va   []float64 // the busiest rank's load less each of its weights
}

// refine improves the packing of ranks [lo, hi) of rk by local search:
// while some swap of two replicas between the busiest rank and one of the
// lightest ranks lowers the larger of their two loads below the busiest
// load, apply the best such swap. Swaps keep every rank within its
// per-expert limit (wt.capR). It stops early once the busiest rank is at
// most floor: a caller that knows the plan's busiest rank elsewhere will be
// at least floor gains nothing from going lower (floor 0: no such bound).
// It returns the busiest load of [lo, hi) it leaves.
//
// The ranks are sorted once by load (rank keys, see ranks.go); a swap
// changes two loads and moves just those two ranks, so each iteration costs
// its swap candidates rather than a scan of every rank.
func (rf *refiner) refine(rk *ranks, wt *weights, lo, hi int, floor float64) float64 {
	s := rk.s
	k := min(refinePartners, hi-lo-1)
	if k < 1 {
		return rk.maxLoad(lo, hi)
	}
	var sum, top float64
	for _, l := range rk.load[lo:hi] {
		sum += l
		top = max(top, l)
	}
	stop := max(sum/float64(hi-lo)*(1+1e-9), floor)
	if top <= 0 || top <= stop {
		return top
	}
	// Heaviest rank last: differencing leaves a node's ranks heaviest
	// first, so the keys come almost sorted.
	keys := grow(rf.keys, hi-lo)[:0]
	for q := hi - 1; q >= lo; q-- {
		keys = append(keys, rk.key(int32(q)))
	}
	rf.tmp = grow(rf.tmp, hi-lo)
	rf.cnt = grow(rf.cnt, 2*((hi-lo)*sortBuckets+1))
	sortKeys(keys, rf.tmp, rf.cnt)
	rf.keys = keys
	rw := rk.sw[lo*s : hi*s]
	rf.va = grow(rf.va, s)

	iters := max(4, refineBudget/(s*s*k+2*(hi-lo)))
	// rk's slices and mask, in locals: the scan below reads them often.
	load, dst, mask := rk.load, rk.dst, rk.mask
	for range iters {
		a := int32(keys[len(keys)-1] & mask) // rk.rank
		la := load[a]
		if la <= 0 || la <= stop {
			return la
		}
		tol := la * 1e-12
		bestM := la - tol
		bi, bb, bj, bk := -1, int32(-1), -1, -1
		// A swap of x (on a) for y (on b) leaves the larger of
		// (la-wx)+wy and (lb-wy)+wx, each summed in that order.
		oa := (int(a) - lo) * s
		wa := rw[oa : oa+s]
		rowA := dst[lo*s+oa:][:len(wa)]
		va := rf.va[:len(wa)]
		if s != 4 { // bestSwap4 sums la-wx itself
			for i, wx := range wa {
				va[i] = la - wx
			}
		}
		for ki, key := range keys[:k] {
			b := int32(key & mask) // rk.rank
			lb := load[b]
			// No swap leaves the pair below their mean, and the rest
			// are no lighter.
			if lb+tol >= la || (la+lb)/2 >= bestM {
				break
			}
			ob := (int(b) - lo) * s
			wb := rw[ob : ob+s]
			rowB := dst[lo*s+ob:][:len(wb)]
			var i, j int
			var m float64
			if len(wa) == 4 {
				i, j, m = bestSwap4((*[4]float64)(wa), (*[4]float64)(wb), (*[4]int)(rowA), (*[4]int)(rowB), wt.capR, la, lb, bestM)
			} else {
				i, j, m = bestSwap(wa, va, wb, rowA, rowB, wt.capR, lb, bestM)
			}
			if i >= 0 {
				bi, bb, bj, bk, bestM = i, b, j, ki, m
			}
		}
		if bi < 0 {
			return la
		}
		ia, ib := int(a)*s+bi, int(bb)*s+bj
		x, y := dst[ia], dst[ib]
		dst[ia], dst[ib] = y, x
		rw[ia-lo*s], rw[ib-lo*s] = wt.w[y], wt.w[x]
		load[a] += wt.w[y] - wt.w[x]
		load[bb] += wt.w[x] - wt.w[y]
		rekeySwap(keys, rk.key(a), rk.key(bb), bk)
	}
	return load[keys[len(keys)-1]&mask]
}

// bestSwap returns the swap of slot i of rank a (weights wa, va the rank's
// load less each of them, replicas rowA) for slot j of rank b (wb, rowB, load
// lb) that leaves the larger of the two loads lowest, below bestM, and that
// larger load; i = -1 when no swap leaves both below bestM. A swap may not
// take a rank above an expert's limit capR. (A function of its own: the
// scan of pairs compiles to tighter code than inline in refine's loop.)
func bestSwap(wa, va, wb []float64, rowA, rowB []int, capR []int32, lb, bestM float64) (int, int, float64) {
	bi, bj := -1, -1
	va = va[:len(wa)]
	for i, wx := range wa {
		ax := va[i]
		for j, wy := range wb {
			// wy < wx also means y is not x (the replicas of an expert
			// weigh the same); the larger of two sums is below bestM
			// when both are.
			if wy >= wx || lb-wy+wx >= bestM || ax+wy >= bestM {
				continue
			}
			x, y := int32(rowA[i]), int32(rowB[j])
			if holds(rowB, x) >= capR[x] || holds(rowA, y) >= capR[y] {
				continue
			}
			bi, bj, bestM = i, j, max(ax+wy, lb-wy+wx)
		}
	}
	return bi, bj, bestM
}

// bestSwap4 is bestSwap for ranks of four slots (the common layout),
// unrolled: each of the 16 pairs' tests is a branch of its own, which the
// branch predictor learns apart, and the loops' exits go. It finds the same
// swap (TestBestSwap4AgreesWithBestSwap); the refinement ran 12% faster.
func bestSwap4(wa, wb *[4]float64, rowA, rowB *[4]int, capR []int32, la, lb, bestM float64) (int, int, float64) {
	bi, bj := -1, -1
	try := func(i, j int) {
		wx, wy := wa[i], wb[j]
		if wy >= wx || lb-wy+wx >= bestM || la-wx+wy >= bestM {
			return
		}
		x, y := rowA[i], rowB[j]
		if holds4(rowB, x) >= capR[x] || holds4(rowA, y) >= capR[y] {
			return
		}
		bi, bj, bestM = i, j, max(la-wx+wy, lb-wy+wx)
	}
	try(0, 0)
	try(0, 1)
	try(0, 2)
	try(0, 3)
	try(1, 0)
	try(1, 1)
	try(1, 2)
	try(1, 3)
	try(2, 0)
	try(2, 1)
	try(2, 2)
	try(2, 3)
	try(3, 0)
	try(3, 1)
	try(3, 2)
	try(3, 3)
	return bi, bj, bestM
}

// holds4 is holds for a row of four slots.
func holds4(row *[4]int, x int) int32 {
	var c int32
	for _, z := range row {
		if z == x {
			c++
		}
	}
	return c
}

// holds is the replicas of expert x among a rank's filled slots row (the
// refinement's ranks are packed, so their whole rows).
func holds(row []int, x int32) int32 {
	var c int32
	for _, z := range row {
		if z == int(x) {
			c++
		}
	}
	return c
}

// rekeySwap puts the sorted rank keys back in order after a swap between
// the busiest rank a (its key last, now ka) and rank b (its key at bk, now
// kb): b's load rose and a's fell, both to below a's old load. So b's key
// moves right, never past a's old key at the end, and then a's moves left
// from the end, past b's too where b is now the busier. A swap moves keys
// by a few places among a range's few ranks, so each steps there rather
// than searching, in its one direction.
func rekeySwap(keys []uint64, ka, kb uint64, bk int) {
	i := bk
	for ; i+1 < len(keys) && keys[i+1] < kb; i++ {
		keys[i] = keys[i+1]
	}
	keys[i] = kb
	i = len(keys) - 1
	for ; i > 0 && keys[i-1] > ka; i-- {
		keys[i] = keys[i-1]
	}
	keys[i] = ka
}
