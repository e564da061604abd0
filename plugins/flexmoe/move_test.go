package flexmoe

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/swiftmoe/swiftmoe/plugins/sdk"
)

// moveOneDirect is moveOne by trying every candidate slot, a validation and
// a rank-load pass each: the definition the incremental path is held to.
func moveOneDirect(plan []int, loads []float64, t sdk.Topology) bool {
	e := len(loads)
	reps := sdk.Replicas(plan, e)
	hot := hottest(loads, reps)
	donors := (&mover{}).sortedDonors(loads, reps, hot)
	before := slices.Max(sdk.RankLoads(plan, loads, t))
	for _, cold := range donors {
		best, bestMax := -1, before
		for i, x := range plan {
			if x != cold {
				continue
			}
			plan[i] = hot
			if sdk.ValidateSlots(plan, e, t) == nil {
				if m := slices.Max(sdk.RankLoads(plan, loads, t)); m < bestMax {
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

// TestMoveOneMatchesDirect holds the incremental moveOne to trying every
// candidate: the same slot moved, or no move, over chains of moves on
// random valid plans (integer loads, so ties between slots and ranks are
// common), with and without replicas stacked on ranks.
func TestMoveOneMatchesDirect(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 3))
	moved := 0
	for c := range 3000 {
		n, s := 1+rng.IntN(9), 1+rng.IntN(6)
		topo := sdk.Topology{WorldSize: n, SlotsPerRank: s}
		e := 1 + rng.IntN(n*s)
		loads := make([]float64, e)
		for k := range loads {
			if rng.IntN(5) > 0 {
				loads[k] = float64(rng.IntN(60))
			}
		}
		plan := sdk.StaticSlots(e, topo)
		if rng.IntN(2) == 0 { // a random valid plan: shuffle, keep it if it validates
			p := slices.Clone(plan)
			rng.Shuffle(len(p), func(i, j int) { p[i], p[j] = p[j], p[i] })
			if sdk.ValidateSlots(p, e, topo) == nil {
				plan = p
			}
		}
		ref := slices.Clone(plan)
		m := newMover(e, topo)
		for step := range 8 {
			got, want := m.moveOne(plan, loads), moveOneDirect(ref, loads, topo)
			if got != want || !slices.Equal(plan, ref) {
				t.Fatalf("case %d (N=%d S=%d E=%d loads %v) move %d: incremental %v %v, direct %v %v",
					c, n, s, e, loads, step, got, plan, want, ref)
			}
			if !got {
				break
			}
			moved++
		}
	}
	if moved < 1000 {
		t.Fatalf("only %d moves made: the cases do not exercise moving", moved)
	}
}

func TestMoveOneLeavesInvalidPlanAlone(t *testing.T) {
	topo := sdk.Topology{WorldSize: 4, SlotsPerRank: 2}
	plan := []int{0, 0, 1, 2, 3, 1, 2, 3} // two replicas of 0 on rank 0
	before := slices.Clone(plan)
	if newMover(4, topo).moveOne(plan, []float64{700, 100, 100, 100}) || !slices.Equal(plan, before) {
		t.Fatalf("an invalid plan was changed: %v", plan)
	}
}

// BenchmarkRebalanceLarge is one rebalance of a large layer: 256 experts on
// 1024 ranks x 4 slots, Zipf-skewed loads, 16 moves.
func BenchmarkRebalanceLarge(b *testing.B) {
	topo := sdk.Topology{WorldSize: 1024, SlotsPerRank: 4}
	e := 256
	loads := make([]float64, e)
	for k := range loads {
		loads[k] = 1e6 / float64(k+1)
	}
	static := sdk.StaticSlots(e, topo)
	plan := make([]int, len(static))
	for b.Loop() {
		copy(plan, static)
		rebalance(plan, loads, topo, 16)
	}
}
