package swiftmoe

import (
	"math"
	"math/bits"
	"slices"
)

// Intake-dealt node layouts. A node's ranks are packed for compute
// (nodes.go, refine.go), but what each takes in from other nodes depends
// on which experts it holds: a replica of an expert that its node holds
// more of than it asks for is filled partly from other nodes (in
// proportion to its room, the split's node tier), one of an expert the
// node holds less of takes in nothing across nodes. Packed for compute
// alone, a node can put several of the first kind on one rank: with E=64
// top-8 on 32 H200s in 4 nodes, 6 slots and a fixed hot set, five ranks of
// each node took in 8,886 tokens across nodes and one 4,443, and the
// all-to-all waits for the slowest rank.
//
// intakeDeal re-deals each node's replicas over its ranks: those that take
// in tokens first, most intake first, each to the rank that takes in least
// so far; then the others, heaviest first, each to the rank with the least
// compute so far; never two replicas of an expert on one rank. The node's
// experts and counts stay, so other nodes' traffic does not change; the
// compute it leaves uneven the engine's split partly evens out (it gives
// an expert's replicas uneven amounts), and the step model weighs it
// against the all-to-all saved. In the simulator
// (fixed-hot E=64 on 32 GPUs at 12.5 GB/s): all-to-all 4.62 -> 2.34 ms,
// compute 1.63 -> 2.05 ms, step 1.049 -> 0.900 of the bound.

// intakeSlot is one replica of a node being re-dealt.
type intakeSlot struct {
	x      int
	in, wt float64 // intake from other nodes, compute
}

// intakeScratch is intakeDeal's scratch.
type intakeScratch struct {
	items        []intakeSlot
	used         []int     // [G]: slots dealt per rank
	intake, load []float64 // [G]
	on           []uint64  // [E]: the node's ranks holding each expert (G <= 64)
}

// intakeDeal writes into out (len(dst)) dst with each node's ranks
// re-dealt (see above) and reports whether any node changed. sm must have
// just evaluated dst (eval or score): its slotIn holds each slot's intake.
func (sm *stepModel) intakeDeal(dst, out []int, sc *intakeScratch) bool {
	copy(out, dst)
	g, s := sm.g, sm.s
	per := g * s
	changed := false
	for nd := range sm.m {
		node, in := out[nd*per:(nd+1)*per], sm.slotIn[nd*per:(nd+1)*per]
		items := sc.items[:0]
		var anyIn bool
		for j, x := range node {
			anyIn = anyIn || in[j] > 0
			items = append(items, intakeSlot{x: x, in: in[j], wt: sm.w[x]})
		}
		sc.items = items
		if !anyIn {
			continue
		}
		sortIntake(items)
		orig := dst[nd*per : (nd+1)*per]
		if !sc.deal(node, items, g, s) {
			copy(node, orig)
			continue
		}
		if !slices.Equal(node, orig) {
			changed = true
		}
	}
	return changed
}

// sortIntake orders a node's replicas most intake first, then heaviest,
// then by expert (ties in all three are replicas of one expert:
// interchangeable). A node's few dozen replicas sort faster by insertion,
// with the comparison inline, than through a comparison function; those
// that take in tokens go first, so each part is sorted on its own.
func sortIntake(items []intakeSlot) {
	k := 0
	for j, it := range items {
		if it.in > 0 {
			items[k], items[j] = it, items[k]
			k++
		}
	}
	insertionSortIntake(items[:k])
	insertionSortIntake(items[k:])
}

func insertionSortIntake(items []intakeSlot) {
	for i := 1; i < len(items); i++ {
		it := items[i]
		j := i
		for ; j > 0 && intakeBefore(it, items[j-1]); j-- {
			items[j] = items[j-1]
		}
		items[j] = it
	}
}

// intakeBefore reports whether a goes before b in sortIntake's order.
func intakeBefore(a, b intakeSlot) bool {
	if a.in != b.in {
		return a.in > b.in
	}
	if a.wt != b.wt {
		return a.wt > b.wt
	}
	return a.x < b.x
}

// deal places items (sorted: intake first) on the node's g ranks of s
// slots, writing node; false when a replica finds no rank with a free slot
// that lacks its expert.
func (sc *intakeScratch) deal(node []int, items []intakeSlot, g, s int) bool {
	sc.used = grow(sc.used, g)
	sc.intake = grow(sc.intake, g)
	sc.load = grow(sc.load, g)
	used, intake, load := sc.used, sc.intake, sc.load
	clear(used)
	clear(intake)
	clear(load)
	// On up to 64 ranks a mask per expert tells which ranks hold it.
	masked := g <= 64
	var open uint64 // ranks with a free slot (masked)
	if masked {
		open = math.MaxUint64 >> (64 - g)
		for _, it := range items {
			if it.x >= len(sc.on) {
				sc.on = append(sc.on, make([]uint64, it.x+1-len(sc.on))...)
			}
			sc.on[it.x] = 0
		}
	}
	for _, it := range items {
		best := -1
		if masked {
			// prefer over the ranks that may take it (a free slot and
			// none of its expert), lowest first, with the best one's
			// intake and load held.
			elig := open &^ sc.on[it.x]
			bi, bl := math.Inf(1), math.Inf(1)
			if it.in > 0 {
				for ; elig != 0; elig &= elig - 1 {
					q := bits.TrailingZeros64(elig)
					if iq := intake[q]; iq < bi || (iq == bi && load[q] < bl) {
						best, bi, bl = q, iq, load[q]
					}
				}
			} else {
				for ; elig != 0; elig &= elig - 1 {
					if q := bits.TrailingZeros64(elig); load[q] < bl {
						best, bl = q, load[q]
					}
				}
			}
		} else {
			for q := range g {
				if used[q] < s && !slices.Contains(node[q*s:q*s+used[q]], it.x) && sc.prefer(q, best, it.in) {
					best = q
				}
			}
		}
		if best < 0 {
			return false
		}
		node[best*s+used[best]] = it.x
		used[best]++
		if used[best] == s {
			open &^= 1 << best
		}
		intake[best] += it.in
		load[best] += it.wt
		if masked {
			sc.on[it.x] |= 1 << best
		}
	}
	return true
}

// prefer reports whether rank q, which may take a replica taking in in
// tokens, is a better rank for it than best (-1: none yet): the least
// intake so far, ties by compute, for a replica that takes in tokens; the
// least compute for one that does not.
func (sc *intakeScratch) prefer(q, best int, in float64) bool {
	switch {
	case best < 0:
		return true
	case in > 0:
		return sc.intake[q] < sc.intake[best] || (sc.intake[q] == sc.intake[best] && sc.load[q] < sc.load[best])
	default:
		return sc.load[q] < sc.load[best]
	}
}
