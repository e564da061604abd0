package swiftmoe

import "slices"

// The free queue holds the keys (see ranks.go) of the ranks with a free
// slot, ascending, in the window free of buf. Packing takes an expert's
// replicas from the front (the least-loaded eligible ranks, one replica
// each) and merges the ranks it filled back in under their new keys. Those
// form one sorted run, and they mostly land in a few blocks near the back,
// so the merge (from the back, moving the larger keys as blocks) costs about
// one step per replica plus a binary search per block: several times
// cheaper than a heap's pop and push per replica. The window only moves
// right (it loses at least as many keys at the front as it gains at the
// back), so a buffer of ranks*(slots+1) keys holds a whole packing.

// start fills the queue with the ranks in [lo, hi) that have a free slot.
func (pk *rankPacker) start(rk *ranks, lo, hi int) {
	pk.buf = grow(pk.buf, (hi-lo)*(rk.s+1))
	f := pk.buf[:0]
	for q := lo; q < hi; q++ {
		if rk.fill[q] < int32(rk.s) {
			f = append(f, rk.key(int32(q)))
		}
	}
	slices.Sort(f)
	pk.free = f
	pk.sel = grow(pk.sel, hi-lo)[:0]
}

// takeFree gives one replica of e (of weight w) to each of the first k
// ranks in the queue that hold fewer than limit replicas of e, and returns
// how many it gave.
func (pk *rankPacker) takeFree(rk *ranks, e, k, limit int32, w float64) int32 {
	free := pk.free
	sel := pk.sel[:0]
	kept, m, taken := 0, 0, int32(0)
	for ; m < len(free) && taken < k; m++ {
		q := rk.rank(free[m])
		if rk.count(q, e) >= limit {
			free[kept] = free[m] // skipped: stays, in order
			kept++
			continue
		}
		rk.assign(q, e, w)
		taken++
		if rk.fill[q] < int32(rk.s) {
			sel = append(sel, rk.key(q))
		}
	}
	// Close the gap the taken ranks left: skipped keys move next to the
	// untouched rest.
	start := m - kept
	copy(free[start:m], free[:kept])
	pk.free = free[start:]
	// Equal loads plus w can round to equal sums, where the rank decides:
	// restore order (almost always a single pass).
	insertionSortKeys(sel)
	pk.free = mergeKeys(pk.free, sel)
	pk.sel = sel
	return taken
}

// mergeKeys merges the ascending keys a into the ascending keys b, from the
// back, in place: b's array must have room for len(a) more keys after b.
func mergeKeys(b, a []uint64) []uint64 {
	out := b[:len(b)+len(a)]
	j := len(b) - 1
	for i := len(a) - 1; i >= 0; i-- {
		x := a[i]
		if j >= 0 && b[j] > x {
			// The keys of b above x move up past the i+1 keys of a
			// still to place.
			// The first key of b[:j+1] not below x (b's keys are
			// distinct from x's; b[j] is above it), by binary
			// search. Its steps are branches, which the predictor
			// mostly gets right: x mostly lands near the back. (The
			// same search without branches, each step adding h by the
			// borrow of b[at+h-1]-x, measured 6% slower on the plan
			// with nodes.)
			at, n := 0, j+1
			for n > 1 {
				h := n >> 1
				if b[at+h-1] < x {
					at += h
				}
				n -= h
			}
			if j-at < 8 {
				// A short block: cheaper moved key by key (from
				// the top, as the block moves up) than by a call.
				for t := j; t >= at; t-- {
					out[t+i+1] = b[t]
				}
			} else {
				copy(out[at+i+1:], b[at:j+1])
			}
			j = at - 1
		}
		out[j+i+1] = x
	}
	return out
}

// requeueTaken puts the queue q back in order, in place, after its first
// take keys were taken and those of them with a free slot left came back
// as sel (ascending, their loads grown; at most take). Where all of sel
// lands in q's lower half, sel merges forward into the room the taken keys
// left; else from the back, the keys above each moving up into the room
// after q (q's array must have len(sel) more). Each way is a plain loop
// over the keys it passes, mostly under half the queue: node packing's
// grown loads mostly land mid-queue, where mergeKeys' binary searches and
// block copies cost more (the planner benchmark for step time: 41.81 -> 40.56 M
// instructions a plan, CPU time 0.955 of before).
func requeueTaken(q []uint64, take int, sel []uint64) []uint64 {
	m, n := len(sel), len(q)
	if m == 0 {
		return q[take:]
	}
	if sel[m-1] > q[n>>1] {
		out := q[:n+m]
		w, j := n+m-1, n-1
		for i := m - 1; i >= 0; i-- {
			x := sel[i]
			for ; j >= take && q[j] > x; j-- {
				out[w] = q[j]
				w--
			}
			out[w] = x
			w--
		}
		return out[take:]
	}
	w, j := take-m, take
	for _, x := range sel {
		for ; j < n && q[j] < x; j++ {
			q[w] = q[j]
			w++
		}
		q[w] = x
		w++
	}
	return q[take-len(sel):]
}

// refixFront restores the queue after the load of its front rank changed,
// or drops that rank when its slots are full.
func (pk *rankPacker) refixFront(rk *ranks) {
	free := pk.free
	q := rk.rank(free[0])
	if rk.fill[q] >= int32(rk.s) {
		pk.free = free[1:]
		return
	}
	k := rk.key(q)
	at, _ := slices.BinarySearch(free[1:], k)
	copy(free, free[1:at+1])
	free[at] = k
}

func insertionSortKeys(v []uint64) {
	for i := 1; i < len(v); i++ {
		for j := i; j > 0 && v[j] < v[j-1]; j-- {
			v[j], v[j-1] = v[j-1], v[j]
		}
	}
}
