package swiftmoe

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/swiftmoe/swiftmoe/plugins/sdk"
)

var (
	spreadOpts = map[string]string{optNodePolicy: "spread"}
	packOpts   = map[string]string{optNodePolicy: "pack"}
)

// TestNodeSpread checks node_policy=spread (the default): every expert with
// at least as many replicas as nodes has a replica on every node, every
// expert's per-node counts differ by at most one, and ranks stay balanced.
func TestNodeSpread(t *testing.T) {
	cases := []struct {
		topo  sdk.Topology
		e     int
		zipf  float64
		limit float64
	}{
		{sdk.Topology{WorldSize: 16, SlotsPerRank: 4, RanksPerNode: 4}, 32, 0.6, 1.05},
		{sdk.Topology{WorldSize: 16, SlotsPerRank: 4, RanksPerNode: 8}, 8, 1.0, 1.05},
		{sdk.Topology{WorldSize: 16, SlotsPerRank: 4, RanksPerNode: 8}, 16, 1.0, 1.05},
		{sdk.Topology{WorldSize: 24, SlotsPerRank: 2, RanksPerNode: 4}, 20, 1.2, 1.10},
		{sdk.Topology{WorldSize: 64, SlotsPerRank: 4, RanksPerNode: 8}, 64, 1.0, 1.05},
	}
	rng := rand.New(rand.NewPCG(9, 9))
	for _, tc := range cases {
		name := fmt.Sprintf("N=%d S=%d R=%d E=%d Zipf(%g)", tc.topo.WorldSize, tc.topo.SlotsPerRank, tc.topo.RanksPerNode, tc.e, tc.zipf)
		t.Run(name, func(t *testing.T) {
			nodes := tc.topo.WorldSize / tc.topo.RanksPerNode
			var worst float64
			full := 0
			for trial := range 30 {
				loads := zipfLoads(tc.e, tc.zipf, 1<<16, rng.Uint64())
				for _, opts := range []map[string]string{nil, spreadOpts} {
					got := planWith(t, New(), tc.topo, opts, loads, nil)
					tn := fmt.Sprintf("trial %d options %v", trial, opts)
					checkPlan(t, tn, got, loads, tc.topo)
					checkSpread(t, tn, got, tc.e, tc.topo)
					for x, row := range nodeCounts(got, tc.e, tc.topo) {
						reps := 0
						for _, c := range row {
							reps += c
						}
						if reps < nodes {
							continue
						}
						full++
						if slices.Contains(row, 0) {
							t.Fatalf("%s: expert %d has %d >= %d replicas but node counts %v", tn, x, reps, nodes, row)
						}
					}
					worst = max(worst, balance(got, loads, tc.topo))
				}
			}
			if full == 0 {
				t.Fatalf("no expert had as many replicas as nodes: the case tests nothing")
			}
			t.Logf("spread: worst max_over_mean %.4f", worst)
			if worst > tc.limit {
				t.Errorf("spread worst max_over_mean %.4f, want <= %.2f", worst, tc.limit)
			}
		})
	}
}

// TestNodeLocalityPack checks node_policy=pack: every expert whose
// replicas fit in a node stays in one node.
func TestNodeLocalityPack(t *testing.T) {
	// 4 nodes of 4 ranks, 4 slots: every expert with <= 4 replicas fits in
	// a node and must stay there.
	topo := sdk.Topology{WorldSize: 16, SlotsPerRank: 4, RanksPerNode: 4}
	rng := rand.New(rand.NewPCG(9, 9))
	var worst float64
	for trial := range 50 {
		loads := zipfLoads(32, 0.6, 1<<16, rng.Uint64())
		got := planWith(t, New(), topo, packOpts, loads, nil)
		checkPlan(t, "locality", got, loads, topo)
		for e, row := range nodeCounts(got, len(loads), topo) {
			reps, used := 0, 0
			for _, c := range row {
				reps += c
				if c > 0 {
					used++
				}
			}
			if reps <= topo.RanksPerNode && used != 1 {
				t.Errorf("trial %d: expert %d has %d replicas (fits a node) spread over %d nodes", trial, e, reps, used)
			}
		}
		worst = max(worst, balance(got, loads, topo))
	}
	t.Logf("node_policy=pack, 4x4 ranks, 4 slots, 32 experts Zipf(0.6): worst max_over_mean %.4f", worst)
	if worst > 1.10 {
		t.Errorf("pack worst max_over_mean %.4f, want <= 1.10", worst)
	}
}

// TestNodePolicyKeepCurrent checks that the current plan is kept only when
// it follows the policy: a packed plan is kept under pack, and replaced by a
// spread one under spread (even though it balances ranks as well).
func TestNodePolicyKeepCurrent(t *testing.T) {
	topo := sdk.Topology{WorldSize: 16, SlotsPerRank: 4, RanksPerNode: 8}
	loads := zipfLoads(8, 1.0, 1<<16, 5)
	packed := planWith(t, New(), topo, packOpts, loads, nil)
	if again := planWith(t, New(), topo, packOpts, loads, packed); !slices.Equal(again, packed) {
		t.Fatalf("pack replanned its own plan under the same loads: %v then %v", packed, again)
	}
	got := planWith(t, New(), topo, spreadOpts, loads, packed)
	checkSpread(t, "spread from a packed plan", got, len(loads), topo)
	if slices.Equal(got, packed) {
		t.Fatalf("spread kept the packed plan %v", packed)
	}
}

func TestNodePolicyOption(t *testing.T) {
	info := New().Info()
	i := slices.IndexFunc(info.Options, func(o sdk.Option) bool { return o.Name == "node_policy" })
	if i < 0 {
		t.Fatalf("Info().Options = %v, want node_policy declared", info.Options)
	}
	if o := info.Options[i]; o.Default != "spread" || !strings.Contains(o.Description, "pack") {
		t.Errorf("node_policy spec = %+v, want default spread and a description naming pack", o)
	}
	topo := sdk.Topology{WorldSize: 4, SlotsPerRank: 2, RanksPerNode: 2}
	for _, v := range []string{"", "Spread", " pack", "packed", "1"} {
		_, err := planReq(t, New(), &sdk.Request{
			Topology: topo,
			Options:  map[string]string{"node_policy": v},
			Layers:   []sdk.LayerInput{{NumExperts: 3, Predicted: []float64{1, 2, 3}}},
		})
		if !errors.Is(err, sdk.ErrBadOption) {
			t.Fatalf("node_policy=%q: got error %v, want %v", v, err, sdk.ErrBadOption)
		}
		for _, want := range []string{"node_policy", "spread", "pack"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("node_policy=%q: error %q does not name %q", v, err, want)
			}
		}
	}
}

// TestNodeReplicated checks the replicated layout of node_policy=spread:
// when every expert fits on one node's slots and copying one node's plan to
// every node balances about as well, every node holds the same replicas (no
// token needs to leave its node). On the recorded trace (8 experts, 2 nodes
// of 8 ranks x 4 slots) that is every layer of every sampled iteration.
func TestNodeReplicated(t *testing.T) {
	topo := sdk.Topology{WorldSize: 16, SlotsPerRank: 4, RanksPerNode: 8}
	s := New()
	var worst float64
	for i, it := range readTrace(t, "cheaders-e8-top2-aux0.jsonl") {
		if i%10 != 0 {
			continue
		}
		for l, loads := range it.Loads {
			got := planOne(t, s, topo, loads, nil)
			name := fmt.Sprintf("iteration %d layer %d", it.Iteration, l)
			checkPlan(t, name, got, loads, topo)
			for x, row := range nodeCounts(got, len(loads), topo) {
				if row[0] != row[1] {
					t.Fatalf("%s: expert %d has node counts %v, want the same on every node", name, x, row)
				}
			}
			worst = max(worst, balance(got, loads, topo))
		}
	}
	// One node's 8 ranks balance a little less finely than all 16, and the
	// copy may be up to replicateTolerance busier than the spread plan.
	t.Logf("replicated layout on the trace: worst max_over_mean %.4f", worst)
	if worst > 1.06 {
		t.Errorf("worst max_over_mean %.4f, want <= 1.06", worst)
	}
}

// TestNodeReplicatedFallsBack checks that spread keeps the uneven spread
// plan when copying one node's plan would unbalance the ranks: with as many
// experts as a node has slots, a copy holds one replica of each expert per
// node (the static layout), far off balance under skewed loads.
func TestNodeReplicatedFallsBack(t *testing.T) {
	topo := sdk.Topology{WorldSize: 16, SlotsPerRank: 4, RanksPerNode: 8}
	loads := zipfLoads(32, 1.2, 1<<20, 3)
	got := planOne(t, New(), topo, loads, nil)
	checkPlan(t, "fallback", got, loads, topo)
	checkSpread(t, "fallback", got, len(loads), topo)
	b := balance(got, loads, topo)
	static := balance(sdk.StaticSlots(32, topo), loads, topo)
	t.Logf("E=32 on 2 nodes of 8x4 slots, Zipf(1.2): max_over_mean %.4f (copied one-per-node layout: %.4f)", b, static)
	if b > 1.05 || static < 1.5 {
		t.Errorf("max_over_mean %.4f, want <= 1.05 (the copied layout gives %.4f, want >= 1.5)", b, static)
	}
}
