package flexmoe

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/swiftmoe/swiftmoe/plugins/sdk"
)

func plan(t *testing.T, req *sdk.Request) (*sdk.Response, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return New().Plan(ctx, req)
}

func changed(a, b []int) int {
	n := 0
	for i := range a {
		if a[i] != b[i] {
			n++
		}
	}
	return n
}

// skewed: 4 ranks x 2 slots, 4 experts, static plan; expert 0 is hot.
var (
	skewTopo  = sdk.Topology{WorldSize: 4, SlotsPerRank: 2}
	skewLoads = []float64{700, 100, 100, 100}
)

func skewReq(opts map[string]string, iteration uint64) *sdk.Request {
	return &sdk.Request{
		Topology: skewTopo, Iteration: iteration, Options: opts,
		Layers:               []sdk.LayerInput{{Layer: 0, NumExperts: 4, Predicted: skewLoads, Current: sdk.StaticSlots(4, skewTopo)}},
		ExpertWeightBytes:    []uint64{1000},
		ExpertOptimizerBytes: []uint64{6000},
	}
}

func TestThresholdTriggersExactly(t *testing.T) {
	static := sdk.StaticSlots(4, skewTopo)
	mom := sdk.MaxOverMean(sdk.RankLoads(static, skewLoads, skewTopo))
	cases := []struct {
		threshold float64
		wantMove  bool
	}{
		{mom + 1e-9, false},
		{mom, false},
		{mom - 1e-9, true},
		{1, true},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprint(tc.threshold), func(t *testing.T) {
			resp, err := plan(t, skewReq(map[string]string{OptThreshold: fmt.Sprint(tc.threshold)}, 0))
			if err != nil {
				t.Fatal(err)
			}
			moved := changed(static, resp.Layers[0]) > 0
			if moved != tc.wantMove {
				t.Errorf("imbalance %.6f, threshold %.9f: moved = %v, want %v", mom, tc.threshold, moved, tc.wantMove)
			}
			if moved {
				after := sdk.MaxOverMean(sdk.RankLoads(resp.Layers[0], skewLoads, skewTopo))
				if after >= mom {
					t.Errorf("max_over_mean after moves %.4f, want below %.4f", after, mom)
				}
			}
		})
	}
}

func TestMigratedBytes(t *testing.T) {
	static := sdk.StaticSlots(4, skewTopo)
	cases := []struct {
		name       string
		w, o       []uint64
		layer      int
		perMove    uint64
		wantErrSub string
	}{
		{"one value", []uint64{1000}, []uint64{6000}, 0, 7000, ""},
		{"per layer", []uint64{1, 2, 3}, []uint64{10, 20, 30}, 2, 33, ""},
		{"unknown", nil, nil, 0, 0, ""},
		{"too short", []uint64{1, 2}, []uint64{1}, 5, 0, "expert_weight_bytes"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req := skewReq(map[string]string{OptMaxMoves: "2"}, 0)
			req.Layers[0].Layer = tc.layer
			req.ExpertWeightBytes, req.ExpertOptimizerBytes = tc.w, tc.o
			resp, err := plan(t, req)
			if tc.wantErrSub != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErrSub) {
					t.Fatalf("got error %v, want one naming %s", err, tc.wantErrSub)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			moves := changed(static, resp.Layers[0])
			if moves == 0 || moves > 2 {
				t.Fatalf("changed %d slots, want 1..2", moves)
			}
			if want := uint64(moves) * tc.perMove; resp.MigratedBytes != want {
				t.Errorf("migrated_bytes = %d, want %d (%d moves)", resp.MigratedBytes, want, moves)
			}
		})
	}
}

func TestIntervalRespected(t *testing.T) {
	static := sdk.StaticSlots(4, skewTopo)
	for _, tc := range []struct {
		iteration uint64
		wantMove  bool
	}{{3, false}, {4, true}, {0, true}, {5, false}} {
		resp, err := plan(t, skewReq(map[string]string{OptInterval: "2"}, tc.iteration))
		if err != nil {
			t.Fatal(err)
		}
		if moved := changed(static, resp.Layers[0]) > 0; moved != tc.wantMove {
			t.Errorf("iteration %d, interval 2: moved = %v, want %v", tc.iteration, moved, tc.wantMove)
		}
		if !tc.wantMove && resp.MigratedBytes != 0 {
			t.Errorf("iteration %d: migrated_bytes = %d without moves, want 0", tc.iteration, resp.MigratedBytes)
		}
	}
}

func TestBadOptions(t *testing.T) {
	for _, tc := range []struct {
		opts map[string]string
		name string
	}{
		{map[string]string{OptThreshold: "0.5"}, OptThreshold},
		{map[string]string{OptThreshold: "NaN"}, OptThreshold},
		{map[string]string{OptThreshold: "x"}, OptThreshold},
		{map[string]string{OptMaxMoves: "0"}, OptMaxMoves},
		{map[string]string{OptMaxMoves: "1.5"}, OptMaxMoves},
		{map[string]string{OptInterval: "-1"}, OptInterval},
		{map[string]string{OptInterval: "0"}, OptInterval},
		{map[string]string{"treshold": "1.1"}, "treshold"},
	} {
		_, err := plan(t, skewReq(tc.opts, 0))
		if !errors.Is(err, sdk.ErrBadOption) || !strings.Contains(err.Error(), tc.name) {
			t.Errorf("options %v: got error %v, want ErrBadOption naming %q", tc.opts, err, tc.name)
		}
		// Registration refuses what Plan would refuse, before any plan.
		if err := New().ValidateOptions(tc.opts); !errors.Is(err, sdk.ErrBadOption) || !strings.Contains(err.Error(), tc.name) {
			t.Errorf("ValidateOptions(%v): got %v, want ErrBadOption naming %q", tc.opts, err, tc.name)
		}
	}
	good := map[string]string{OptThreshold: "1", OptMaxMoves: "2", OptInterval: "5"}
	if err := New().ValidateOptions(good); err != nil {
		t.Errorf("ValidateOptions(%v) = %v, want nil", good, err)
	}
	if _, err := plan(t, skewReq(good, 0)); err != nil {
		t.Errorf("options ValidateOptions accepts failed Plan: %v", err)
	}
	// The declarations agree with the checks: ValidateDeclared over Info's
	// options refuses the same values.
	for _, bad := range []map[string]string{{OptThreshold: "NaN"}, {OptInterval: "0"}, {OptMaxMoves: "0"}} {
		if err := sdk.ValidateDeclared(bad, New().Info().Options); err == nil {
			t.Errorf("the declared options accept %v", bad)
		}
	}
	if err := sdk.ValidateDeclared(good, New().Info().Options); err != nil {
		t.Errorf("the declared options refuse %v: %v", good, err)
	}
}

func TestInvalidCurrentRejected(t *testing.T) {
	req := skewReq(nil, 0)
	req.Layers[0].Current = []int{0, 0, 1, 2, 3, 1, 2, 3} // two replicas of 0 on rank 0
	if _, err := plan(t, req); !errors.Is(err, sdk.ErrInvalidPlan) {
		t.Errorf("got error %v, want ErrInvalidPlan", err)
	}
}

func TestRandomInvariants(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 5))
	for i := range 1500 {
		n, s := 1+rng.IntN(12), 1+rng.IntN(5)
		topo := sdk.Topology{WorldSize: n, SlotsPerRank: s}
		e := 1 + rng.IntN(n*s)
		loads := make([]float64, e)
		for k := range loads {
			if rng.IntN(4) > 0 {
				loads[k] = float64(rng.IntN(5000))
			}
		}
		maxMoves := 1 + rng.IntN(6)
		var cur []int
		if rng.IntN(2) == 0 {
			cur = sdk.StaticSlots(e, topo)
		}
		req := &sdk.Request{
			Topology: topo, Options: map[string]string{OptThreshold: "1.0", OptMaxMoves: fmt.Sprint(maxMoves)},
			Layers: []sdk.LayerInput{{NumExperts: e, Predicted: loads, Current: cur}},
		}
		resp, err := plan(t, req)
		if err != nil {
			t.Fatalf("case %d: %v", i, err)
		}
		got := resp.Layers[0]
		if err := sdk.ValidateSlots(got, e, topo); err != nil {
			t.Fatalf("case %d N=%d S=%d E=%d: invalid plan %v: %v", i, n, s, e, got, err)
		}
		if c := changed(sdk.StaticSlots(e, topo), got); c > maxMoves {
			t.Fatalf("case %d: changed %d slots, want <= max_moves %d", i, c, maxMoves)
		}
		again, err := plan(t, req)
		if err != nil || !slices.Equal(again.Layers[0], got) {
			t.Fatalf("case %d: not deterministic: %v then %v (%v)", i, got, again.Layers, err)
		}
	}
}
