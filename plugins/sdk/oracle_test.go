package sdk

import (
	"math/rand/v2"
	"slices"
	"testing"

	pb "github.com/swiftmoe/swiftmoe/bridge/gen/swiftmoe/v1"
)

// rankLoadsOracle is RankLoads as first written: a division per slot.
func rankLoadsOracle(slots []int, loads []float64, t Topology) []float64 {
	replicas := Replicas(slots, len(loads))
	out := make([]float64, t.WorldSize)
	for i, e := range slots {
		if e < 0 || e >= len(loads) || replicas[e] == 0 {
			continue
		}
		out[i/t.SlotsPerRank] += loads[e] / float64(replicas[e])
	}
	return out
}

func TestRankLoadsMatchesPerSlotDivision(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for trial := range 200 {
		topo := Topology{WorldSize: 1 + rng.IntN(16), SlotsPerRank: 1 + rng.IntN(6)}
		experts := 1 + rng.IntN(topo.TotalSlots())
		slots := StaticSlots(experts, topo)
		rng.Shuffle(len(slots), func(i, j int) { slots[i], slots[j] = slots[j], slots[i] })
		if trial%5 == 0 {
			slots[rng.IntN(len(slots))] = -1 // out-of-range ids are skipped by both
		}
		loads := make([]float64, experts)
		for e := range loads {
			loads[e] = rng.Float64() * 1e6
		}
		got, want := RankLoads(slots, loads, topo), rankLoadsOracle(slots, loads, topo)
		if !slices.Equal(got, want) {
			t.Fatalf("trial %d (%+v, E=%d): got %v, want %v", trial, topo, experts, got, want)
		}
	}
	if got := RankLoads([]int{0}, []float64{1}, Topology{WorldSize: 2}); !slices.Equal(got, []float64{0, 0}) {
		t.Errorf("no slots per rank: got %v, want [0 0]", got)
	}
}

// The conversions cut every layer's ids from one shared array; appending to
// one layer must not overwrite the next.
func TestConvertedLayersDoNotShareCapacity(t *testing.T) {
	topo := Topology{WorldSize: 2, SlotsPerRank: 2}
	req := &Request{Topology: topo, Layers: []LayerInput{
		{Layer: 0, NumExperts: 2, Current: []int{0, 1, 0, 1}},
		{Layer: 1, NumExperts: 2, Current: []int{1, 0, 1, 0}},
	}}
	wire := RequestToProto(req)
	_ = append(wire.Layers[0].CurrentSlots, 9)
	if got := wire.Layers[1].GetCurrentSlots(); !slices.Equal(got, []uint32{1, 0, 1, 0}) {
		t.Errorf("RequestToProto layer 1 after append to layer 0: got %v, want [1 0 1 0]", got)
	}
	back := RequestFromProto(wire)
	_ = append(back.Layers[0].Current, 9)
	if got := back.Layers[1].Current; !slices.Equal(got, []int{1, 0, 1, 0}) {
		t.Errorf("RequestFromProto layer 1 after append to layer 0: got %v, want [1 0 1 0]", got)
	}
	resp := ResponseToProto(&Response{Layers: [][]int{{0, 1}, {1, 0}}})
	_ = append(resp.Layers[0].Slots, 9)
	if got := resp.Layers[1].GetSlots(); !slices.Equal(got, []uint32{1, 0}) {
		t.Errorf("ResponseToProto layer 1 after append to layer 0: got %v, want [1 0]", got)
	}
	out := ResponseFromProto(&pb.StrategyPlanResponse{Layers: []*pb.StrategyLayerOutput{{Slots: []uint32{0, 1}}, {Slots: []uint32{1, 0}}}})
	_ = append(out.Layers[0], 9)
	if got := out.Layers[1]; !slices.Equal(got, []int{1, 0}) {
		t.Errorf("ResponseFromProto layer 1 after append to layer 0: got %v, want [1 0]", got)
	}
}
