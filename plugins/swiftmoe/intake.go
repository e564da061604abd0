package swiftmoe

import (
	"cmp"
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
		// (Ties in all three are replicas of one expert: interchangeable.)
		slices.SortFunc(items, func(a, b intakeSlot) int {
			if c := cmp.Compare(b.in, a.in); c != 0 {
				return c
			}
			if c := cmp.Compare(b.wt, a.wt); c != 0 {
				return c
			}
			return cmp.Compare(a.x, b.x)
		})
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
	masked := g <= 64
	if masked {
		for _, it := range items {
			if it.x >= len(sc.on) {
				sc.on = append(sc.on, make([]uint64, it.x+1-len(sc.on))...)
			}
			sc.on[it.x] = 0
		}
	}
	holds := func(q, x int) bool {
		if masked {
			return sc.on[x]>>q&1 != 0
		}
		return slices.Contains(node[q*s:q*s+used[q]], x)
	}
	for _, it := range items {
		best := -1
		for q := range g {
			if used[q] == s || holds(q, it.x) {
				continue
			}
			switch {
			case best < 0:
				best = q
			case it.in > 0:
				if intake[q] < intake[best] || (intake[q] == intake[best] && load[q] < load[best]) {
					best = q
				}
			case load[q] < load[best]:
				best = q
			}
		}
		if best < 0 {
			return false
		}
		node[best*s+used[best]] = it.x
		used[best]++
		intake[best] += it.in
		load[best] += it.wt
		if masked {
			sc.on[it.x] |= 1 << best
		}
	}
	return true
}
