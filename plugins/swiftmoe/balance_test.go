package swiftmoe

import (
	"math"
	"slices"
	"testing"

	"github.com/swiftmoe/swiftmoe/plugins/sdk"
)

func TestBalanceZipf(t *testing.T) {
	topo := sdk.Topology{WorldSize: 16, SlotsPerRank: 8}
	loads := zipfLoads(64, 1.0, 1<<20, 1)
	got := balance(planOne(t, New(), topo, loads, nil), loads, topo)
	static := balance(sdk.StaticSlots(64, topo), loads, topo)
	t.Logf("Zipf(1.0) E=64 N=16 S=8: swiftmoe max_over_mean %.4f, static %.4f", got, static)
	if got > 1.05 {
		t.Errorf("swiftmoe max_over_mean = %.4f, want <= 1.05", got)
	}
	if static < 1.5 {
		t.Errorf("static max_over_mean = %.4f, want far above swiftmoe (>= 1.5)", static)
	}
}

// TestBalanceTrace plans every iteration of a recorded trace from its own
// loads. With 4 slots per rank every layer reaches <= 1.05. With 2 slots
// per rank 1.05 is out of reach for some layers whatever the counts (the
// exhaustive bound pairOptimum shows it), so there the test holds the plan
// near that bound instead. Planning from the previous iteration's loads is
// logged.
func TestBalanceTrace(t *testing.T) {
	trace := readTrace(t, "cheaders-e8-top2-aux0.jsonl")
	for _, topo := range []sdk.Topology{{WorldSize: 4, SlotsPerRank: 4}, {WorldSize: 8, SlotsPerRank: 2}} {
		s := New()
		var worstOwn, worstPrev, sumOwn, sumPrev, worstGap, sumGap float64
		var nOwn, nPrev, nGap, over, optOver int
		var prevPlans [][]int
		for i, it := range trace {
			plans := make([][]int, len(it.Loads))
			for l, loads := range it.Loads {
				plans[l] = planOne(t, s, topo, loads, nil)
				got := balance(plans[l], loads, topo)
				worstOwn = max(worstOwn, got)
				sumOwn += got
				nOwn++
				if got > 1.05 {
					over++
				}
				if topo.SlotsPerRank == 4 && got > 1.05 {
					t.Errorf("N=%d S=%d iteration %d layer %d: max_over_mean %.4f from its own loads, want <= 1.05", topo.WorldSize, topo.SlotsPerRank, it.Iteration, l, got)
				}
				if topo.SlotsPerRank == 2 && i%8 == 0 {
					opt := pairOptimum(loads, topo.WorldSize)
					if opt > 1.05 {
						optOver++
					}
					gap := got - opt
					worstGap = max(worstGap, gap)
					sumGap += gap
					nGap++
					if gap > 0.12 {
						t.Errorf("N=%d S=%d iteration %d layer %d: max_over_mean %.4f, best possible >= %.4f; want within 0.12", topo.WorldSize, topo.SlotsPerRank, it.Iteration, l, got, opt)
					}
				}
				if i > 0 {
					prev := balance(prevPlans[l], loads, topo)
					worstPrev = max(worstPrev, prev)
					sumPrev += prev
					nPrev++
				}
			}
			prevPlans = plans
		}
		t.Logf("trace N=%d S=%d: own loads mean %.4f worst %.4f (%d of %d layers over 1.05); previous iteration's loads mean %.4f worst %.4f",
			topo.WorldSize, topo.SlotsPerRank, sumOwn/float64(nOwn), worstOwn, over, nOwn, sumPrev/float64(nPrev), worstPrev)
		if nGap > 0 {
			t.Logf("trace N=%d S=%d: sampled %d layers, %d have no plan <= 1.05; gap to the bound mean %.4f worst %.4f",
				topo.WorldSize, topo.SlotsPerRank, nGap, optOver, sumGap/float64(nGap), worstGap)
			if mean := sumGap / float64(nGap); mean > 0.02 {
				t.Errorf("mean gap to the best possible max_over_mean = %.4f, want <= 0.02", mean)
			}
		}
	}
}

// pairOptimum is the least max_over_mean over all replica counts with two
// slots per rank and n ranks, each expert's load split evenly, ignoring the
// one-replica-per-rank rule: a lower bound for any plan. For given counts
// the best pairing matches the k-th heaviest replica with the k-th lightest.
func pairOptimum(loads []float64, n int) float64 {
	e, ns := len(loads), 2*n
	r := make([]int, e)
	items := make([]float64, 0, ns)
	var total float64
	for _, x := range loads {
		total += x
	}
	best := math.Inf(1)
	var rec func(i, left int)
	rec = func(i, left int) {
		if i == e-1 {
			r[i] = left
			items = items[:0]
			for k := range e {
				for range r[k] {
					items = append(items, loads[k]/float64(r[k]))
				}
			}
			slices.Sort(items)
			var m float64
			for k := range n {
				m = max(m, items[k]+items[ns-1-k])
			}
			best = min(best, m)
			return
		}
		for c := 1; c <= left-(e-1-i); c++ {
			r[i] = c
			rec(i+1, left-c)
		}
	}
	rec(0, ns)
	return best / (total / float64(n))
}
