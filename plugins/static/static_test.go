package static

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/swiftmoe/swiftmoe/plugins/sdk"
)

func TestStaticPlans(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 3))
	for i := range 500 {
		n, s := 1+rng.IntN(16), 1+rng.IntN(6)
		topo := sdk.Topology{WorldSize: n, SlotsPerRank: s}
		e := 1 + rng.IntN(n*s)
		loads := make([]float64, e)
		for k := range loads {
			loads[k] = float64(rng.IntN(1000))
		}
		cur := make([]int, n*s)
		for k := range cur {
			cur[k] = rng.IntN(e)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		resp, err := New().Plan(ctx, &sdk.Request{Topology: topo, Iteration: uint64(i), Layers: []sdk.LayerInput{{NumExperts: e, Predicted: loads, Current: cur}}})
		cancel()
		if err != nil {
			t.Fatalf("case %d: %v", i, err)
		}
		got := resp.Layers[0]
		if err := sdk.ValidateSlots(got, e, topo); err != nil {
			t.Fatalf("case %d N=%d S=%d E=%d: %v", i, n, s, e, err)
		}
		if want := sdk.StaticSlots(e, topo); !slices.Equal(got, want) {
			t.Fatalf("case %d: got %v, want the static layout %v whatever the load", i, got, want)
		}
	}
}

func TestStaticRejectsOptions(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := New().Plan(ctx, &sdk.Request{Topology: sdk.Topology{WorldSize: 1, SlotsPerRank: 1}, Options: map[string]string{"x": "1"}, Layers: []sdk.LayerInput{{NumExperts: 1}}})
	if !errors.Is(err, sdk.ErrBadOption) {
		t.Errorf("got %v, want ErrBadOption", err)
	}
	// It declares no options and no validator of its own, so the SDK's
	// check of its declarations refuses every option at registration.
	if _, ok := any(New()).(sdk.OptionValidator); ok {
		t.Fatal("static has an OptionValidator; this test expects the declared-options default")
	}
	if err := sdk.ValidateDeclared(map[string]string{"x": "1"}, New().Info().Options); !errors.Is(err, sdk.ErrBadOption) {
		t.Errorf("ValidateDeclared: got %v, want ErrBadOption", err)
	}
}
