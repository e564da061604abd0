package swiftmoe

import (
	"math/bits"
	"slices"
)

// sortBuckets bounds the number of buckets sortKeys spreads keys over, per
// key.
const sortBuckets = 1

// sortKeys sorts keys ascending. The planner sorts a few hundred keys per
// layer twice (experts by weight, ranks by load), where a comparison sort's
// branch mispredictions dominate. So one pass spreads the keys over
// sortBuckets*len buckets by their offset from the smallest key (a counting
// sort on the top bits of key-min: buckets in key order), and an insertion
// sort finishes inside the buckets. Keys bunched into one bucket fall back
// to slices.Sort; keys several to a bucket are first spread by the bits
// below. scratch must hold len(keys) keys; counts, at least
// 2*(len(keys)*sortBuckets+1) entries.
func sortKeys(keys, scratch []uint64, counts []int32) {
	n := len(keys)
	if n < 32 {
		insertionSortKeys(keys)
		return
	}
	lo, hi := keys[0], keys[0]
	for _, k := range keys {
		lo, hi = min(lo, k), max(hi, k)
	}
	// 2^nbits <= sortBuckets*n buckets; bucket b takes the keys whose
	// offset's top nbits bits are b. One pass counts both the buckets and
	// the nbits below them (c2, for the pass below), which costs less than
	// a second pass over the keys when it is needed and little when not.
	nbits := bits.Len(uint(n*sortBuckets)) - 1
	nb := 1 << nbits
	shift := max(0, bits.Len64(hi-lo)-nbits)
	shift2 := uint(max(0, int(shift)-nbits))
	low := uint64(nb - 1)
	c1, c2 := counts[:nb+1], counts[nb+1:2*nb+2]
	clear(counts[:2*nb+2])
	for _, k := range keys {
		o := k - lo
		c1[(o>>shift)+1]++
		c2[(o>>shift2)&low+1]++
	}
	var most int32
	for b := 1; b <= nb; b++ {
		most = max(most, c1[b])
		c1[b] += c1[b-1]
		c2[b] += c2[b-1]
	}
	if most > 16 {
		slices.Sort(keys)
		return
	}
	if most > 2 && shift > 0 {
		// Keys share buckets: first order them by the nbits below
		// the buckets' (a stable counting pass into scratch), so that
		// the pass by bucket leaves them ordered by twice the bits and
		// the insertion sort almost nothing to move. (Its moves inside
		// a bucket mispredicted: the weights cluster near the
		// replication rate, up to 12 a bucket.)
		for _, k := range keys {
			d := ((k - lo) >> shift2) & low
			scratch[c2[d]] = k
			c2[d]++
		}
		for _, k := range scratch[:n] {
			b := (k - lo) >> shift
			keys[c1[b]] = k
			c1[b]++
		}
		insertionSortKeys(keys)
		return
	}
	for _, k := range keys {
		b := (k - lo) >> shift
		scratch[c1[b]] = k
		c1[b]++
	}
	copy(keys, scratch[:n])
	insertionSortKeys(keys)
}
