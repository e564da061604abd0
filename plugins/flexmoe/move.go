package flexmoe

import (
	"slices"

	"github.com/swiftmoe/swiftmoe/plugins/sdk"
)

// rebalance makes up to maxMoves moves on plan in place and returns how many
// it made. It stops early when no move lowers the busiest rank's load.
func rebalance(plan []int, loads []float64, t sdk.Topology, maxMoves int) int {
	moves := 0
	for moves < maxMoves && moveOne(plan, loads, t) {
		moves++
	}
	return moves
}

// moveOne turns one slot of a cold expert into a replica of the hottest
// expert (most load per replica). The donor is the expert with the least
// load per replica that keeps at least one replica and has a slot whose
// move gives a valid plan with a lighter busiest rank; of its slots, the one
// leaving the busiest rank lightest is taken (ties: lowest slot).
func moveOne(plan []int, loads []float64, t sdk.Topology) bool {
	e := len(loads)
	reps := sdk.Replicas(plan, e)
	perReplica := func(x int) float64 { return loads[x] / float64(reps[x]) }
	hot := 0
	for x := 1; x < e; x++ {
		if perReplica(x) > perReplica(hot) {
			hot = x
		}
	}
	var donors []int
	for x := range e {
		if x != hot && reps[x] >= 2 {
			donors = append(donors, x)
		}
	}
	slices.SortStableFunc(donors, func(a, b int) int {
		switch pa, pb := perReplica(a), perReplica(b); {
		case pa < pb:
			return -1
		case pa > pb:
			return 1
		}
		return 0
	})
	before := maxLoad(plan, loads, t)
	for _, cold := range donors {
		best, bestMax := -1, before
		for i, x := range plan {
			if x != cold {
				continue
			}
			plan[i] = hot
			if sdk.ValidateSlots(plan, e, t) == nil {
				if m := maxLoad(plan, loads, t); m < bestMax {
					best, bestMax = i, m
				}
			}
			plan[i] = cold
		}
		if best >= 0 {
			plan[best] = hot
			return true
		}
	}
	return false
}

func maxLoad(plan []int, loads []float64, t sdk.Topology) float64 {
	var hi float64
	for _, l := range sdk.RankLoads(plan, loads, t) {
		hi = max(hi, l)
	}
	return hi
}
