package swiftmoe

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/swiftmoe/swiftmoe/plugins/sdk"
)

// noisyUniform is E loads of about 1000 each, every one within +-frac.
func noisyUniform(rng *rand.Rand, e int, frac float64) []float64 {
	loads := make([]float64, e)
	for i := range loads {
		loads[i] = 1000 * (1 + frac*(2*rng.Float64()-1))
	}
	return loads
}

// TestKeepMargin: with keep_margin the current plan stays while the loads
// barely move (uniform routing with 1% noise, where the plan without the
// margin changes), under both objectives, and a real shift still replaces it.
func TestKeepMargin(t *testing.T) {
	topo := sdk.Topology{WorldSize: 16, SlotsPerRank: 4, RanksPerNode: 8}
	for _, step := range []bool{false, true} {
		plan := func(loads []float64, cur []int, margin string) []int {
			opts := map[string]string{optKeepMargin: margin}
			if !step {
				return planWith(t, New(), topo, opts, loads, cur)
			}
			resp, err := planReq(t, New(), stepReq(topo, h200(50), loads, cur, opts))
			if err != nil {
				t.Fatal(err)
			}
			checkPlan(t, "keep_margin", resp.Layers[0], loads, topo)
			return resp.Layers[0]
		}
		for _, e := range []int{32, 48} {
			rng := rand.New(rand.NewPCG(uint64(e), 7))
			kept := plan(noisyUniform(rng, e, 0.01), nil, "0.03")
			plain := slices.Clone(kept)
			changes := 0
			for it := range 20 {
				loads := noisyUniform(rng, e, 0.01)
				if got := plan(loads, kept, "0.03"); !slices.Equal(got, kept) {
					t.Fatalf("step=%v E=%d iteration %d: keep_margin=0.03 replaced the plan under 1%% noise", step, e, it)
				}
				got := plan(loads, plain, "0")
				if !slices.Equal(got, plain) {
					changes++
				}
				plain = got
			}
			if changes == 0 {
				t.Errorf("step=%v E=%d: without the margin the plan never changed under the noise: the test shows nothing", step, e)
			}
			// One expert turns hot: the margin does not hold the plan.
			hot := noisyUniform(rng, e, 0.01)
			hot[3] *= 8
			if got := plan(hot, kept, "0.03"); slices.Equal(got, kept) {
				t.Errorf("step=%v E=%d: keep_margin=0.03 kept the plan when expert 3 took 8 times its load", step, e)
			}
		}
	}
}
