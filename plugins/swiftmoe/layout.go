package swiftmoe

import (
	"math"
	"slices"

	"github.com/swiftmoe/swiftmoe/plugins/sdk"
)

// orderSlots orders each of the n ranks' replicas in dst (s slots a rank)
// so that an expert the rank held in the current plan cur stays in its
// slot; without a current plan (nil), ascending ids.
//
// In place, slot by slot: a slot that does not hold its current expert c
// takes c from another slot that does not hold its own current expert
// either. That keeps, for every expert, as many of its current slots as
// the rank holds replicas of it, the first ones in slot order. (The slot
// given up cannot want what it receives: it would have taken it on its
// own turn or will take it later.)
func orderSlots(dst, cur []int, n, s int) {
	if cur == nil {
		for o := 0; o < n*s; o += s {
			insertionSort(dst[o : o+s])
		}
		return
	}
	if s == 4 {
		// Unrolled: the common rank of four slots. The mask test is
		// mayShare's, written out (calling mayShare here measured 4%
		// slower on the whole plan).
		for o := 0; o+4 <= n*s; o += 4 {
			row, was := (*[4]int)(dst[o:o+4]), (*[4]int)(cur[o:o+4])
			held := uint64(1)<<(uint(was[0])&63) | 1<<(uint(was[1])&63) | 1<<(uint(was[2])&63) | 1<<(uint(was[3])&63)
			if (held>>(uint(row[0])&63)|held>>(uint(row[1])&63)|held>>(uint(row[2])&63)|held>>(uint(row[3])&63))&1 != 0 {
				keepSlots4(row, was)
			}
		}
		return
	}
	for o := 0; o < n*s; o += s {
		row, was := dst[o:o+s:o+s], cur[o:o+s:o+s]
		if mayShare(row, was) {
			keepSlots(row, was)
		}
	}
}

// mayShare reports whether row may hold an expert of was (keepSlots moves
// nothing otherwise): false when no id of row shares a bit with was's ids
// in a 64-bit mask of ids mod 64, which rules out most rows in one pass
// each.
func mayShare(row, was []int) bool {
	var held uint64
	for _, c := range was {
		held |= 1 << (uint(c) & 63)
	}
	var hit uint64
	for _, x := range row {
		hit |= held >> (uint(x) & 63)
	}
	return hit&1 != 0
}

// keepSlots orders one rank's row so that its replicas stay in the slots
// they held in was, the rank's current row (see orderSlots).
func keepSlots(row, was []int) {
	was = was[:len(row)]
	for i, c := range was {
		if row[i] == c {
			continue
		}
		for j := range row {
			if row[j] == c && row[j] != was[j] {
				row[i], row[j] = row[j], row[i]
				break
			}
		}
	}
}

// keepSlots4 is keepSlots for ranks of four slots, unrolled.
func keepSlots4(row, was *[4]int) {
	keep := func(i int) {
		c := was[i]
		if row[i] == c {
			return
		}
		switch {
		case row[0] == c && row[0] != was[0]:
			row[i], row[0] = row[0], row[i]
		case row[1] == c && row[1] != was[1]:
			row[i], row[1] = row[1], row[i]
		case row[2] == c && row[2] != was[2]:
			row[i], row[2] = row[2], row[i]
		case row[3] == c && row[3] != was[3]:
			row[i], row[3] = row[3], row[i]
		}
	}
	keep(0)
	keep(1)
	keep(2)
	keep(3)
}

func insertionSort(v []int) {
	for i := 1; i < len(v); i++ {
		for j := i; j > 0 && v[j] < v[j-1]; j-- {
			v[j], v[j-1] = v[j-1], v[j]
		}
	}
}

// keepCurrentIfAsGood replaces the new plan by the current one when the
// current plan is valid and its busiest rank is no busier (with keep_margin,
// no more than that fraction busier) under the predicted loads (each plan splitting an expert's load evenly over its own
// replicas). With zero total load the current plan must also have the new
// (uniform) counts. So an unchanged load keeps an unchanged plan, and no
// slot moves for no gain: among equally good plans, the current one wins.
// Under node_policy=spread the current plan must also be spread.
//
// above is at least the new plan's busiest rank (or +Inf): a current plan
// with a rank above it is rejected before the new plan's loads are summed.
// It reports whether it kept the current plan.
func (p *planner) keepCurrentIfAsGood(t sdk.Topology, above float64) bool {
	if p.cur == nil {
		return false
	}
	s := p.rk.s
	keep := 1 + p.opts.keep // keep_margin: the current plan may be this much busier
	if !math.IsInf(above, 1) && !p.currentAtMost(s, above*keep) {
		return false
	}
	var total float64
	for e := range p.nExperts {
		r := p.curReps[e]
		if r == 0 {
			return false
		}
		p.curW[e] = loadOf(p.loads, e) / float64(r)
		total += loadOf(p.loads, e)
	}
	if total <= 0 && !slices.Equal(p.curReps, p.reps) {
		return false
	}
	if !loadsAtMost(p.cur, p.curW, s, maxRankLoad(p.rk.dst, p.wt.w, p.rk.n, s)*keep) {
		return false
	}
	if !p.withinRankLimits(p.cur) {
		return false
	}
	if r := hierarchical(t); r > 0 && p.opts.nodes == nodesSpread && !p.spreadOverNodes(p.cur, r) {
		return false
	}
	copy(p.rk.dst, p.cur)
	return true
}

// withinRankLimits reports whether no rank of slots holds more replicas of
// an expert than ceil(replicas/ranks), replicas as counted in the current
// plan (curReps).
func (p *planner) withinRankLimits(slots []int) bool {
	s, n := p.rk.s, int32(p.rk.n)
	for r := range p.rk.n {
		row := slots[r*s : (r+1)*s]
		for i, x := range row {
			c := int32(1)
			for _, y := range row[i+1:] {
				if y == x {
					c++
				}
			}
			if c > (p.curReps[x]+n-1)/n {
				return false
			}
		}
	}
	return true
}

// currentValid reports whether the current plan is a valid plan: every
// expert in a slot and no rank over its limit (see withinRankLimits).
func (p *planner) currentValid() bool {
	if p.cur == nil {
		return false
	}
	for _, r := range p.curReps {
		if r == 0 {
			return false
		}
	}
	return p.withinRankLimits(p.cur)
}

// spreadOverNodes reports whether every expert's replicas in slots are
// spread over the nodes of r ranks as node_policy=spread spreads them: each
// node holds floor(reps/nodes) or one more (reps as counted in cur).
func (p *planner) spreadOverNodes(slots []int, r int) bool {
	nodes := p.rk.n / r
	cnt := grow(p.tally, p.nExperts*nodes)
	p.tally = cnt
	clear(cnt)
	per := r * p.rk.s
	for i, e := range slots {
		cnt[e*nodes+i/per]++
	}
	nd := int32(nodes)
	for e := range p.nExperts {
		lo := p.curReps[e] / nd
		for _, c := range cnt[e*nodes : (e+1)*nodes] {
			if c != lo && c != lo+1 {
				return false
			}
		}
	}
	return true
}

// loadsAtMost reports whether every rank's load under weights w, summed in
// slot order, is at most hi. It stops at the first rank above.
func loadsAtMost(slots []int, w []float64, s int, hi float64) bool {
	for r := 0; r < len(slots); r += s {
		var l float64
		for _, e := range slots[r : r+s] {
			l += w[e]
		}
		if l > hi {
			return false
		}
	}
	return true
}

// currentAtMost is loadsAtMost for the current plan (every expert's load
// split evenly over its replicas there, as curW holds it), weighing only
// the slots it reads: a current plan above hi is most often so at its
// first ranks, before the table of weights would be built.
func (p *planner) currentAtMost(s int, hi float64) bool {
	for r := 0; r < len(p.cur); r += s {
		var l float64
		for _, e := range p.cur[r : r+s] {
			l += loadOf(p.loads, e) / float64(p.curReps[e])
		}
		if l > hi {
			return false
		}
	}
	return true
}

// maxRankLoad is the busiest rank's load under weights w, summed in slot
// order.
func maxRankLoad(slots []int, w []float64, ranks, s int) float64 {
	var hi float64
	for r := range ranks {
		var l float64
		for _, e := range slots[r*s : (r+1)*s] {
			l += w[e]
		}
		hi = max(hi, l)
	}
	return hi
}
