package planner

import (
	pb "github.com/swiftmoe/swiftmoe/bridge/gen/swiftmoe/v1"
	"github.com/swiftmoe/swiftmoe/plugins/sdk"
)

// describePlan builds a Plan's layers from per-layer placements under
// predicted loads: replicas per expert, the per-rank load with each expert's
// load split evenly across its replicas, and max_over_mean. The layers'
// messages, slots, replica counts and rank loads share one allocation each,
// so a plan of many layers costs a handful of allocations.
func describePlan(slots [][]int, predicted [][]float64, t sdk.Topology) []*pb.LayerPlan {
	var nSlots, nExperts, maxExperts int
	for l := range slots {
		nSlots += len(slots[l])
		nExperts += len(predicted[l])
		maxExperts = max(maxExperts, len(predicted[l]))
	}
	out := make([]*pb.LayerPlan, len(slots))
	msgs := make([]pb.LayerPlan, len(slots))
	ids := make([]uint32, nSlots)
	reps := make([]uint32, nExperts)
	ranks := make([]float64, len(slots)*t.WorldSize)
	share := make([]float64, maxExperts)
	for l, s := range slots {
		lid := ids[:len(s):len(s)]
		ids = ids[len(s):]
		lrep := reps[:len(predicted[l]):len(predicted[l])]
		reps = reps[len(predicted[l]):]
		for i, e := range s {
			lid[i] = uint32(e)
			if e >= 0 && e < len(lrep) {
				lrep[e]++
			}
		}
		rank := ranks[l*t.WorldSize : (l+1)*t.WorldSize : (l+1)*t.WorldSize]
		sdk.RankLoadsInto(rank, share[:len(predicted[l])], s, predicted[l], t)
		m := &msgs[l]
		m.Slots, m.Replicas, m.RankLoad, m.MaxOverMean = lid, lrep, rank, sdk.MaxOverMean(rank)
		out[l] = m
	}
	return out
}

// planMaxOverMean is the maximum over layers of the layer max_over_mean.
func planMaxOverMean(layers []*pb.LayerPlan) float64 {
	var hi float64
	for _, l := range layers {
		if l.GetMaxOverMean() > hi {
			hi = l.GetMaxOverMean()
		}
	}
	return hi
}
