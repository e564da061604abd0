package swiftmoe

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/swiftmoe/swiftmoe/plugins/sdk"
)

// TestNodesBoundHolds: the bound packBelow stops on (nodesBound: each
// node's mean, and its heaviest replica with its S-1 lightest) is never
// above the busiest rank of the plan packed from the same node layout,
// under both node policies; and it is exact for some layouts, or it would
// stop nothing.
func TestNodesBoundHolds(t *testing.T) {
	rng := rand.New(rand.NewPCG(41, 7))
	var checked, exact int
	for i := range 2000 {
		topo, loads := randomNodeLayer(rng)
		e := len(loads)
		for _, pol := range []nodePolicy{nodesSpread, nodesPack} {
			p := new(planner)
			dst := make([]int, topo.TotalSlots())
			o := options{nodes: pol, noSearch: true}
			if err := p.planLayer(dst, loads, nil, e, topo, o); err != nil {
				t.Fatal(err)
			}
			// Pack the counts again, so that the node layout is the
			// plan's.
			if err := p.pack(topo); err != nil {
				t.Fatal(err)
			}
			lb, hi := p.nodesBound(&p.nodes.lay), p.rk.maxLoad(0, topo.WorldSize)
			if lb > hi*(1+1e-12) {
				t.Fatalf("case %d (N=%d G=%d S=%d E=%d, %v): bound %v above the busiest rank %v",
					i, topo.WorldSize, topo.RanksPerNode, topo.SlotsPerRank, e, pol, lb, hi)
			}
			if lb >= hi*(1-1e-12) {
				exact++
			}
			checked++
		}
	}
	if 10*exact < checked {
		t.Errorf("the bound is the busiest rank in %d of %d plans; want at least a tenth", exact, checked)
	}
	t.Logf("the bound is the busiest rank in %d of %d plans", exact, checked)
}

// TestCountSearchSkipsAlike: the count search, which does not pack counts
// whose node layout bounds the plan above the one to beat, makes the plans
// it makes packing every count it tries (searchWhole), on random small
// layers with nodes, from nothing and from the static layout; and it skips
// some.
func TestCountSearchSkipsAlike(t *testing.T) {
	rng := rand.New(rand.NewPCG(43, 11))
	skip, whole := new(planner), new(planner)
	var skipped spareTally
	for i := range 400 {
		topo, loads := randomNodeLayer(rng)
		e := len(loads)
		var cur []int
		if rng.IntN(2) == 0 {
			cur = sdk.StaticSlots(e, topo)
		}
		o := options{nodes: []nodePolicy{nodesSpread, nodesPack}[rng.IntN(2)]}
		ow := o
		ow.searchWhole = true
		got, want := make([]int, topo.TotalSlots()), make([]int, topo.TotalSlots())
		skip.search.skipped, whole.search.skipped = 0, 0
		if err := skip.planLayer(got, loads, cur, e, topo, o); err != nil {
			t.Fatal(err)
		}
		if err := whole.planLayer(want, loads, cur, e, topo, ow); err != nil {
			t.Fatal(err)
		}
		name := fmt.Sprintf("case %d (N=%d G=%d S=%d E=%d, %v)", i, topo.WorldSize, topo.RanksPerNode, topo.SlotsPerRank, e, o.nodes)
		samePlans(t, name, got, want, "packing every count tried")
		skipped.add(t, name, "packings of counts", skip.search.skipped, whole.search.skipped)
	}
	skipped.check(t, "packings of counts", 40, 400)
}

// TestSetMovedMatchesSet: the count search's climb weighs counts one move
// from its base by merging the two moved experts' keys into the base's
// order (weights.setMoved); the weights, limits and packing order are
// set's for the same counts, bit for bit, over random counts with ties in
// load (equal loads, and loads of zero) and moves in both directions.
func TestSetMovedMatchesSet(t *testing.T) {
	rng := rand.New(rand.NewPCG(53, 9))
	var base, moved, ref weights
	var checked, reordered int
	for range 3000 {
		e := 2 + rng.IntN(63)
		n := 1 + rng.IntN(16)
		slots := e + rng.IntN(4*e)
		reps := randomCounts(rng, e, slots)
		loads := tiedLoads(rng, e, 1000, 5000)
		base.set(reps, loads, n, slots)
		for range 8 {
			from, to := rng.IntN(e), rng.IntN(e)
			if from == to || reps[from] <= 1 {
				continue
			}
			trial := append([]int32(nil), reps...)
			trial[from]--
			trial[to]++
			moved.setMoved(&base, trial, loads, n, slots, from, to)
			ref.set(trial, loads, n, slots)
			for x := range e {
				if math.Float64bits(moved.w[x]) != math.Float64bits(ref.w[x]) || moved.capR[x] != ref.capR[x] {
					t.Fatalf("e=%d n=%d slots=%d move %d -> %d: expert %d w %v capR %d, set's %v %d",
						e, n, slots, from, to, x, moved.w[x], moved.capR[x], ref.w[x], ref.capR[x])
				}
			}
			if !slices.Equal(moved.order, ref.order) {
				t.Fatalf("e=%d n=%d slots=%d move %d -> %d: order %v, set's %v", e, n, slots, from, to, moved.order, ref.order)
			}
			if !slices.Equal(moved.order, base.order) {
				reordered++
			}
			checked++
		}
	}
	if checked < 10000 || reordered < checked/4 {
		t.Fatalf("%d moves checked, %d of them reordering: the cases do not exercise the merge", checked, reordered)
	}
	t.Logf("%d moves checked, %d reordered the experts", checked, reordered)
}

// TestSetRunsMatchesSet: weights from experts in any order and two runs,
// each the experts of one count in load order (ties, and loads a relative
// 2^-40 apart, which tie on their keys too), are set's: the same weights,
// limits and order, on random counts.
func TestSetRunsMatchesSet(t *testing.T) {
	rng := rand.New(rand.NewPCG(61, 2))
	var runs, ref weights
	var nearTies int
	for c := range 3000 {
		e := 2 + rng.IntN(300)
		n := 1 + rng.IntN(64)
		slots := e + rng.IntN(4*e)
		reps := randomCounts(rng, e, slots)
		loads := tiedLoads(rng, e, 1000, 5000)
		for x := range loads {
			if rng.IntN(8) == 0 {
				loads[x] = 1000 * (1 + math.Ldexp(float64(rng.IntN(4)), -40))
				nearTies++
			}
		}
		byLoad := make([]int32, e)
		for x := range byLoad {
			byLoad[x] = int32(x)
		}
		slices.SortFunc(byLoad, func(a, b int32) int {
			switch {
			case loads[a] > loads[b]:
				return -1
			case loads[a] < loads[b]:
				return 1
			}
			return int(a - b)
		})
		var one, two, rest []int32
		for _, x := range byLoad {
			switch reps[x] {
			case 1:
				one = append(one, x)
			case 2:
				two = append(two, x)
			default:
				rest = append(rest, x)
			}
		}
		rng.Shuffle(len(rest), func(i, j int) { rest[i], rest[j] = rest[j], rest[i] })
		if c%2 == 0 {
			one, two = two, one
		}
		runs.setRuns(reps, loads, n, slots, rest, [2][]int32{one, two})
		ref.set(reps, loads, n, slots)
		for x := range e {
			if math.Float64bits(runs.w[x]) != math.Float64bits(ref.w[x]) || runs.capR[x] != ref.capR[x] {
				t.Fatalf("case %d (e=%d n=%d slots=%d): expert %d w %v capR %d, set's %v %d", c, e, n, slots, x, runs.w[x], runs.capR[x], ref.w[x], ref.capR[x])
			}
		}
		if !slices.Equal(runs.order[:e], ref.order[:e]) {
			t.Fatalf("case %d (e=%d n=%d slots=%d): order %v, set's %v", c, e, n, slots, runs.order[:e], ref.order[:e])
		}
	}
	if nearTies < 1000 {
		t.Fatalf("%d near ties: the cases do not exercise the insertion pass", nearTies)
	}
}

// TestPackBoundHolds: packBound is never above the busiest rank of the best
// packing of small counts, found by trying every packing, and it is that
// rank for some counts; the count search's plans are those it makes
// packing every count it tries on one node too (flat layers), where the
// bound is all that spares packings.
func TestPackBoundHolds(t *testing.T) {
	rng := rand.New(rand.NewPCG(59, 3))
	var p planner
	var checked, exact int
	for i := range 3000 {
		n, s := 1+rng.IntN(3), 1+rng.IntN(3)
		e := 1 + rng.IntN(n*s)
		reps := randomCounts(rng, e, n*s)
		loads := tiedLoads(rng, e, 10, 100)
		p.reps, p.rk.n, p.rk.s = reps, n, s
		p.wt.set(reps, loads, n, n*s)
		lb := p.packBound()
		var items []float64
		for x, c := range reps {
			for range c {
				items = append(items, p.wt.w[x])
			}
		}
		best := bestPacking(items, make([]float64, n), make([]int, n), s)
		if lb > best*(1+1e-12) {
			t.Fatalf("case %d (N=%d S=%d counts %v loads %v): bound %v above the best packing's busiest rank %v", i, n, s, reps, loads, lb, best)
		}
		if lb >= best*(1-1e-12) {
			exact++
		}
		checked++
	}
	if 4*exact < checked {
		t.Errorf("the bound is the best packing's busiest rank in %d of %d counts; want at least a quarter", exact, checked)
	}
	t.Logf("the bound is the best packing's busiest rank in %d of %d counts", exact, checked)

	skip, whole := new(planner), new(planner)
	var skipped spareTally
	for i := range 300 {
		n, s := 2+rng.IntN(15), 1+rng.IntN(6)
		topo := sdk.Topology{WorldSize: n, SlotsPerRank: s}
		loads := qualityLoads(rng, 1+rng.IntN(n*s))
		e := len(loads)
		got, want := make([]int, topo.TotalSlots()), make([]int, topo.TotalSlots())
		skip.search.skipped = 0
		if err := skip.planLayer(got, loads, nil, e, topo, options{}); err != nil {
			t.Fatal(err)
		}
		if err := whole.planLayer(want, loads, nil, e, topo, options{searchWhole: true}); err != nil {
			t.Fatal(err)
		}
		name := fmt.Sprintf("case %d (N=%d S=%d E=%d)", i, n, s, e)
		samePlans(t, name, got, want, "packing every count tried")
		skipped.add(t, name, "packings of counts", skip.search.skipped, 0)
	}
	skipped.check(t, "packings of counts", 20, 300)
}

// bestPacking is the lowest busiest rank over every packing of items onto
// ranks of s slots (loads and fill per rank, from items[0] on).
func bestPacking(items, loads []float64, fill []int, s int) float64 {
	if len(items) == 0 {
		return slices.Max(loads)
	}
	best := math.Inf(1)
	for r := range loads {
		if fill[r] == s || (r > 0 && fill[r] == 0 && fill[r-1] == 0) {
			continue // full, or an empty rank like the one before
		}
		loads[r] += items[0]
		fill[r]++
		best = min(best, bestPacking(items[1:], loads, fill, s))
		loads[r] -= items[0]
		fill[r]--
	}
	return best
}
