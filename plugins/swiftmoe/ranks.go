package swiftmoe

import (
	"math"
	"math/bits"
)

// ranks is the plan being built and what the packing phases know of each
// rank: its load (the summed weights of its replicas), how many of its slots
// are filled, and how many replicas it holds of the expert it took last.
type ranks struct {
	n, s int   // ranks being planned, slots per rank
	dst  []int // the plan: slot j of rank q is dst[q*s+j]
	// sw is the weight of each filled slot's replica, laid out as dst:
	// kept by the packers, the repairs and the swaps as they fill and
	// change slots, for the refinement that follows them (a plan put
	// back by copying dst does not carry it).
	sw     []float64
	load   []float64
	fill   []int32 // slots used
	stampE []int32 // expert whose replica count on the rank stampC holds
	stampC []int32
	mask   uint64 // the rank field of a rank key
}

// reset sizes the ranks for a layout of n ranks of s slots planned into
// dst; their contents are set by empty.
func (rk *ranks) reset(dst []int, n, s int) {
	rk.s = s
	rk.load = grow(rk.load, n)
	rk.fill = grow(rk.fill, n)
	rk.stampE = grow(rk.stampE, n)
	rk.stampC = grow(rk.stampC, n)
	rk.sw = grow(rk.sw, len(dst))
	rk.resize(n, dst)
}

// resize plans the first n ranks into dst (len n*s), for n at most the
// ranks of the last reset.
func (rk *ranks) resize(n int, dst []int) {
	rk.n, rk.dst = n, dst
	rk.mask = uint64(1)<<bits.Len(uint(n-1)) - 1
}

// empty empties every rank before a packing.
func (rk *ranks) empty() {
	for r := range rk.n {
		rk.load[r] = 0
		rk.fill[r] = 0
		rk.stampE[r] = -1
		rk.stampC[r] = 0
	}
}

// Rank keys. Packing looks up the least-loaded ranks for every replica, so
// ranks are ordered by a single uint64 key: the IEEE bits of the rank's load
// (ordered like the loads, which are >= 0) with the low bits (mask) replaced
// by the rank. One integer comparison then orders by (load, rank). Loads
// that differ only in those low mantissa bits (a relative 2^-(52-bits),
// below 1e-9 for a million ranks) count as equal and go to the lower rank:
// no plan gets measurably worse, and the order stays a deterministic total
// order.

// key is rank q's key under its current load.
func (rk *ranks) key(q int32) uint64 {
	return math.Float64bits(rk.load[q])&^rk.mask | uint64(q)
}

// rank is the rank a key stands for.
func (rk *ranks) rank(k uint64) int32 { return int32(k & rk.mask) }

// count returns the replicas of e placed on rank q so far (e's replicas are
// placed together, so a per-rank stamp suffices).
func (rk *ranks) count(q, e int32) int32 {
	if rk.stampE[q] == e {
		return rk.stampC[q]
	}
	return 0
}

// assign puts one replica of e, of weight w, into the next free slot of
// rank q.
func (rk *ranks) assign(q, e int32, w float64) {
	i := int(q)*rk.s + int(rk.fill[q])
	rk.dst[i], rk.sw[i] = int(e), w
	rk.fill[q]++
	rk.load[q] += w
	rk.bump(q, e)
}

func (rk *ranks) bump(q, e int32) {
	if rk.stampE[q] == e {
		rk.stampC[q]++
	} else {
		rk.stampE[q], rk.stampC[q] = e, 1
	}
}

// placed returns the replicas of e among rank q's filled slots.
func (rk *ranks) placed(q, e int32) int32 {
	base := int(q) * rk.s
	return holds(rk.dst[base:base+int(rk.fill[q])], e)
}

// maxLoad is the busiest load among ranks [lo, hi).
func (rk *ranks) maxLoad(lo, hi int) float64 {
	// On integers that order as the loads do (a negative load's
	// magnitude bits flipped; loads are never NaN): an integer max
	// compiles to a conditional move, where float max guards NaN and -0
	// at every step. It starts from +0, whose integer is 0, as float max
	// from 0 would: the busiest of no load is 0, and negative loads
	// (rounding at most) do not count.
	var m int64
	for _, l := range rk.load[lo:hi] {
		k := int64(math.Float64bits(l))
		m = max(m, k^int64(uint64(k>>63)>>1))
	}
	return math.Float64frombits(uint64(m))
}
