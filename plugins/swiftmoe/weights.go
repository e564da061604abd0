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
	keys  []uint64  // sort keys for order, when keyed
	keyed bool      // order was sorted by keys (set)
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
	wt.setWeights(reps, loads, n)
	idBits := bits.Len(uint(e - 1))
	repsBits := bits.Len(uint(slots))
	wt.keyed = idBits+repsBits <= 24
	if !wt.keyed {
		wt.sortFunc(reps)
		return
	}
	keys := grow(wt.keys, e)[:0]
	for x := range e {
		keys = append(keys, wt.key(reps, x, idBits, repsBits, slots))
	}
	wt.tmp = grow(wt.tmp, e)
	wt.cnt = grow(wt.cnt, 2*(e*sortBuckets+1))
	sortKeys(keys, wt.tmp, wt.cnt)
	wt.orderKeys(keys, idBits)
}

// setWeights sets w and capR of the counts reps over n ranks, and sizes
// order.
func (wt *weights) setWeights(reps []int32, loads []float64, n int) {
	e := len(reps)
	wt.w = grow(wt.w, e)
	wt.capR = grow(wt.capR, e)
	wt.order = grow(wt.order, e)
	nr := int32(n)
	w, capR := wt.w[:e], wt.capR[:e]
	for x, r := range reps {
		w[x] = loadOf(loads, x) / float64(r)
		capR[x] = rankCap(r, nr)
	}
}

// setRuns is set for counts whose experts come as some in any order and
// two runs, each in set's order but for weights near enough to tie on
// their keys (as the experts of one count are in load order); the three
// hold each expert once. The first are sorted, each run's keys put in
// order by insertion, which moves only such ties, and the three merged.
// The keys are distinct, so that is set's order, without its sort of every
// key. Where the keys do not fit, set sorts with a comparison function as
// it would.
func (wt *weights) setRuns(reps []int32, loads []float64, n, slots int, some []int32, runs [2][]int32) {
	e := len(reps)
	idBits := bits.Len(uint(e - 1))
	repsBits := bits.Len(uint(slots))
	if idBits+repsBits > 24 {
		wt.set(reps, loads, n, slots)
		return
	}
	wt.setWeights(reps, loads, n)
	wt.keyed = true
	keys := grow(wt.keys, e)[:0]
	for _, x := range some {
		keys = append(keys, wt.key(reps, int(x), idBits, repsBits, slots))
	}
	wt.tmp = grow(wt.tmp, e)
	wt.cnt = grow(wt.cnt, 2*(e*sortBuckets+1))
	sortKeys(keys, wt.tmp, wt.cnt)
	ends := [3]int{len(keys)}
	for i, run := range runs {
		for _, x := range run {
			keys = append(keys, wt.key(reps, int(x), idBits, repsBits, slots))
		}
		insertionSortKeys(keys[ends[i]:])
		ends[i+1] = len(keys)
	}
	// The first two into tmp, then tmp and the third into keys, from the
	// front: a key is written no later than the third's next unread key.
	tmp := mergeSorted(wt.tmp[:0], keys[:ends[0]], keys[ends[0]:ends[1]])
	keys = mergeSorted(keys[:0], tmp, keys[ends[1]:ends[2]])
	wt.orderKeys(keys, idBits)
}

// mergeSorted appends the merge of the ascending keys a and b to dst.
func mergeSorted(dst, a, b []uint64) []uint64 {
	i, j := 0, 0
	for i < len(a) && j < len(b) {
		if a[i] < b[j] {
			dst = append(dst, a[i])
			i++
		} else {
			dst = append(dst, b[j])
			j++
		}
	}
	dst = append(dst, a[i:]...)
	return append(dst, b[j:]...)
}

// key is expert x's sort key (see set).
func (wt *weights) key(reps []int32, x, idBits, repsBits, slots int) uint64 {
	k := ^math.Float64bits(wt.w[x]) >> (idBits + repsBits)
	k = k<<repsBits | (uint64(slots) - uint64(reps[x]))
	return k<<idBits | uint64(x)
}

// rankCap is the most replicas of an expert with r replicas that one of n
// ranks may hold: ceil(r/n).
func rankCap(r, n int32) int32 {
	if r <= n { // most experts: no division
		return min(r, 1)
	}
	return (r + n - 1) / n
}

// orderKeys keeps keys (sorted) and sets order from them.
func (wt *weights) orderKeys(keys []uint64, idBits int) {
	idMask := uint64(1)<<idBits - 1
	for i, k := range keys {
		wt.order[i] = int32(k & idMask)
	}
	wt.keys = keys
}

// setMoved is set for counts reps that are base's (the counts base was
// set from, with the same n and slots) with one replica moved from expert
// from to expert to. Every other expert keeps its weight and its key, which
// base holds in order, so the two moved keys are merged in rather than all
// of them sorted again: the same order, as the keys are distinct.
func (wt *weights) setMoved(base *weights, reps []int32, loads []float64, n, slots, from, to int) {
	if !base.keyed {
		wt.set(reps, loads, n, slots)
		return
	}
	e := len(reps)
	wt.w = append(wt.w[:0], base.w...)
	wt.capR = append(wt.capR[:0], base.capR...)
	wt.order = grow(wt.order, e)
	nr := int32(n)
	for _, x := range [2]int{from, to} {
		wt.w[x] = loadOf(loads, x) / float64(reps[x])
		wt.capR[x] = rankCap(reps[x], nr)
	}
	idBits := bits.Len(uint(e - 1))
	repsBits := bits.Len(uint(slots))
	wt.keyed = true
	a, b := wt.key(reps, from, idBits, repsBits, slots), wt.key(reps, to, idBits, repsBits, slots)
	if b < a {
		a, b = b, a
	}
	// Merge a then b (a <= b) into base's other keys; no key is
	// math.MaxUint64 (its replica field, slots - reps, is below the
	// field's all-ones), which marks a merged key.
	idMask := uint64(1)<<idBits - 1
	keys := grow(wt.keys, e)[:0]
	for _, k := range base.keys {
		if x := int(k & idMask); x == from || x == to {
			continue
		}
		for ; a < k; a, b = b, math.MaxUint64 {
			keys = append(keys, a)
		}
		keys = append(keys, k)
	}
	for ; a != math.MaxUint64; a, b = b, math.MaxUint64 {
		keys = append(keys, a)
	}
	wt.orderKeys(keys, idBits)
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
