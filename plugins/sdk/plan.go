package sdk

import (
	"errors"
	"fmt"
)

// ErrInvalidPlan is wrapped by every error ValidateSlots returns.
var ErrInvalidPlan = errors.New("invalid plan")

// ValidateSlots checks one layer's placement against the plan rules of
// DESIGN.md: exactly TotalSlots entries, every id in [0, numExperts), every
// expert in at least one slot, and no rank holding more replicas of an
// expert than the slot count forces: with r_e replicas of expert e, a rank
// may hold at most ceil(r_e/WorldSize) of them.
func ValidateSlots(slots []int, numExperts int, t Topology) error {
	if t.WorldSize < 1 || t.SlotsPerRank < 1 {
		return fmt.Errorf("%w: topology needs world_size >= 1 and slots_per_rank >= 1, got %d and %d", ErrInvalidPlan, t.WorldSize, t.SlotsPerRank)
	}
	if numExperts < 1 {
		return fmt.Errorf("%w: num_experts must be >= 1, got %d", ErrInvalidPlan, numExperts)
	}
	total := t.TotalSlots()
	if len(slots) != total {
		return fmt.Errorf("%w: %d slots, want world_size*slots_per_rank = %d", ErrInvalidPlan, len(slots), total)
	}
	if total < numExperts {
		return fmt.Errorf("%w: %d slots cannot hold %d experts; raise slots_per_rank to at least %d", ErrInvalidPlan, total, numExperts, (numExperts+t.WorldSize-1)/t.WorldSize)
	}
	// Per expert: its replicas over the layer, the most of them one rank
	// may hold, and its replicas on the rank being checked (reset by
	// walking the rank's own slots, so each rank costs SlotsPerRank, not
	// numExperts).
	type count struct{ replicas, limit, onRank int32 }
	counts := make([]count, numExperts)
	for i, e := range slots {
		if e < 0 || e >= numExperts {
			return fmt.Errorf("%w: slot %d (rank %d) holds expert %d, want 0..%d", ErrInvalidPlan, i, i/t.SlotsPerRank, e, numExperts-1)
		}
		counts[e].replicas++
	}
	for e := range counts {
		c := &counts[e]
		if c.replicas == 0 {
			return fmt.Errorf("%w: expert %d has no slot; every expert needs at least one replica", ErrInvalidPlan, e)
		}
		c.limit = int32((int(c.replicas) + t.WorldSize - 1) / t.WorldSize)
	}
	for r := 0; r < t.WorldSize; r++ {
		rank := slots[r*t.SlotsPerRank : (r+1)*t.SlotsPerRank]
		// A rank holding no expert twice is within every limit (each
		// at least 1): most ranks, told by comparing their few slots,
		// without a count's store per slot.
		if distinct(rank) {
			continue
		}
		for _, e := range rank {
			c := &counts[e]
			if c.onRank++; c.onRank > c.limit {
				return fmt.Errorf("%w: rank %d holds %d replicas of expert %d, at most %d allowed with %d replicas over %d ranks", ErrInvalidPlan, r, c.onRank, e, c.limit, c.replicas, t.WorldSize)
			}
		}
		for _, e := range rank {
			counts[e].onRank = 0
		}
	}
	return nil
}

// distinct reports whether the slots of a rank hold no expert twice, for
// ranks of up to 8 slots (by comparing them pairwise; false for more, which
// the caller counts).
func distinct(rank []int) bool {
	if len(rank) == 4 { // the common rank, unrolled
		a, b, c, d := rank[0], rank[1], rank[2], rank[3]
		return a != b && a != c && a != d && b != c && b != d && c != d
	}
	if len(rank) > 8 {
		return false
	}
	for i, x := range rank {
		for _, y := range rank[i+1:] {
			if x == y {
				return false
			}
		}
	}
	return true
}

// Replicas counts the slots of each expert (len numExperts). Ids out of
// range are ignored.
func Replicas(slots []int, numExperts int) []int {
	out := make([]int, numExperts)
	for _, e := range slots {
		if e >= 0 && e < numExperts {
			out[e]++
		}
	}
	return out
}

// RankLoads returns the tokens each rank would process when every expert's
// load is split evenly across its replicas (len WorldSize). loads has one
// entry per expert; slots must be valid. A topology without slots per rank
// yields all-zero loads.
func RankLoads(slots []int, loads []float64, t Topology) []float64 {
	out := make([]float64, t.WorldSize)
	RankLoadsInto(out, make([]float64, len(loads)), slots, loads, t)
	return out
}

// RankLoadsInto is RankLoads writing into out (len WorldSize, zeroed) with
// share (len(loads), any contents) as scratch, for callers that plan many
// layers without allocating per layer.
func RankLoadsInto(out, share []float64, slots []int, loads []float64, t Topology) {
	if t.SlotsPerRank < 1 {
		return
	}
	// share[e] is the load of one replica of expert e, computed once per
	// expert rather than once per slot (the same quotient, and the same
	// summation order, as dividing at every slot).
	clear(share)
	for _, e := range slots {
		if e >= 0 && e < len(loads) {
			share[e]++
		}
	}
	for e, n := range share {
		if n > 0 {
			share[e] = loads[e] / n
		}
	}
	// Slot i is on rank i/SlotsPerRank; count ranks instead of dividing.
	r, k := 0, 0
	for _, e := range slots {
		if e >= 0 && e < len(loads) {
			out[r] += share[e]
		}
		if k++; k == t.SlotsPerRank {
			r, k = r+1, 0
		}
	}
}

// MaxOverMean is max(v)/mean(v); 1.0 is perfect balance, and an all-zero
// (or empty) v counts as balanced.
func MaxOverMean(v []float64) float64 {
	if len(v) == 0 {
		return 1
	}
	var sum, hi float64
	for _, x := range v {
		sum += x
		if x > hi {
			hi = x
		}
	}
	if sum <= 0 {
		return 1
	}
	return hi / (sum / float64(len(v)))
}

// StaticSlots is expert parallelism as DeepSpeed-MoE lays it out: slot k
// (rank-major, k = r*S+s) holds expert k mod numExperts, so experts are
// spread evenly over ranks and replicated uniformly where slots exceed
// experts. It is the plan every job starts from and the fallback when no
// strategy has produced a valid plan.
func StaticSlots(numExperts int, t Topology) []int {
	out := make([]int, t.TotalSlots())
	for k := range out {
		out[k] = k % numExperts
	}
	return out
}

// Floats converts token counts to float64 loads.
func Floats(v []uint64) []float64 {
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = float64(x)
	}
	return out
}
