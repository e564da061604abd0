package flexmoe

import (
	"slices"

	"github.com/swiftmoe/swiftmoe/plugins/sdk"
)

// rebalance makes up to maxMoves moves on plan in place and returns how many
// it made. It stops early when no move lowers the busiest rank's load.
func rebalance(plan []int, loads []float64, t sdk.Topology, maxMoves int) int {
	m := newMover(len(loads), t)
	moves := 0
	for moves < maxMoves && m.moveOne(plan, loads) {
		moves++
	}
	return moves
}

// mover holds the scratch of moveOne, sized once per layer.
type mover struct {
	t                  sdk.Topology
	share, base        []float64 // per expert; per rank
	coldOn             []int     // replicas of the donor on each rank
	donors             []int
	scratchE, scratchR []float64
}

func newMover(numExperts int, t sdk.Topology) *mover {
	return &mover{
		t:        t,
		share:    make([]float64, numExperts),
		base:     make([]float64, t.WorldSize),
		coldOn:   make([]int, t.WorldSize),
		scratchE: make([]float64, numExperts),
		scratchR: make([]float64, t.WorldSize),
	}
}

// moveOne turns one slot of a cold expert into a replica of the hottest
// expert (most load per replica). The donor is the expert with the least
// load per replica that keeps at least one replica and has a slot whose
// move gives a valid plan with a lighter busiest rank; of its slots, the one
// leaving the busiest rank lightest is taken (ties: lowest slot).
//
// A move changes two replica counts, so every rank holding either expert
// changes load; but for one donor, every candidate slot leads to the same
// counts, and the candidates differ only in the rank of the moved slot. So
// each donor costs one pass over the plan (the rank loads under the new
// counts, summed as sdk.RankLoads sums them) plus each candidate's own rank,
// instead of a validation and a rank-load pass per candidate. That needs
// the plan valid before the move (Plan checks the current plan; every move
// keeps it valid); an invalid one is left alone.
func (m *mover) moveOne(plan []int, loads []float64) bool {
	t := m.t
	e := len(loads)
	if sdk.ValidateSlots(plan, e, t) != nil {
		return false
	}
	reps := sdk.Replicas(plan, e)
	hot := hottest(loads, reps)
	donors := m.sortedDonors(loads, reps, hot)
	before := m.maxLoad(plan, loads)
	s, n := t.SlotsPerRank, t.WorldSize
	for _, cold := range donors {
		// Replica counts after the move, and each replica's share of its
		// expert's load, as sdk.RankLoadsInto computes it.
		reps[cold]--
		reps[hot]++
		for x, c := range reps {
			m.share[x] = 0
			if c > 0 {
				m.share[x] = loads[x] / float64(c)
			}
		}
		limCold := (reps[cold] + n - 1) / n
		limHot := (reps[hot] + n - 1) / n
		reps[cold]++
		reps[hot]--
		// Rank loads of the unmoved plan under the new shares, and the two
		// largest (a candidate's own rank is replaced by its moved sum).
		clear(m.base)
		clear(m.coldOn)
		for i, x := range plan {
			r := i / s
			m.base[r] += m.share[x]
			if x == cold {
				m.coldOn[r]++
			}
		}
		top1, top2, at1 := topTwo(m.base)
		// With fewer replicas, the donor's per-rank limit may drop below
		// what some rank holds; only the moved slot's rank loses one.
		over := 0
		overAt := -1
		for r, c := range m.coldOn {
			if c > limCold {
				over++
				overAt = r
			}
		}
		best, bestMax := -1, before
		for i, x := range plan {
			if x != cold {
				continue
			}
			r := i / s
			if over > 1 || (over == 1 && (overAt != r || m.coldOn[r]-1 > limCold)) {
				continue
			}
			var hotOn int
			var own float64
			for j := r * s; j < (r+1)*s; j++ {
				y := plan[j]
				if j == i {
					y = hot
				}
				if y == hot {
					hotOn++
				}
				own += m.share[y]
			}
			if hotOn > limHot {
				continue
			}
			rest := top1
			if r == at1 {
				rest = top2
			}
			if mx := max(rest, own); mx < bestMax {
				best, bestMax = i, mx
			}
		}
		if best >= 0 {
			plan[best] = hot
			return true
		}
	}
	return false
}

// hottest is the expert with the most load per replica (ties: lowest id).
func hottest(loads []float64, reps []int) int {
	hot := 0
	for x := 1; x < len(loads); x++ {
		if loads[x]/float64(reps[x]) > loads[hot]/float64(reps[hot]) {
			hot = x
		}
	}
	return hot
}

// sortedDonors lists the experts other than hot with two replicas or more,
// least load per replica first (stable: ties by id).
func (m *mover) sortedDonors(loads []float64, reps []int, hot int) []int {
	donors := m.donors[:0]
	for x := range loads {
		if x != hot && reps[x] >= 2 {
			donors = append(donors, x)
		}
	}
	perReplica := func(x int) float64 { return loads[x] / float64(reps[x]) }
	slices.SortStableFunc(donors, func(a, b int) int {
		switch pa, pb := perReplica(a), perReplica(b); {
		case pa < pb:
			return -1
		case pa > pb:
			return 1
		}
		return 0
	})
	m.donors = donors
	return donors
}

// maxLoad is the busiest rank's load of plan (sdk.RankLoads).
func (m *mover) maxLoad(plan []int, loads []float64) float64 {
	clear(m.scratchR)
	sdk.RankLoadsInto(m.scratchR, m.scratchE, plan, loads, m.t)
	return slices.Max(m.scratchR)
}

// topTwo returns the largest value of v, the largest of the others, and the
// index of the first.
func topTwo(v []float64) (top1, top2 float64, at1 int) {
	at1 = -1
	for i, x := range v {
		switch {
		case at1 < 0 || x > top1:
			top2, top1, at1 = top1, x, i
		case x > top2:
			top2 = x
		}
	}
	return top1, top2, at1
}
