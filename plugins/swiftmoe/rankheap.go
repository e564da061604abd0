package swiftmoe

import (
	"math"
	"math/bits"
)

// The rank heap holds the ranks that have a free slot, least loaded first,
// ties to the lower rank. Packing pops and pushes a rank for every replica,
// so the heap is the planner's hot loop: each entry is a single uint64 key,
// the IEEE bits of the rank's load (ordered like the loads, which are >= 0)
// with the low rankBits bits replaced by the rank. One integer comparison
// then orders by (load, rank). Loads that differ only in those low mantissa
// bits (a relative 2^-(52-rankBits), below 1e-9 for a million ranks) count
// as equal and go to the lower rank: no plan gets measurably worse, and the
// order stays a deterministic total order.

// setRankBits sizes the rank field of the keys for nRanks ranks.
func (p *planner) setRankBits() {
	p.rankMask = uint64(1)<<bits.Len(uint(p.nRanks-1)) - 1
}

// hkey is rank q's heap key under its current load.
func (p *planner) hkey(q int32) uint64 {
	return math.Float64bits(p.load[q])&^p.rankMask | uint64(q)
}

// hrank is the rank a key stands for.
func (p *planner) hrank(k uint64) int32 { return int32(k & p.rankMask) }

func (p *planner) hup(i int) {
	h := p.heap
	x := h[i]
	for i > 0 {
		parent := (i - 1) / 2
		if h[parent] <= x {
			break
		}
		h[i] = h[parent]
		i = parent
	}
	h[i] = x
}

func (p *planner) hdown(i int) {
	h := p.heap
	n := len(h)
	x := h[i]
	for {
		c := 2*i + 1
		if c >= n {
			break
		}
		if r := c + 1; r < n && h[r] < h[c] {
			c = r
		}
		if x <= h[c] {
			break
		}
		h[i] = h[c]
		i = c
	}
	h[i] = x
}

func (p *planner) hpush(q int32) {
	p.heap = append(p.heap, p.hkey(q))
	p.hup(len(p.heap) - 1)
}

// hpop removes and returns the least-loaded rank. The last key is almost
// always one of the largest, so the hole at the root first walks down to a
// leaf along the smaller children (one comparison a level) and the last key
// then climbs from there: fewer comparisons than sifting it down from the
// top.
func (p *planner) hpop() int32 {
	h := p.heap
	top := h[0]
	n := len(h) - 1
	x := h[n]
	h = h[:n]
	p.heap = h
	if n > 0 {
		i := 0
		for {
			c := 2*i + 1
			if c >= n {
				break
			}
			if r := c + 1; r < n && h[r] < h[c] {
				c = r
			}
			h[i] = h[c]
			i = c
		}
		h[i] = x
		p.hup(i)
	}
	return p.hrank(top)
}

// hfixTop restores heap order after the load of the rank at the top
// changed, or drops it when its slots are full.
func (p *planner) hfixTop() {
	q := p.hrank(p.heap[0])
	if p.fill[q] >= int32(p.nSlots) {
		p.hpop()
		return
	}
	p.heap[0] = p.hkey(q)
	p.hdown(0)
}

// hbuild makes a heap of the ranks in [lo, hi) that have a free slot.
func (p *planner) hbuild(lo, hi int) {
	p.heap = p.heap[:0]
	for q := lo; q < hi; q++ {
		if p.fill[q] < int32(p.nSlots) {
			p.heap = append(p.heap, uint64(q)) // keyed by heapify
		}
	}
	p.heapify()
}

// heapify re-keys every entry from load and restores heap order.
func (p *planner) heapify() {
	for i, k := range p.heap {
		p.heap[i] = p.hkey(p.hrank(k))
	}
	for i := len(p.heap)/2 - 1; i >= 0; i-- {
		p.hdown(i)
	}
}
