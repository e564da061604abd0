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
// to slices.Sort. scratch must hold len(keys) keys; counts, at least
// len(keys)*sortBuckets+1 entries.
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
	// offset's top nbits bits are b.
	nbits := bits.Len(uint(n*sortBuckets)) - 1
	nb := 1 << nbits
	shift := max(0, bits.Len64(hi-lo)-nbits)
	clear(counts[:nb+1])
	for _, k := range keys {
		counts[((k-lo)>>shift)+1]++
	}
	var most int32
	for b := 1; b <= nb; b++ {
		most = max(most, counts[b])
		counts[b] += counts[b-1]
	}
	if most > 16 {
		slices.Sort(keys)
		return
	}
	for _, k := range keys {
		b := (k - lo) >> shift
		scratch[counts[b]] = k
		counts[b]++
	}
	copy(keys, scratch[:n])
	insertionSortKeys(keys)
}
