package builtin

import (
	"context"
	"testing"
	"time"

	"github.com/swiftmoe/swiftmoe/plugins/sdk"
)

func TestEveryBuiltinPlansValidly(t *testing.T) {
	topo := sdk.Topology{WorldSize: 16, SlotsPerRank: 8, RanksPerNode: 4}
	loads := make([]float64, 64)
	for k := range loads {
		loads[k] = 1e6 / float64(k+1)
	}
	req := &sdk.Request{Topology: topo, Layers: []sdk.LayerInput{
		{Layer: 0, NumExperts: 64, Predicted: loads},
		{Layer: 1, NumExperts: 64, Predicted: loads, Current: sdk.StaticSlots(64, topo)},
	}}
	if len(Names()) != 3 {
		t.Fatalf("Names() = %v, want three strategies", Names())
	}
	for _, name := range Names() {
		s, ok := New(name)
		if !ok {
			t.Fatalf("New(%q) not found", name)
		}
		if got := s.Info().Name; got != name {
			t.Errorf("New(%q).Info().Name = %q, want %q", name, got, name)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		resp, err := s.Plan(ctx, req)
		cancel()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(resp.Layers) != len(req.Layers) {
			t.Fatalf("%s: %d layers, want %d", name, len(resp.Layers), len(req.Layers))
		}
		for i, l := range resp.Layers {
			if err := sdk.ValidateSlots(l, 64, topo); err != nil {
				t.Errorf("%s layer %d: %v", name, i, err)
			}
			t.Logf("%s layer %d: max_over_mean %.4f", name, i, sdk.MaxOverMean(sdk.RankLoads(l, loads, topo)))
		}
	}
	if _, ok := New("nope"); ok {
		t.Error(`New("nope") found a strategy, want none`)
	}
}
