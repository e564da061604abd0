package swiftmoe

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/swiftmoe/swiftmoe/plugins/sdk"
)

// TestStepBoundHolds: on random layers, the bound (bound.go) is never above
// the step model's estimate, for the compute-balanced plan, the static
// layout and every hybrid layout; and a hybrid layout's bound from its
// counts alone (boundHybrid, before packing) is the bound of the plan packed
// from them (boundPlan), so pruning by it drops only what cannot win; and
// a single-homed layout's bound before its experts are homed
// (boundHybridShape) is never above the bound from its counts, and its
// bound once homed (boundHybridHomed) lies between the two. The upper
// bound (stepModel.upper) is never below the estimate, for the same plans.
// A hybrid layout evaluated node by node as it is packed gets the
// estimate bit for bit, and the bound from the nodes evaluated so far is
// never above it.
func TestStepBoundHolds(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 9))
	above := func(lb, est float64) bool { return lb > est*(1+1e-12) }
	var hybrids, homed2, tight, shapeTight, homedRaised, uppers, partialTight, packedUppers int
	// The upper bound is checked under the layer's cost model and again
	// with links within nodes slower than between them, where the tier
	// within nodes (and what bursts move there) decides the all-to-all.
	var slowIntra stepModel
	checkUpper := func(i int, topo sdk.Topology, e int, sm *stepModel, plan []int) {
		t.Helper()
		slow := sm.cm
		slow.intraBW = slow.interBW / 4
		slowIntra.reset(slow, sm.loads, e, topo.WorldSize, topo.RanksPerNode, topo.SlotsPerRank)
		for _, m := range []*stepModel{sm, &slowIntra} {
			if ub, est := m.upper(plan), m.score(plan); ub < est {
				t.Fatalf("case %d (N=%d G=%d S=%d E=%d, bursts %d, %g GB/s within nodes): upper bound %v below the estimate %v",
					i, topo.WorldSize, topo.RanksPerNode, topo.SlotsPerRank, e, m.cm.burstSlots, m.cm.intraBW/1e9, ub, est)
			}
		}
		uppers++
	}
	// The bound from the counts alone (boundCounts) is never above the
	// plan's bound, exactly: it rules a plan out only where boundPlan
	// would. Some static layouts must be within 10% of their bound, or it
	// would spare nothing.
	var expertsChecked, expertsTight int
	checkExperts := func(i int, topo sdk.Topology, e int, sm *stepModel, plan []int, lb float64) {
		t.Helper()
		if le := sm.boundCounts(countsOf(plan, e)); le > lb {
			t.Fatalf("case %d (N=%d G=%d S=%d E=%d, bursts %d): bound from the counts %v above the plan's bound %v",
				i, topo.WorldSize, topo.RanksPerNode, topo.SlotsPerRank, e, sm.cm.burstSlots, le, lb)
		} else if le >= 0.9*lb {
			expertsTight++
		}
		expertsChecked++
	}
	for i := range 3000 {
		topo, loads := randomNodeLayer(rng)
		n, g, s, e := topo.WorldSize, topo.RanksPerNode, topo.SlotsPerRank, len(loads)
		m := n / g
		cm := randomCost(rng)
		p := new(planner)
		dst := make([]int, n*s)
		if err := p.planLayer(dst, loads, nil, e, topo, options{}); err != nil {
			t.Fatal(err)
		}
		sm := &p.step
		sm.reset(cm, loads, e, n, g, s)
		for _, plan := range [][]int{dst, sdk.StaticSlots(e, topo)} {
			lb, est := sm.boundPlan(plan), sm.score(plan)
			if above(lb, est) {
				t.Fatalf("case %d (N=%d G=%d S=%d E=%d): bound %v above the estimate %v", i, n, g, s, e, lb, est)
			}
			checkExperts(i, topo, e, sm, plan, lb)
			checkUpper(i, topo, e, sm, plan)
		}
		// From the busiest rank as planLayer's packers summed it
		// (planHi, which planLayerStep uses), under both cost models.
		if p.planHi >= 0 {
			for _, m := range []*stepModel{sm, &slowIntra} {
				if ub, est := m.upperOf(p.planHi), m.score(dst); ub < est {
					t.Fatalf("case %d (N=%d G=%d S=%d E=%d): upper bound from the packers' busiest rank %v below the estimate %v", i, n, g, s, e, ub, est)
				}
			}
			packedUppers++
		}
		p.hybrid.rankExperts(loads, e)
		for k := 1; k <= 2; k++ {
			hmax := hybridMaxHomes(e, m, g*s, k)
			for h := 0; h <= hmax; h++ {
				shape := 0.0
				if k == 1 {
					shape = p.boundHybridShape(h, g, sm)
				}
				if err := p.hybridCountsHomes(h, k, g); err != nil {
					continue
				}
				lb := p.boundHybrid(h, sm)
				if above(shape, lb) {
					t.Fatalf("case %d (N=%d G=%d S=%d E=%d) h=%d: bound before homing %v above the bound from counts %v",
						i, n, g, s, e, h, shape, lb)
				}
				if k == 1 && shape >= 0.9*lb {
					shapeTight++
				}
				// Once homed, the bound before the counts rises from
				// the shape bound, and stays at most the count bound.
				if k == 1 && shape > 0 {
					homed := p.boundHybridHomed(h)
					if homed < shape || above(homed, lb) {
						t.Fatalf("case %d (N=%d G=%d S=%d E=%d) h=%d: bound once homed %v, before homing %v, from counts %v",
							i, n, g, s, e, h, homed, shape, lb)
					}
					if homed > shape {
						homedRaised++
					}
				}
				// Packed node by node with each node evaluated as it is
				// final (as planLayerStep packs a candidate it may stop):
				// the evaluation is the estimate's, and the nodes
				// evaluated so far never bound it above its value.
				sm.evalCounts(p.reps)
				cross, nodes := p.hybrid.boundA2A, 0
				var partials []float64
				done := func(nd int) bool {
					sm.evalNode(dst, nd)
					cross = max(cross, sm.crossMs(nd))
					partials = append(partials, p.hybrid.boundCompute+cross)
					nodes++
					return true
				}
				if err := p.packHybrid(h, g, done); err != nil {
					continue
				}
				byNodes, _, _ := sm.finish(dst)
				checkUpper(i, topo, e, sm, dst)
				est, lbPlan := sm.score(dst), sm.boundPlan(dst)
				if byNodes != est || nodes != m {
					t.Fatalf("case %d (N=%d G=%d S=%d E=%d) h=%d k=%d: evaluated by %d of %d nodes %v, the estimate %v",
						i, n, g, s, e, h, k, nodes, m, byNodes, est)
				}
				for j, v := range partials {
					if above(v, est) {
						t.Fatalf("case %d (N=%d G=%d S=%d E=%d) h=%d k=%d: the bound after %d nodes %v above the estimate %v",
							i, n, g, s, e, h, k, j+1, v, est)
					}
				}
				if last := partials[len(partials)-1]; last >= 0.9*est {
					partialTight++
				}
				checkExperts(i, topo, e, sm, dst, lbPlan)
				if above(lb, est) || above(lbPlan, est) || math.Abs(lb-lbPlan) > 1e-9*est {
					t.Fatalf("case %d (N=%d G=%d S=%d E=%d) h=%d k=%d: bound from counts %v, of the packed plan %v, estimate %v",
						i, n, g, s, e, h, k, lb, lbPlan, est)
				}
				hybrids++
				if k == 2 {
					homed2++
				}
				if lb >= 0.9*est {
					tight++
				}
			}
		}
	}
	// A bound of zero would pass the above; it must prune, so it must be
	// close to the estimate for many layouts.
	if 5*tight < 2*hybrids {
		t.Errorf("the bound is within 10%% of the estimate for %d of %d hybrid layouts; want at least 40%%", tight, hybrids)
	}
	if homed2 == 0 {
		t.Error("no 2-homed hybrid layout was tried")
	}
	// The bound before homing prunes only where it is close to the bound.
	if 2*shapeTight < hybrids-homed2 {
		t.Errorf("the bound before homing is within 10%% of the bound from counts for %d of %d single-homed layouts; want at least half",
			shapeTight, hybrids-homed2)
	}
	// The bound once homed must rise above the shape bound somewhere, or
	// it would rule out nothing the shape bound does not.
	if 10*homedRaised < hybrids-homed2 {
		t.Errorf("the bound once homed rose above the bound before homing for %d of %d single-homed layouts; want at least a tenth",
			homedRaised, hybrids-homed2)
	}
	// With every node evaluated, the bound must be close to the estimate
	// for most layouts, or stopping a packing would rarely pay.
	if 2*partialTight < hybrids {
		t.Errorf("the bound from every node is within 10%% of the estimate for %d of %d hybrid layouts; want at least half", partialTight, hybrids)
	}
	if 10*expertsTight < expertsChecked {
		t.Errorf("the bound from the counts is within 10%% of the plan's bound for %d of %d plans; want at least a tenth",
			expertsTight, expertsChecked)
	}
	if packedUppers < 500 {
		t.Errorf("%d plans had their busiest rank from the packers; want at least 500", packedUppers)
	}
	t.Logf("%d hybrid layouts (%d 2-homed), the bound within 10%% of the estimate for %d, the bound before homing within 10%% of it for %d, raised once homed for %d; %d plans under the upper bound (%d also from the packers' busiest rank); the bound from the counts within 10%% of the plan's for %d of %d; the bound from every node within 10%% of the estimate for %d",
		hybrids, homed2, tight, shapeTight, homedRaised, uppers, packedUppers, expertsTight, expertsChecked, partialTight)
}

// countsOf is the replicas of each of e experts in plan.
func countsOf(plan []int, e int) []int32 {
	reps := make([]int32, e)
	for _, x := range plan {
		reps[x]++
	}
	return reps
}
