package swiftmoe

import (
	"math"
	"math/bits"
	"slices"
)

// Rank keys. Packing looks up the least-loaded ranks for every replica, so
// ranks are ordered by a single uint64 key: the IEEE bits of the rank's load
// (ordered like the loads, which are >= 0) with the low rankBits bits
// replaced by the rank. One integer comparison then orders by (load, rank).
// Loads that differ only in those low mantissa bits (a relative
// 2^-(52-rankBits), below 1e-9 for a million ranks) count as equal and go
// to the lower rank: no plan gets measurably worse, and the order stays a
// deterministic total order.

// setRankBits sizes the rank field of the keys for nRanks ranks.
func (p *planner) setRankBits() {
	p.rankMask = uint64(1)<<bits.Len(uint(p.nRanks-1)) - 1
}

// hkey is rank q's key under its current load.
func (p *planner) hkey(q int32) uint64 {
	return math.Float64bits(p.load[q])&^p.rankMask | uint64(q)
}

// hrank is the rank a key stands for.
func (p *planner) hrank(k uint64) int32 { return int32(k & p.rankMask) }

// The free queue holds the keys of the ranks with a free slot, ascending,
// in the window p.free of p.fbuf. Packing takes an expert's replicas from
// the front (the least-loaded eligible ranks, one replica each) and merges
// the ranks it filled back in under their new keys. Those form one sorted
// run, and they mostly land in a few blocks near the back, so the merge
// (from the back, moving the larger keys as blocks) costs about one step
// per replica plus a binary search per block: several times cheaper than a
// heap's pop and push per replica. The window only moves right (it loses
// at least as many keys at the front as it gains at the back), so a buffer
// of ranks*(slots+1) keys holds a whole packing.

// buildFree fills the queue with the ranks in [lo, hi) that have a free
// slot.
func (p *planner) buildFree(lo, hi int) {
	p.fbuf = grow(p.fbuf, (hi-lo)*(p.nSlots+1))
	f := p.fbuf[:0]
	for q := lo; q < hi; q++ {
		if p.fill[q] < int32(p.nSlots) {
			f = append(f, p.hkey(int32(q)))
		}
	}
	slices.Sort(f)
	p.free = f
}

// takeFree gives one replica of e to each of the first k ranks in the queue
// that hold fewer than limit replicas of e, and returns how many it gave.
func (p *planner) takeFree(e, k, limit int32) int32 {
	free := p.free
	sel := p.sel[:0]
	kept, m, taken := 0, 0, int32(0)
	for ; m < len(free) && taken < k; m++ {
		q := p.hrank(free[m])
		if p.count(q, e) >= limit {
			free[kept] = free[m] // skipped: stays, in order
			kept++
			continue
		}
		p.assign(q, e)
		taken++
		if p.fill[q] < int32(p.nSlots) {
			sel = append(sel, p.hkey(q))
		}
	}
	// Close the gap the taken ranks left: skipped keys move next to the
	// untouched rest.
	start := m - kept
	copy(free[start:m], free[:kept])
	p.free = free[start:]
	// Equal loads plus w can round to equal sums, where the rank decides:
	// restore order (almost always a single pass).
	insertionSortKeys(sel)
	p.mergeFree(sel)
	p.sel = sel
	return taken
}

// mergeFree merges the ascending keys a into the queue, from the back.
func (p *planner) mergeFree(a []uint64) { p.free = mergeKeys(p.free, a) }

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
			at, _ := slices.BinarySearch(b[:j], x)
			copy(out[at+i+1:], b[at:j+1])
			j = at - 1
		}
		out[j+i+1] = x
	}
	return out
}

// refixFront restores the queue after the load of its front rank changed,
// or drops that rank when its slots are full.
func (p *planner) refixFront() {
	free := p.free
	q := p.hrank(free[0])
	if p.fill[q] >= int32(p.nSlots) {
		p.free = free[1:]
		return
	}
	k := p.hkey(q)
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
