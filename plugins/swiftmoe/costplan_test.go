package swiftmoe

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/swiftmoe/swiftmoe/plugins/sdk"
)

// h200 is the cost model of H200s running GPT-Small experts (d_model 768,
// d_ff 3072, bf16), 300 GB/s within a node and inter GB/s between nodes.
func h200(inter float64) costModel {
	return costModel{
		tokenBytes: 1536, expertBytes: 2 * 4718592, flopsPerToken: 6 * 4718592, flopsPerS: 6.5e14,
		intraBW: 300e9, interBW: inter * 1e9,
	}
}

// stepReq is a one-layer request planned for step time with cost model c.
func stepReq(topo sdk.Topology, c costModel, loads []float64, cur []int, opts map[string]string) *sdk.Request {
	topo.IntraNodeBandwidth, topo.InterNodeBandwidth = c.intraBW, c.interBW
	return &sdk.Request{
		Topology: topo, Options: opts,
		Layers:            []sdk.LayerInput{{NumExperts: len(loads), Predicted: loads, Current: cur}},
		ExpertWeightBytes: []uint64{uint64(c.expertBytes)},
		CostModel:         sdk.CostModel{TokenBytes: c.tokenBytes, FlopsPerToken: []float64{c.flopsPerToken}, FlopsPerSecond: c.flopsPerS},
	}
}

// estimate is the step model's estimate of a plan: step, compute and
// all-to-all milliseconds.
func estimate(c costModel, slots []int, loads []float64, topo sdk.Topology) (step, compute, a2a float64) {
	var sm stepModel
	sm.reset(c, loads, len(loads), topo.WorldSize, topo.RanksPerNode, topo.SlotsPerRank)
	return sm.eval(slots)
}

// TestStepModelByHand: 2 nodes of 2 ranks, one slot each; expert 0 on node
// 0's ranks, expert 1 on node 1's. Every rank routes 10 tokens to each
// expert: it keeps the 10 for the expert it holds and sends the other 10 to
// the other node, and each replica takes in 10 from there.
func TestStepModelByHand(t *testing.T) {
	c := costModel{tokenBytes: 1000, flopsPerToken: 6e6, flopsPerS: 1e12, intraBW: 1e9, interBW: 1e8}
	var sm stepModel
	loads := []float64{40, 40}
	sm.reset(c, loads, 2, 4, 2, 1)
	dst := []int{0, 0, 1, 1}
	step, compute, a2a := sm.eval(dst)
	for r := range 4 {
		if sm.load[r] != 20 || sm.local[r] != 10 || sm.se[r] != 10 || sm.re[r] != 10 || sm.si[r] != 0 || sm.ri[r] != 0 {
			t.Fatalf("rank %d: load %v local %v se %v re %v si %v ri %v; want 20, 10, 10, 10, 0, 0",
				r, sm.load[r], sm.local[r], sm.se[r], sm.re[r], sm.si[r], sm.ri[r])
		}
	}
	wantCompute := 1e3 * 6e6 * 20 / 1e12
	wantA2A := 4 * 1e3 * 10 * 1000 / 1e8
	if math.Abs(compute-wantCompute) > 1e-12 || math.Abs(a2a-wantA2A) > 1e-12 || math.Abs(step-wantCompute-wantA2A) > 1e-12 {
		t.Errorf("got step %v (compute %v, a2a %v), want %v + %v", step, compute, a2a, wantCompute, wantA2A)
	}

	// Every expert on every node: nothing crosses; each rank keeps 10 of
	// its 20 tokens and trades the other 10 within its node.
	dst = []int{0, 1, 0, 1}
	_, _, a2a = sm.eval(dst)
	for r := range 4 {
		if sm.se[r] != 0 || sm.re[r] != 0 || sm.si[r] != 10 || sm.ri[r] != 10 {
			t.Fatalf("replicated, rank %d: se %v re %v si %v ri %v; want 0, 0, 10, 10", r, sm.se[r], sm.re[r], sm.si[r], sm.ri[r])
		}
	}
	if want := 4 * 1e3 * 10 * 1000 / 1e9; math.Abs(a2a-want) > 1e-12 {
		t.Errorf("replicated all-to-all: got %v, want %v", a2a, want)
	}
}

// TestStepModelSendsFromTheLastRanks: a node short of replicas for an
// expert sends the rest away from its last ranks, as the split's north-west
// corner does, and the tokens land on the other node's last slots of it.
func TestStepModelSendsFromTheLastRanks(t *testing.T) {
	c := costModel{tokenBytes: 1, flopsPerToken: 1, flopsPerS: 1, intraBW: 1, interBW: 1}
	var sm stepModel
	// Expert 0: 3 replicas, 2 on node 0 (ranks 0, 1) and 1 on node 1 (rank
	// 2); 120 tokens, 60 from each node, 40 per replica.
	loads := []float64{120, 0, 0}
	sm.reset(c, loads, 3, 4, 2, 2)
	dst := []int{0, 1, 0, 2, 0, 1, 2, 1}
	sm.eval(dst)
	// Node 1 routes 60 and processes 40: rank 2 keeps 30 of its own and
	// takes 10 of rank 3's, whose other 20 leave. Node 0 processes 80 of its
	// 60: each of its replicas keeps its rank's 30, and the 20 from node 1
	// fill the 10 left on each.
	if !slices.Equal(sm.se, []float64{0, 0, 0, 20}) || !slices.Equal(sm.re, []float64{10, 10, 0, 0}) ||
		!slices.Equal(sm.si, []float64{0, 0, 0, 10}) || !slices.Equal(sm.ri, []float64{0, 0, 10, 0}) {
		t.Errorf("se %v re %v si %v ri %v; want [0 0 0 20] [10 10 0 0] [0 0 0 10] [0 0 10 0]", sm.se, sm.re, sm.si, sm.ri)
	}
}

func TestStepObjectiveKeepsTokensInNodes(t *testing.T) {
	for _, tc := range []struct {
		e, n, s int
		inter   float64
	}{{32, 16, 4, 12.5}, {64, 16, 6, 12.5}, {32, 32, 4, 50}, {64, 32, 6, 12.5}} {
		t.Run(fmt.Sprintf("E=%d N=%d S=%d %gGBps", tc.e, tc.n, tc.s, tc.inter), func(t *testing.T) {
			topo := sdk.Topology{WorldSize: tc.n, SlotsPerRank: tc.s, RanksPerNode: 8}
			c := h200(tc.inter)
			loads := zipfLoads(tc.e, 1.0, float64(4096*tc.n*2), 5)
			stepPlan, computePlan := stepAndComputePlans(t, topo, c, loads)
			s1, _, a1 := estimate(c, stepPlan, loads, topo)
			s0, _, a0 := estimate(c, computePlan, loads, topo)
			t.Logf("step plan: %.3f ms (all-to-all %.3f); compute plan: %.3f ms (all-to-all %.3f)", s1, a1, s0, a0)
			if s1 > 0.85*s0 || a1 > 0.7*a0 {
				t.Errorf("step plan estimated at %.3f ms (all-to-all %.3f), the compute plan at %.3f ms (%.3f); want at most 0.85x the step and 0.7x the all-to-all",
					s1, a1, s0, a0)
			}
		})
	}
}

// stepAndComputePlans plans one layer for step time (checked) and with
// objective=compute.
func stepAndComputePlans(t *testing.T, topo sdk.Topology, c costModel, loads []float64) (step, compute []int) {
	t.Helper()
	stepPlan, err := planReq(t, New(), stepReq(topo, c, loads, nil, nil))
	if err != nil {
		t.Fatal(err)
	}
	computePlan, err := planReq(t, New(), stepReq(topo, c, loads, nil, map[string]string{optObjective: "compute"}))
	if err != nil {
		t.Fatal(err)
	}
	checkPlan(t, "step", stepPlan.Layers[0], loads, topo)
	return stepPlan.Layers[0], computePlan.Layers[0]
}

func TestStepObjectiveNeedsItsInputs(t *testing.T) {
	topo := sdk.Topology{WorldSize: 16, SlotsPerRank: 4, RanksPerNode: 8}
	loads := zipfLoads(32, 1.0, 1e5, 9)
	computePlan := planWith(t, New(), topo, nil, loads, nil)
	for name, edit := range map[string]func(r *sdk.Request){
		"no cost model":        func(r *sdk.Request) { r.CostModel = sdk.CostModel{} },
		"no inter bandwidth":   func(r *sdk.Request) { r.Topology.InterNodeBandwidth = 0 },
		"no flops per second":  func(r *sdk.Request) { r.CostModel.FlopsPerSecond = 0 },
		"no token bytes":       func(r *sdk.Request) { r.CostModel.TokenBytes = 0 },
		"one node":             func(r *sdk.Request) { r.Topology.RanksPerNode = 0 },
		"objective compute":    func(r *sdk.Request) { r.Options = map[string]string{optObjective: "compute"} },
		"nodes not dividing N": func(r *sdk.Request) { r.Topology.RanksPerNode = 6 },
	} {
		t.Run(name, func(t *testing.T) {
			req := stepReq(topo, h200(12.5), loads, nil, nil)
			edit(req)
			resp, err := planReq(t, New(), req)
			if err != nil {
				t.Fatal(err)
			}
			want := computePlan
			if req.Topology.RanksPerNode != topo.RanksPerNode {
				want = planWith(t, New(), req.Topology, nil, loads, nil)
			}
			if !slices.Equal(resp.Layers[0], want) {
				t.Errorf("got %v, want the compute-balanced plan %v", resp.Layers[0], want)
			}
		})
	}
}

func TestStepObjectiveRandomInvariants(t *testing.T) {
	rng := rand.New(rand.NewPCG(12, 5))
	s := New()
	for i := range 300 {
		topo, loads := randomCase(rng)
		if hierarchical(topo) == 0 {
			topo.WorldSize = 2 * (1 + rng.IntN(8))
			topo.RanksPerNode = topo.WorldSize / 2
			if len(loads) > topo.TotalSlots() {
				loads = loads[:topo.TotalSlots()]
			}
		}
		c := h200([]float64{3, 12.5, 50, 400}[rng.IntN(4)])
		name := fmt.Sprintf("case %d N=%d S=%d R=%d E=%d %gGBps", i, topo.WorldSize, topo.SlotsPerRank, topo.RanksPerNode, len(loads), c.interBW/1e9)
		var cur []int
		if rng.IntN(2) == 0 {
			cur = sdk.StaticSlots(len(loads), topo)
		}
		plan := func(cur []int) []int {
			resp, err := planReq(t, s, stepReq(topo, c, loads, cur, nil))
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			return resp.Layers[0]
		}
		got := plan(cur)
		checkPlan(t, name, got, loads, topo)
		if again := plan(cur); !slices.Equal(got, again) {
			t.Fatalf("%s: not deterministic: %v then %v", name, got, again)
		}
		if again := plan(got); !slices.Equal(got, again) {
			t.Fatalf("%s: unchanged load changed the plan: %v then %v", name, got, again)
		}
		junk := make([]int, topo.TotalSlots())
		for k := range junk {
			junk[k] = rng.IntN(len(loads))
		}
		checkPlan(t, name+" junk current", plan(junk), loads, topo)
	}
}

// samePlans fails the test where got, a plan made sparing some work,
// differs from want, the plan made how (doing that work).
func samePlans(t *testing.T, name string, got, want []int, how string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Fatalf("%s: the plan differs from the one made %s:\n%v\n%v", name, how, got, want)
	}
}

// spareTally tallies what a plans-alike test's cheaper planning spared: the
// work items in all, and the layers in which it spared some.
type spareTally struct{ items, layers int }

// add counts a layer in which the cheaper planning spared n items, and
// fails the test where the planning that spares nothing (whole) did.
func (sp *spareTally) add(t *testing.T, name, what string, n, whole int) {
	t.Helper()
	if whole != 0 {
		t.Fatalf("%s: %d %s spared by the planning that spares none", name, whole, what)
	}
	sp.items += n
	if n > 0 {
		sp.layers++
	}
}

// check fails the test where fewer than least of the layers saw something
// spared, and logs the tally.
func (sp *spareTally) check(t *testing.T, what string, least, of int) {
	t.Helper()
	if sp.layers < least {
		t.Errorf("%s spared in %d layers; want at least %d of %d", what, sp.layers, least, of)
	}
	t.Logf("%d %s spared, in %d layers", sp.items, what, sp.layers)
}

// randomStepLayer is a random layer for planning for step time: nodes of
// one of groups ranks, from nodes to nodes+span-1 of them, 1 to 6 slots,
// up to 512 experts, and a random cost model (H200s at 400 GB/s a quarter
// of the time).
func randomStepLayer(rng *rand.Rand, groups []int, nodes, span int) (sdk.Topology, int, layerCost) {
	g := groups[rng.IntN(len(groups))]
	m := nodes + rng.IntN(span)
	s := 1 + rng.IntN(6)
	n := m * g
	e := min(n*s, []int{16, 32, 64, 128, 256, 512}[rng.IntN(6)])
	lc := layerCost{cm: randomCost(rng)}
	if rng.IntN(4) == 0 {
		lc.cm = h200(400)
	}
	return sdk.Topology{WorldSize: n, SlotsPerRank: s, RanksPerNode: g}, e, lc
}

// randomCurrent is a plan in force for a layer of e experts, at random:
// none, the static layout, or p's plan for other random loads under o.
func randomCurrent(t *testing.T, rng *rand.Rand, p *planner, topo sdk.Topology, e int, o options, lc *layerCost) []int {
	t.Helper()
	switch rng.IntN(3) {
	case 1:
		return sdk.StaticSlots(e, topo)
	case 2:
		cur := make([]int, topo.TotalSlots())
		if err := p.planLayerStep(cur, qualityLoads(rng, e), nil, e, topo, o, lc); err != nil {
			t.Fatal(err)
		}
		return cur
	}
	return nil
}

// TestLazyEstimatePlansAlike: on more than homedNodes nodes, where the
// estimate of the compute-balanced plan waits for a bound below its upper
// bound (costplan.go), planning gives the very plans it gives with the
// estimate made at once, for random layers, cost models (bursts half the
// time), and current plans (none, the static layout, or the previous
// iteration's plan); and it makes fewer estimates in some layers, and as
// many in others (a bound settled the estimate, or the experts fit in a
// node and nothing waits).
func TestLazyEstimatePlansAlike(t *testing.T) {
	rng := rand.New(rand.NewPCG(25, 4))
	lazy, eager := new(planner), new(planner)
	var made, spared int
	for i := range 250 {
		topo, e, lc := randomStepLayer(rng, []int{1, 2, 4, 8}, homedNodes+1, 40)
		n, g, s := topo.WorldSize, topo.RanksPerNode, topo.SlotsPerRank
		loads := qualityLoads(rng, e)
		cur := randomCurrent(t, rng, eager, topo, e, options{eagerEstimate: true}, &lc)
		name := fmt.Sprintf("case %d (N=%d G=%d S=%d E=%d %gGBps bursts %d)", i, n, g, s, e, lc.cm.interBW/1e9, lc.cm.burstSlots)
		got, want := make([]int, n*s), make([]int, n*s)
		lazy.step.evals, eager.step.evals = 0, 0
		if err := lazy.planLayerStep(got, loads, cur, e, topo, options{}, &lc); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if err := eager.planLayerStep(want, loads, cur, e, topo, options{eagerEstimate: true}, &lc); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		samePlans(t, name, got, want, "with the estimate at once")
		switch {
		case lazy.step.evals > eager.step.evals:
			t.Fatalf("%s: %d estimates, %d with the estimate at once", name, lazy.step.evals, eager.step.evals)
		case lazy.step.evals < eager.step.evals:
			spared++
		default:
			made++
		}
	}
	if spared < 25 || made < 25 {
		t.Errorf("the estimate was spared in %d layers and made in %d; want both in at least 25 of 250", spared, made)
	}
	t.Logf("the estimate spared in %d layers, made in %d", spared, made)
}

// TestEarlyOutPlansAlike: where a hybrid candidate's packing stops once
// the nodes packed so far bound its estimate above the best, the plans are
// the ones made packing every candidate in full (packWhole), on random
// layers of 2 to 48 nodes planned from nothing, the static layout or the
// previous iteration's plan (where hybrid layouts are most often packed);
// and some packings do stop.
func TestEarlyOutPlansAlike(t *testing.T) {
	rng := rand.New(rand.NewPCG(31, 8))
	early, whole := new(planner), new(planner)
	var cut spareTally
	for i := range 800 {
		topo, e, lc := randomStepLayer(rng, []int{2, 4, 8}, 2, 47)
		n, g, s := topo.WorldSize, topo.RanksPerNode, topo.SlotsPerRank
		o := options{dealNodes: homedNodes, twoHome: 0.2}
		ow := o
		ow.packWhole = true
		cur := randomCurrent(t, rng, whole, topo, e, ow, &lc)
		loads := qualityLoads(rng, e)
		name := fmt.Sprintf("case %d (N=%d G=%d S=%d E=%d %gGBps bursts %d)", i, n, g, s, e, lc.cm.interBW/1e9, lc.cm.burstSlots)
		got, want := make([]int, n*s), make([]int, n*s)
		early.stepPlans.cut = 0
		if err := early.planLayerStep(got, loads, cur, e, topo, o, &lc); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if err := whole.planLayerStep(want, loads, cur, e, topo, ow, &lc); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		samePlans(t, name, got, want, "packing every candidate in full")
		cut.add(t, name, "packings", early.stepPlans.cut, whole.stepPlans.cut)
	}
	cut.check(t, "packings", 25, 800)
}

func TestObjectiveOption(t *testing.T) {
	topo := sdk.Topology{WorldSize: 4, SlotsPerRank: 2, RanksPerNode: 2}
	_, err := planReq(t, New(), stepReq(topo, h200(12.5), []float64{1, 2, 3}, nil, map[string]string{optObjective: "speed"}))
	if err == nil || !strings.Contains(err.Error(), `option objective = "speed"; want step or compute`) {
		t.Errorf("got %v, want an error naming the option and its values", err)
	}
	names := []string{}
	for _, o := range New().Info().Options {
		names = append(names, o.Name)
	}
	if !slices.Contains(names, optObjective) {
		t.Errorf("Info declares %v, want %s among them", names, optObjective)
	}
}

// TestStepModelLeavesNodeImbalanceToBursts: past the burst threshold, a job
// with burst slots is priced at its busiest node's mean plus one copy
// within the node, never above its compute without bursts.
func TestStepModelLeavesNodeImbalanceToBursts(t *testing.T) {
	c := unitCost()
	var sm stepModel
	// 2 nodes of 2 ranks, one slot each; rank 0 holds the hot expert.
	loads := []float64{300, 100, 100, 100}
	dst := []int{0, 1, 2, 3}
	sm.reset(c, loads, 4, 4, 2, 1)
	_, without, _ := sm.eval(dst)
	if without != 300 { // 1e3 * 1 * 300 / 1e3
		t.Fatalf("compute without bursts: got %v, want 300", without)
	}
	// Within the nodes, rank 0 takes in rank 1's 75 tokens of the hot
	// expert and sends it 25 of expert 1; rank 1 the reverse.
	checkIntra(t, "without bursts", &sm, []float64{25, 75, 25, 25}, []float64{75, 25, 25, 25})
	sm.cm.burstSlots, sm.cm.burstThreshold = 1, 1.1
	_, with, _ := sm.eval(dst)
	// Node 0's mean, 200, and burstResidual of the 100 over it; the copy
	// (1 ms each way) hides behind the 100 ms of the rank it lands on
	// (node 0's lightest).
	if want := 200 + burstResidual*100; math.Abs(with-want) > 1e-9 {
		t.Errorf("compute with bursts: got %v, want %v", with, want)
	}
	// Rank 0 sheds 100 tokens of the hot expert to a burst on rank 1: it
	// no longer takes in rank 1's 75 and sends it 25 of its own; rank 1
	// keeps its 75 and takes in 25.
	checkIntra(t, "with bursts", &sm, []float64{50, 0, 25, 25}, []float64{0, 50, 25, 25})
	// A copy of 50 ms each way: the forward hides 100/3 ms of it, the
	// backward all of its return (200/3 ms).
	sm.cm.intraBW = 2e4
	if _, got, _ := sm.eval(dst); math.Abs(got-(with+50-100.0/3)) > 1e-9 {
		t.Errorf("compute with exposed copies: got %v, want %v", got, with+50-100.0/3)
	}
	sm.cm.intraBW = 1e6
	sm.cm.burstThreshold = 2 // 300 is 1.5x the mean of 150: no burst
	if _, got, _ := sm.eval(dst); got != without {
		t.Errorf("below the threshold: got %v, want %v", got, without)
	}
	checkIntra(t, "below the threshold", &sm, []float64{25, 75, 25, 25}, []float64{75, 25, 25, 25})
}

// TestBurstTrafficFillsTheLightestRanks: 2 nodes of 4 ranks, one slot each,
// expert x on rank x; the hot expert 0 (400 tokens) puts rank 0 250 over
// its node's mean of 150. The bursts' 250 tokens raise ranks 2 and 3 (50)
// and then rank 1 (100) to 150: 100, 100 and 50 tokens of expert 0, of
// which each keeps its own 50 (a rank's share of expert 0, 400/8). Rank 0
// stops taking in the other ranks' 150 tokens of it and sends 100 of its
// own. Node 1 and the traffic across nodes do not change.
func TestBurstTrafficFillsTheLightestRanks(t *testing.T) {
	checkBurstTraffic(t, []float64{400, 100, 50, 50, 100, 100, 100, 100}, []int{0, 1, 2, 3, 4, 5, 6, 7}, 150, 250,
		[2][]float64{{25, 62.5, 68.75, 68.75, 37.5, 37.5, 37.5, 37.5}, {150, 37.5, 18.75, 18.75, 37.5, 37.5, 37.5, 37.5}},
		[2][]float64{{125, 12.5, 18.75, 18.75, 37.5, 37.5, 37.5, 37.5}, {0, 37.5, 68.75, 68.75, 37.5, 37.5, 37.5, 37.5}})
}

// TestBurstTrafficKeepsNothingWhereTheNodeHoldsTheExpert: as above, but
// node 0 holds the hot expert on ranks 0 and 1 (200 tokens each, 75 over
// the node's mean of 125). The split evens an expert out over the replicas
// a node holds before any burst, so the ranks that take in the excess keep
// none of their own tokens for it: ranks 2 and 3 each take in 75 more and
// send as before.
func TestBurstTrafficKeepsNothingWhereTheNodeHoldsTheExpert(t *testing.T) {
	checkBurstTraffic(t, []float64{400, 0, 50, 50, 100, 100, 100, 100}, []int{0, 0, 2, 3, 4, 5, 6, 7}, 125, 75,
		[2][]float64{{12.5, 12.5, 56.25, 56.25, 37.5, 37.5, 37.5, 37.5}, {50, 50, 18.75, 18.75, 37.5, 37.5, 37.5, 37.5}},
		[2][]float64{{37.5, 37.5, 56.25, 56.25, 37.5, 37.5, 37.5, 37.5}, {0, 0, 93.75, 93.75, 37.5, 37.5, 37.5, 37.5}})
}

// checkBurstTraffic evaluates dst (one slot a rank) on loads over 2 nodes
// of 4 ranks with unitCost, without and then with one burst slot per rank
// (threshold 1.1). It checks the tokens sent and received within nodes
// before and after (per rank), the compute after (the level plus
// burstResidual of the busiest rank's excess over it), and that the
// traffic across nodes does not change.
func checkBurstTraffic(t *testing.T, loads []float64, dst []int, level, excess float64, before, after [2][]float64) {
	t.Helper()
	var sm stepModel
	sm.reset(unitCost(), loads, len(loads), 8, 4, 1)
	sm.eval(dst)
	checkIntra(t, "without bursts", &sm, before[0], before[1])
	se, re := slices.Clone(sm.se), slices.Clone(sm.re)
	sm.cm.burstSlots, sm.cm.burstThreshold = 1, 1.1
	_, compute, _ := sm.eval(dst)
	if want := level + burstResidual*excess; math.Abs(compute-want) > 1e-9 {
		t.Errorf("compute with bursts: got %v, want %v", compute, want)
	}
	checkIntra(t, "with bursts", &sm, after[0], after[1])
	if !slices.Equal(sm.se, se) || !slices.Equal(sm.re, re) {
		t.Errorf("across nodes with bursts: sent %v and received %v, want %v and %v", sm.se, sm.re, se, re)
	}
}

// unitCost is a cost model in round numbers: a token is a byte and takes
// 1 ms of compute, an expert is 1000 bytes, 1e6 bytes/ms within a node and
// 1e3 across.
func unitCost() costModel {
	return costModel{tokenBytes: 1, expertBytes: 1000, flopsPerToken: 1, flopsPerS: 1e3, intraBW: 1e6, interBW: 1e3}
}

// checkIntra checks the step model's tokens sent and received within nodes,
// per rank, after an eval.
func checkIntra(t *testing.T, name string, sm *stepModel, si, ri []float64) {
	t.Helper()
	for r := range si {
		if math.Abs(sm.si[r]-si[r]) > 1e-9 || math.Abs(sm.ri[r]-ri[r]) > 1e-9 {
			t.Errorf("%s: sent and received within nodes %v and %v, want %v and %v", name, sm.si, sm.ri, si, ri)
			return
		}
	}
}

// TestStepPlanWithBurstsKeepsEveryExpertInEveryNode: E=32 on 2 nodes of 8
// ranks with 4 slots, two hot experts. Without burst slots the plan gives
// the hot experts more replicas and leaves some cold experts in one node;
// with them it keeps every expert in every node (no token crosses) and
// leaves the hot experts' imbalance within a node to the bursts.
func TestStepPlanWithBurstsKeepsEveryExpertInEveryNode(t *testing.T) {
	topo := sdk.Topology{WorldSize: 16, SlotsPerRank: 4, RanksPerNode: 8}
	loads := make([]float64, 32)
	for e := range loads {
		loads[e] = 2000
	}
	loads[3], loads[17] = 32000, 32000
	c := h200(12.5)
	c.flopsPerS = 7e14
	req := stepReq(topo, c, loads, nil, nil)
	plain, err := planReq(t, New(), req)
	if err != nil {
		t.Fatal(err)
	}
	req.CostModel.BurstSlotsPerRank, req.CostModel.BurstThreshold = 1, 1.1
	burst, err := planReq(t, New(), req)
	if err != nil {
		t.Fatal(err)
	}
	inEvery := func(slots []int) int {
		n := 0
		for _, row := range nodeCounts(slots, 32, topo) {
			if row[0] > 0 && row[1] > 0 {
				n++
			}
		}
		return n
	}
	if got := inEvery(burst.Layers[0]); got != 32 {
		t.Errorf("with bursts: %d of 32 experts in both nodes, want all", got)
	}
	if got := inEvery(plain.Layers[0]); got == 32 {
		t.Errorf("without bursts: every expert in both nodes; want the hot experts given more replicas instead")
	}
}

// TestStepObjectiveHomesColdExpertsTwice: E=64 top-8 on 4 nodes of 8 ranks
// with 6 slots, 5 hot experts taking half the tokens (the simulator's
// fixed-hot workload). No layout holds every expert in every node, and the
// compute-balanced plan leaves the cold experts' cross-node tokens on a
// few ranks; the step objective chooses a 2-homed hybrid layout (the hot
// experts in every node with equal counts, every cold expert in two
// nodes), whose all-to-all is well below both the compute-balanced plan's
// and the best 1-homed layout's.
func TestStepObjectiveHomesColdExpertsTwice(t *testing.T) {
	topo := sdk.Topology{WorldSize: 32, SlotsPerRank: 6, RanksPerNode: 8}
	c := h200(12.5)
	const e, total = 64, 32 * 4096 * 8
	loads := make([]float64, e)
	for x := range e {
		if x%13 == 0 { // 0, 13, 26, 39, 52
			loads[x] = total / 2 / 5
		} else {
			loads[x] = total / 2 / 59
		}
	}
	plan, computePlan := stepAndComputePlans(t, topo, c, loads)
	for x, row := range nodeCounts(plan, e, topo) {
		var nodes int
		for _, c := range row {
			if c > 0 {
				nodes++
			}
		}
		if nodes < 2 {
			t.Errorf("expert %d (load %.0f) is in %d node(s), counts per node %v; want at least 2", x, loads[x], nodes, row)
		}
		if x%13 == 0 && slices.Min(row) != slices.Max(row) {
			t.Errorf("hot expert %d has counts per node %v; want equal counts", x, row)
		}
	}
	// The best 1-homed layout, as the planner searched before 2-homed ones.
	p := new(planner)
	g, n, s := topo.RanksPerNode, topo.WorldSize, topo.SlotsPerRank
	if err := p.planLayer(make([]int, n*s), loads, nil, e, topo, options{}); err != nil {
		t.Fatal(err)
	}
	p.step.reset(c, loads, e, n, g, s)
	p.hybrid.rankExperts(loads, e)
	best1 := math.Inf(1)
	for h := 0; h <= hybridMax(e, n/g, g*s); h++ {
		if p.planHybrid(h, g) == nil {
			best1 = min(best1, p.step.score(p.rk.dst))
		}
	}
	s1, _, a1 := estimate(c, plan, loads, topo)
	s0, _, a0 := estimate(c, computePlan, loads, topo)
	t.Logf("step plan %.3f ms (all-to-all %.3f); compute plan %.3f ms (%.3f); best 1-homed layout %.3f ms", s1, a1, s0, a0, best1)
	// Measured: 5.808 ms (4.368) against 6.537 (5.043) and 7.988. (With the
	// node tier north-west corner the compute plan was estimated at 7.70 ms;
	// the proportional node tier spreads its intake over its replicas.)
	if s1 > 0.95*s0 || a1 > 0.9*a0 || s1 > 0.95*best1 {
		t.Errorf("step plan estimated at %.3f ms (all-to-all %.3f); compute plan %.3f (%.3f), best 1-homed %.3f: want at most 0.95x both steps and 0.9x the all-to-all",
			s1, a1, s0, a0, best1)
	}
}

// TestTwoHomeMargin: on random layers of 3 to 8 nodes, the default
// two_home_margin gives up at most its fraction of the estimated step time
// of the plan the estimate alone chooses (two_home_margin=0), and it does
// choose a 2-homed layout where one is within the margin.
func TestTwoHomeMargin(t *testing.T) {
	rng := rand.New(rand.NewPCG(21, 4))
	var changed, tried int
	for range 600 {
		topo, loads := randomNodeLayer(rng)
		c := randomCost(rng)
		m := topo.WorldSize / topo.RanksPerNode
		if m < 3 || m > homedNodes || len(loads) <= topo.RanksPerNode*topo.SlotsPerRank {
			continue // no 2-homed search
		}
		tried++
		plain, err := planReq(t, New(), stepReq(topo, c, loads, nil, map[string]string{optTwoHomeMargin: "0"}))
		if err != nil {
			t.Fatal(err)
		}
		hedged, err := planReq(t, New(), stepReq(topo, c, loads, nil, nil))
		if err != nil {
			t.Fatal(err)
		}
		checkPlan(t, "default margin", hedged.Layers[0], loads, topo)
		s0, _, _ := estimate(c, plain.Layers[0], loads, topo)
		s1, _, _ := estimate(c, hedged.Layers[0], loads, topo)
		if s1 > s0*(1+defaultTwoHomeMargin)*(1+1e-9) {
			t.Errorf("N=%d G=%d S=%d E=%d: the default margin's plan is estimated at %.6g ms, the estimate's choice at %.6g: want at most %g more",
				topo.WorldSize, topo.RanksPerNode, topo.SlotsPerRank, len(loads), s1, s0, defaultTwoHomeMargin)
		}
		if !slices.Equal(plain.Layers[0], hedged.Layers[0]) {
			changed++
		}
	}
	if tried < 50 || changed == 0 {
		t.Errorf("%d layers had a 2-homed search, %d plans changed by the margin; want at least 50 and 1", tried, changed)
	}
	t.Logf("%d layers with a 2-homed search, %d plans changed by the default margin", tried, changed)
}

// TestHomeSinglesMaskedMatchesQueued: on up to maskedHomeNodes nodes the
// experts that are not global are homed by walking a mask of the eligible
// nodes rather than through the ordered queue, and with one home each
// (k = 1) on more nodes through homeSinglesOne's window; each gives every
// expert the same homes, every node the same count and load (bit for bit),
// and fails alike, over random layers of 1-64 nodes, 1-3 homes, ties in
// load (equal loads, zeros) and q and rho of every size.
func TestHomeSinglesMaskedMatchesQueued(t *testing.T) {
	rng := rand.New(rand.NewPCG(61, 7))
	var a, b hybridScratch
	var checked, failed, one int
	for i := range 6000 {
		m := 1 + rng.IntN(64)
		e := 1 + rng.IntN(200)
		h := rng.IntN(e)
		k := 1 + rng.IntN(min(3, m))
		if i%3 == 0 {
			k = 1
		}
		loads := tiedLoads(rng, e, 100, 1000)
		singles := e - h
		q, rho := singles*k/m, singles*k%m
		if rng.IntN(8) == 0 { // counts that cannot all be placed
			q, rho = rng.IntN(3), rng.IntN(m)
		}
		for _, hs := range []*hybridScratch{&a, &b} {
			hs.rankExperts(loads, e)
			hs.home = grow(hs.home, e)
			hs.homes = grow(hs.homes, e*k)
			hs.nodeLoad = grow(hs.nodeLoad, m)
			hs.nSingle = grow(hs.nSingle, m)
			clear(hs.nodeLoad)
			clear(hs.nSingle)
			for x := range hs.home {
				hs.home[x] = -1
			}
		}
		var errA error
		how := "masked" // the homing under test, against the queue
		if k == 1 && i%2 == 0 {
			errA = a.homeSinglesOne(loads, h, q, rho, m)
			how = "window"
			one++
		} else {
			errA = a.homeSinglesMasked(loads, h, k, q, rho, m)
		}
		errB := b.homeSinglesQueued(loads, h, k, q, rho, m)
		name := fmt.Sprintf("M=%d E=%d h=%d k=%d q=%d rho=%d", m, e, h, k, q, rho)
		if (errA == nil) != (errB == nil) {
			t.Fatalf("%s: %s %v, queued %v", name, how, errA, errB)
		}
		if errA != nil {
			failed++
			continue
		}
		checked++
		for _, x := range a.order[h:] {
			if !slices.Equal(a.homes[int(x)*k:int(x+1)*k], b.homes[int(x)*k:int(x+1)*k]) || a.home[x] != b.home[x] {
				t.Fatalf("%s: expert %d homed on %v (%s) and %v (queued)", name, x, a.homes[int(x)*k:int(x+1)*k], how, b.homes[int(x)*k:int(x+1)*k])
			}
		}
		for nd := range m {
			if a.nSingle[nd] != b.nSingle[nd] || math.Float64bits(a.nodeLoad[nd]) != math.Float64bits(b.nodeLoad[nd]) {
				t.Fatalf("%s: node %d holds %d (load %v) %s, %d (load %v) queued", name, nd, a.nSingle[nd], a.nodeLoad[nd], how, b.nSingle[nd], b.nodeLoad[nd])
			}
		}
	}
	if checked < 1000 || failed < 100 || one < 1000 {
		t.Errorf("%d layers homed (%d by homeSinglesOne) and %d failed; want at least 1000 (1000) and 100", checked, one, failed)
	}
	t.Logf("%d layers homed alike, %d failed alike", checked, failed)
}

// TestRankExpertsNearMatchesRankExperts: ranked from a hint (planLayer's
// weights order and counts, as planLayerStep ranks them), the experts come
// in rankExperts' order exactly, over random node layers (where the hint is
// close and no fallback is needed), tied and zero loads, and hints that
// are no help (a shuffled order, counts that do not follow the load, counts
// out of range, which fall back to the sort).
func TestRankExpertsNearMatchesRankExperts(t *testing.T) {
	rng := rand.New(rand.NewPCG(17, 71))
	var a, b hybridScratch
	p := new(planner)
	served := 0 // planLayer's hints that needed no fallback
	servedUntied := 0
	check := func(name string, loads []float64, e int, hint, reps []int32) bool {
		t.Helper()
		a.rankExperts(loads, e)
		ok := b.rankExpertsNear(loads, e, hint, reps)
		if !slices.Equal(a.order[:e], b.order[:e]) {
			t.Fatalf("%s (E=%d): ranked from the hint %v, by the sort %v", name, e, b.order[:e], a.order[:e])
		}
		return ok
	}
	for i := range 600 {
		topo, loads := randomNodeLayer(rng)
		e := len(loads)
		if i%5 == 0 {
			loads = tiedLoads(rng, e, 100, 1000)
		}
		dst := make([]int, topo.TotalSlots())
		if err := p.planLayer(dst, loads, nil, e, topo, options{}); err != nil {
			t.Fatal(err)
		}
		if check("planLayer's weights", loads, e, p.wt.order[:e], p.reps[:e]) {
			if i%5 != 0 {
				servedUntied++
			}
			served++
		}
		check("no loads", nil, e, p.wt.order[:e], p.reps[:e])
		shuffled := slices.Clone(p.wt.order[:e])
		rng.Shuffle(e, func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		check("a shuffled hint", loads, e, shuffled, p.reps[:e])
		counts := make([]int32, e)
		for x := range counts {
			counts[x] = 1 + rng.Int32N(5)
		}
		check("counts that do not follow the load", loads, e, p.wt.order[:e], counts)
		bad := slices.Clone(counts)
		bad[rng.IntN(e)] = -1
		if check("a negative count", loads, e, p.wt.order[:e], bad) {
			t.Fatal("a negative count served as a hint")
		}
		bad = slices.Clone(counts)
		bad[rng.IntN(e)] = int32(4*e + 1)
		if check("a count out of range", loads, e, shuffled, bad) {
			t.Fatal("a count above 4E served as a hint")
		}
	}
	// The hint must serve where planLayerStep gives it, or it spares nothing.
	if served < 500 {
		t.Errorf("planLayer's weights served as the hint in %d of 600 layers; want at least 500", served)
	}
	t.Logf("planLayer's weights served as the hint in %d of 600 layers (%d of the 480 without tied loads)", served, servedUntied)
}
