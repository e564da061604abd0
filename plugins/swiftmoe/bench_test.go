package swiftmoe

import (
	"context"
	"testing"

	"github.com/swiftmoe/swiftmoe/plugins/sdk"
)

// benchRequest is the planner target of DESIGN.md: 64 layers x 256 experts
// x 256 ranks x 4 slots, Zipf(1.0) loads (a different expert order per
// layer), planned from the static layout.
func benchRequest(ranksPerNode int) *sdk.Request {
	topo := sdk.Topology{WorldSize: 256, SlotsPerRank: 4, RanksPerNode: ranksPerNode}
	req := &sdk.Request{Topology: topo}
	cur := sdk.StaticSlots(256, topo)
	for l := range 64 {
		req.Layers = append(req.Layers, sdk.LayerInput{
			Layer: l, NumExperts: 256, Predicted: zipfLoads(256, 1.0, 1<<22, uint64(l+1)), Current: cur,
		})
	}
	return req
}

func benchPlan(b *testing.B, req *sdk.Request) {
	s := New()
	ctx := context.Background()
	var worst float64
	b.ReportAllocs()
	for b.Loop() {
		resp, err := s.Plan(ctx, req)
		if err != nil {
			b.Fatal(err)
		}
		worst = 0
		for i, l := range req.Layers {
			worst = max(worst, balance(resp.Layers[i], l.Predicted, req.Topology))
		}
	}
	b.ReportMetric(worst, "max_over_mean")
}

func BenchmarkSwiftMoEPlan(b *testing.B) { benchPlan(b, benchRequest(0)) }

func BenchmarkSwiftMoEPlanNodes8(b *testing.B) { benchPlan(b, benchRequest(8)) }

// BenchmarkSwiftMoEPlanLayer is one layer on one goroutine: the compute per
// layer, free of scheduling.
func BenchmarkSwiftMoEPlanLayer(b *testing.B) {
	req := benchRequest(0)
	l := req.Layers[0]
	p := new(planner)
	dst := make([]int, req.Topology.TotalSlots())
	for b.Loop() {
		if err := p.planLayer(dst, l.Predicted, l.Current, l.NumExperts, req.Topology); err != nil {
			b.Fatal(err)
		}
	}
}
