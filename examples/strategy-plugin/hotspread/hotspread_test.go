package hotspread

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/swiftmoe/swiftmoe/plugins/sdk"
)

func TestPlansAreValid(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 1000 {
		n, s := 1+rng.IntN(10), 1+rng.IntN(5)
		topo := sdk.Topology{WorldSize: n, SlotsPerRank: s}
		e := 1 + rng.IntN(n*s)
		loads := make([]float64, e)
		for k := range loads {
			loads[k] = float64(rng.IntN(100))
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		resp, err := New().Plan(ctx, &sdk.Request{Topology: topo, Layers: []sdk.LayerInput{{NumExperts: e, Predicted: loads}}})
		cancel()
		if err != nil {
			t.Fatalf("case %d: %v", i, err)
		}
		if err := sdk.ValidateSlots(resp.Layers[0], e, topo); err != nil {
			t.Fatalf("case %d N=%d S=%d E=%d: %v", i, n, s, e, err)
		}
	}
}
