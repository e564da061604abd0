package planner

import (
	pb "github.com/swiftmoe/swiftmoe/bridge/gen/swiftmoe/v1"
	"github.com/swiftmoe/swiftmoe/plugins/sdk"
)

// layerPlan describes one layer's placement under predicted loads: replicas
// per expert, the per-rank load with each expert's load split evenly across
// its replicas, and max_over_mean.
func layerPlan(slots []int, predicted []float64, t sdk.Topology) *pb.LayerPlan {
	replicas := sdk.Replicas(slots, len(predicted))
	rank := sdk.RankLoads(slots, predicted, t)
	return &pb.LayerPlan{
		Slots:       sdk.IntsToProto(slots),
		Replicas:    sdk.IntsToProto(replicas),
		RankLoad:    rank,
		MaxOverMean: sdk.MaxOverMean(rank),
	}
}

// describePlan builds a Plan message from per-layer placements.
func describePlan(slots [][]int, predicted [][]float64, t sdk.Topology) []*pb.LayerPlan {
	out := make([]*pb.LayerPlan, len(slots))
	for l := range slots {
		out[l] = layerPlan(slots[l], predicted[l], t)
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
