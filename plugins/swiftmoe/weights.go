package swiftmoe

import (
	"math"
	"math/bits"
	"slices"
)

// weights are what every packing phase reads of the experts, derived from
// the replica counts: each expert's load per replica, the most replicas one
// rank may hold, and the packing order.
type weights struct {
	w     []float64 // load per replica
	capR  []int32   // most replicas one rank may hold: ceil(reps/ranks)
	order []int32   // experts by w descending (the packing order)
	keys  []uint64  // sort keys for order
	tmp   []uint64  // sortKeys scratch
	cnt   []int32
}

// set derives the weights of the counts reps (one per expert, summing to
// slots) over n ranks: w, capR and order, experts by load per replica
// descending, then more replicas first, then lower id.
//
// The sort runs on one integer key per expert, which sorts several times
// faster than a comparison function: from the top, the complemented IEEE
// bits of w (heavier first; w >= 0), then the complemented replica count
// (more first), then the id. The low bits of w give way to the other two
// fields, so weights within a relative 2^(fields-52) of each other count as
// equal; a layout too large for that to stay below 2^-28 sorts with a
// comparison function instead.
func (wt *weights) set(reps []int32, loads []float64, n, slots int) {
	e := len(reps)
	wt.w = grow(wt.w, e)
	wt.capR = grow(wt.capR, e)
	wt.order = grow(wt.order, e)
	nr := int32(n)
	for x := range e {
		r := reps[x]
		wt.w[x] = loadOf(loads, x) / float64(r)
		wt.capR[x] = (r + nr - 1) / nr
	}
	idBits := bits.Len(uint(e - 1))
	repsBits := bits.Len(uint(slots))
	if idBits+repsBits > 24 {
		wt.sortFunc(reps)
		return
	}
	keys := grow(wt.keys, e)[:0]
	top := uint64(slots)
	for x := range e {
		k := ^math.Float64bits(wt.w[x]) >> (idBits + repsBits)
		k = k<<repsBits | (top - uint64(reps[x]))
		keys = append(keys, k<<idBits|uint64(x))
	}
	wt.tmp = grow(wt.tmp, e)
	wt.cnt = grow(wt.cnt, e*sortBuckets+1)
	sortKeys(keys, wt.tmp, wt.cnt)
	idMask := uint64(1)<<idBits - 1
	for i, k := range keys {
		wt.order[i] = int32(k & idMask)
	}
	wt.keys = keys
}

// sortFunc sorts order as set does, with a comparison function, for
// layouts too large for its keys.
func (wt *weights) sortFunc(reps []int32) {
	for x := range wt.order {
		wt.order[x] = int32(x)
	}
	slices.SortFunc(wt.order, func(a, b int32) int {
		switch {
		case wt.w[a] > wt.w[b]:
			return -1
		case wt.w[a] < wt.w[b]:
			return 1
		case reps[a] != reps[b]:
			return int(reps[b] - reps[a])
		default:
			return int(a - b)
		}
	})
}
