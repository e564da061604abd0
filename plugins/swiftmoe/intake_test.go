package swiftmoe

import (
	"cmp"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/swiftmoe/swiftmoe/plugins/sdk"
)

// fixedHotLayer is the layer of TestStepObjectiveHomesColdExpertsTwice:
// E=64 on 32 H200s in 4 nodes of 8, 6 slots, 5 hot experts taking half the
// tokens, 12.5 GB/s between nodes.
func fixedHotLayer() (sdk.Topology, costModel, []float64) {
	topo := sdk.Topology{WorldSize: 32, SlotsPerRank: 6, RanksPerNode: 8}
	const e, total = 64, 32 * 4096 * 8
	loads := make([]float64, e)
	for x := range e {
		if x%13 == 0 {
			loads[x] = total / 2 / 5
		} else {
			loads[x] = total / 2 / 59
		}
	}
	return topo, h200(12.5), loads
}

// TestIntakeDealSpreadsWhatNodesTakeIn: on the fixed-hot layer the plan for
// step time takes in across nodes about evenly over each node's ranks (the
// 2-homed plan packed for compute alone had five ranks of a node at 1.31x
// the mean), and its estimate is below that plan's.
func TestIntakeDealSpreadsWhatNodesTakeIn(t *testing.T) {
	topo, c, loads := fixedHotLayer()
	plan, _ := stepAndComputePlans(t, topo, c, loads)
	var sm stepModel
	sm.reset(c, loads, len(loads), topo.WorldSize, topo.RanksPerNode, topo.SlotsPerRank)
	step, _, a2a := sm.eval(plan)
	var sum, hi float64
	for _, v := range sm.re {
		sum += v
		hi = max(hi, v)
	}
	ratio := hi / (sum / float64(len(sm.re)))
	t.Logf("step %.3f ms, all-to-all %.3f; busiest rank's intake %.2fx the mean", step, a2a, ratio)
	if ratio > 1.1 {
		t.Errorf("busiest rank takes in %.2fx the mean across nodes; want at most 1.1x", ratio)
	}
	if step >= 5.808 {
		t.Errorf("step estimated at %.3f ms; want below 5.808, the plan packed for compute alone", step)
	}
}

// TestIntakeDealKeepsEachNodesReplicas: on random valid plans of 2 to 8
// nodes, the dealt plan holds the same replicas in each node and is valid
// (sdk.ValidateSlots: no rank over its share of an expert's replicas).
func TestIntakeDealKeepsEachNodesReplicas(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 11))
	var sm stepModel
	var sc intakeScratch
	dealt := 0
	for range 300 {
		topo, loads := randomNodeLayer(rng)
		n, g, s, e := topo.WorldSize, topo.RanksPerNode, topo.SlotsPerRank, len(loads)
		if n/g > homedNodes || e > n*s {
			continue
		}
		// Every expert at least once, shuffled; invalid plans skipped.
		slots := make([]int, n*s)
		for k := range slots {
			slots[k] = k % e
		}
		rng.Shuffle(len(slots), func(a, b int) { slots[a], slots[b] = slots[b], slots[a] })
		if sdk.ValidateSlots(slots, e, topo) != nil {
			continue
		}
		c := randomCost(rng)
		sm.reset(c, loads, e, n, g, s)
		sm.eval(slots)
		out := make([]int, len(slots))
		if !sm.intakeDeal(slots, out, &sc) {
			continue
		}
		dealt++
		for nd := range n / g {
			a := slices.Clone(slots[nd*g*s : (nd+1)*g*s])
			b := slices.Clone(out[nd*g*s : (nd+1)*g*s])
			slices.Sort(a)
			slices.Sort(b)
			if !slices.Equal(a, b) {
				t.Fatalf("node %d's replicas changed: %v -> %v", nd, a, b)
			}
		}
		if err := sdk.ValidateSlots(out, e, topo); err != nil {
			t.Fatalf("dealt plan invalid: %v", err)
		}
	}
	if dealt < 20 {
		t.Fatalf("only %d layers were re-dealt: the test exercises too little", dealt)
	}
}

// TestIntakeDealNodesOption: intake_deal_nodes sets the most nodes on which
// candidates are scored dealt. On the planner benchmark's first layer (32
// nodes of 8, 12.5 GB/s), the default (8) leaves the plan packed for
// compute, whose busiest rank takes in about 1.5x its node's mean across
// nodes; with 32 the chosen plan is the dealt one: the same replicas in
// every node, re-dealt over its ranks, and an estimate at least 20% lower.
// With 0 the fixed-hot layer on 4 nodes is no longer dealt, and its estimate
// goes back to that of the plan packed for compute alone.
func TestIntakeDealNodesOption(t *testing.T) {
	req := benchRequest(8)
	in, topo, c := req.Layers[0], req.Topology, h200(12.5)
	plan := func(topo sdk.Topology, c costModel, loads []float64, opts map[string]string) ([]int, float64) {
		t.Helper()
		resp, err := planReq(t, New(), stepReq(topo, c, loads, nil, opts))
		if err != nil {
			t.Fatal(err)
		}
		slots := resp.Layers[0]
		checkPlan(t, "plan", slots, loads, topo)
		step, _, _ := estimate(c, slots, loads, topo)
		return slots, step
	}
	packed, packedMs := plan(topo, c, in.Predicted, nil)
	dealt, dealtMs := plan(topo, c, in.Predicted, map[string]string{optIntakeDealNodes: "32"})
	t.Logf("32 nodes: %.3f ms by default, %.3f ms dealt", packedMs, dealtMs)
	if dealtMs > 0.8*packedMs {
		t.Errorf("intake_deal_nodes=32: estimated %.3f ms against %.3f by default; want at least 20%% lower", dealtMs, packedMs)
	}
	per := topo.RanksPerNode * topo.SlotsPerRank
	for o := 0; o < len(packed); o += per {
		a, b := slices.Clone(packed[o:o+per]), slices.Clone(dealt[o:o+per])
		slices.Sort(a)
		slices.Sort(b)
		if !slices.Equal(a, b) {
			t.Fatalf("node %d holds other replicas when dealt", o/per)
		}
	}

	topo, c, loads := fixedHotLayer()
	_, onMs := plan(topo, c, loads, nil)
	_, offMs := plan(topo, c, loads, map[string]string{optIntakeDealNodes: "0"})
	t.Logf("fixed-hot on 4 nodes: %.3f ms by default, %.3f ms never dealt", onMs, offMs)
	if offMs < 5.8 || onMs >= 5.8 {
		t.Errorf("fixed-hot: %.3f ms by default and %.3f never dealt; want below 5.8 and about 5.808, the plan packed for compute alone", onMs, offMs)
	}
}

// TestSortIntake: sortIntake orders a node's replicas as a sort by the
// order it states (most intake, then heaviest, then expert) does, on random
// replicas with many ties: intake zero for about half, a few distinct
// weights, replicas of one expert alike.
func TestSortIntake(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for i := range 2000 {
		n := rng.IntN(70)
		items := make([]intakeSlot, n)
		for j := range items {
			x := rng.IntN(12)
			items[j] = intakeSlot{x: x, wt: float64(x%4 + 1)}
			if x%2 == 0 {
				items[j].in = float64(x%3) * 0.5
			}
		}
		want := slices.Clone(items)
		slices.SortFunc(want, func(a, b intakeSlot) int {
			switch {
			case a.in != b.in:
				return cmp.Compare(b.in, a.in)
			case a.wt != b.wt:
				return cmp.Compare(b.wt, a.wt)
			default:
				return a.x - b.x
			}
		})
		sortIntake(items)
		if !slices.Equal(items, want) {
			t.Fatalf("case %d: got %v, want %v", i, items, want)
		}
	}
}

// TestIntakeDealMatchesRules: deal places each replica (in sortIntake's
// order) on the rank its rules pick, written out here rank by rank: of the
// ranks with a free slot that hold none of its expert, the least intake so
// far (ties: least compute, then the lowest rank) for a replica that takes
// in tokens, the least compute (ties: the lowest rank) for one that does
// not; and it fails when a replica finds no such rank. Nodes of 1 to 70
// ranks cover both of deal's paths (a mask of ranks up to 64, a scan past
// it) and the mask's edge; intakes and weights repeat, so ties are common.
func TestIntakeDealMatchesRules(t *testing.T) {
	rng := rand.New(rand.NewPCG(17, 4))
	var sc intakeScratch
	var placed, failed int
	for i := range 3000 {
		g := 1 + rng.IntN(70)
		if i%10 == 0 {
			g = 63 + rng.IntN(3) // 63, 64, 65
		}
		s := 1 + rng.IntN(5)
		e := 1 + rng.IntN(g*s)
		items := make([]intakeSlot, 0, g*s)
		for range g*s - rng.IntN(2) {
			x := rng.IntN(e)
			it := intakeSlot{x: x, wt: float64(x%5 + 1)}
			if rng.IntN(2) == 0 {
				it.in = float64(x%3+1) * 0.5
			}
			items = append(items, it)
		}
		sortIntake(items)
		node := make([]int, g*s)
		ok := sc.deal(node, items, g, s)

		// The rules, rank by rank.
		want := make([]int, g*s)
		used := make([]int, g)
		intake := make([]float64, g)
		load := make([]float64, g)
		wantOK := true
		for _, it := range items {
			best := -1
			for q := range g {
				if used[q] == s || slices.Contains(want[q*s:q*s+used[q]], it.x) {
					continue
				}
				switch {
				case best < 0:
					best = q
				case it.in > 0 && (intake[q] < intake[best] || intake[q] == intake[best] && load[q] < load[best]):
					best = q
				case it.in == 0 && load[q] < load[best]:
					best = q
				}
			}
			if best < 0 {
				wantOK = false
				break
			}
			want[best*s+used[best]] = it.x
			used[best]++
			intake[best] += it.in
			load[best] += it.wt
		}
		if ok != wantOK {
			t.Fatalf("case %d (g=%d s=%d): deal reports %v, the rules %v", i, g, s, ok, wantOK)
		}
		if !ok {
			failed++
			continue
		}
		placed++
		// deal writes only the slots it fills (a replica short leaves the
		// last one as it was: zero here, as in want).
		if !slices.Equal(node, want) {
			t.Fatalf("case %d (g=%d s=%d): deal gave %v, the rules %v", i, g, s, node, want)
		}
	}
	if placed < 1000 || failed < 100 {
		t.Fatalf("%d nodes dealt, %d that could not be: the cases miss one of the outcomes", placed, failed)
	}
	t.Logf("%d nodes dealt, %d that could not be", placed, failed)
}
