package swiftmoe

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/swiftmoe/swiftmoe/plugins/sdk"
)

// hotLoads is one iteration of a hot-set workload: the experts of hot take
// about half of total tokens, the rest share the other half, each expert's
// share varied by up to 10% (seeded).
func hotLoads(e int, hot []int, total float64, seed uint64) []uint64 {
	rng := rand.New(rand.NewPCG(seed, 11))
	out := make([]uint64, e)
	for x := range e {
		share := 0.5 / float64(e-len(hot))
		if slices.Contains(hot, x) {
			share = 0.5 / float64(len(hot))
		}
		out[x] = uint64(total * share * (0.95 + 0.1*rng.Float64()))
	}
	return out
}

// windowReq is a one-layer step-time request whose prediction is the latest
// of reports (latest first), which it carries as LastLoad and Earlier.
func windowReq(topo sdk.Topology, c costModel, reports [][]uint64, opts map[string]string) *sdk.Request {
	pred := make([]float64, len(reports[0]))
	for x, v := range reports[0] {
		pred[x] = float64(v)
	}
	req := stepReq(topo, c, pred, nil, opts)
	req.Layers[0].LastLoad = reports[0]
	req.Layers[0].Earlier = reports[1:]
	return req
}

// planPair plans reports' layer without a window (load_window=0) and with
// the default one.
func planPair(t *testing.T, topo sdk.Topology, c costModel, reports [][]uint64) (plain, win []int) {
	t.Helper()
	p, err := planReq(t, New(), windowReq(topo, c, reports, map[string]string{optLoadWindow: "0"}))
	if err != nil {
		t.Fatal(err)
	}
	w, err := planReq(t, New(), windowReq(topo, c, reports, nil))
	if err != nil {
		t.Fatal(err)
	}
	return p.Layers[0], w.Layers[0]
}

// windowMean is the weighted mean step estimate of slots as the windowed
// choice scores it: the prediction (the latest report) weighs as much as
// the earlier reports together.
func windowMean(c costModel, slots []int, reports [][]uint64, topo sdk.Topology) float64 {
	sum := 0.0
	for i, r := range reports {
		loads := make([]float64, len(r))
		for x, v := range r {
			loads[x] = float64(v)
		}
		s, _, _ := estimate(c, slots, loads, topo)
		if i == 0 {
			s *= float64(len(reports) - 1)
		}
		sum += s
	}
	return sum / float64(2*(len(reports)-1))
}

// everyExpertInEveryNode reports whether slots holds each expert on every
// node.
func everyExpertInEveryNode(slots []int, e int, topo sdk.Topology) bool {
	for _, per := range nodeCounts(slots, e, topo) {
		if slices.Contains(per, 0) {
			return false
		}
	}
	return true
}

// A hot set that moves every 3 iterations, at 50 GB/s between 2 nodes of
// 8: the plan for the latest loads alone leaves some experts in one node
// (crossing is cheap enough to trade for compute balance), and a newly hot
// expert then sends every other node's tokens across. Over the window the
// replicated layout (every expert in every node) is faster on average, and
// the windowed choice picks it.
func TestWindowPicksTheLayoutThatHoldsWhenTheHotSetMoves(t *testing.T) {
	const e = 32
	topo := sdk.Topology{WorldSize: 16, SlotsPerRank: 4, RanksPerNode: 8}
	c := h200(50)
	total := float64(4096 * 16 * 2)
	sets := [][]int{{3, 17, 5, 20}, {9, 26, 1, 11}, {12, 30, 7, 22}}
	reports := make([][]uint64, 8) // latest first
	for i := range reports {
		reports[i] = hotLoads(e, sets[i/3], total, uint64(i))
	}
	plain, win := planPair(t, topo, c, reports)
	checkPlan(t, "windowed", win, windowReq(topo, c, reports, nil).Layers[0].Predicted, topo)
	if everyExpertInEveryNode(plain, e, topo) {
		t.Fatalf("the plan for the prediction alone already holds every expert in every node; the case tests nothing")
	}
	if !everyExpertInEveryNode(win, e, topo) {
		t.Errorf("windowed plan %v leaves an expert in one node; want every expert in every node", win)
	}
	mp, mw := windowMean(c, plain, reports, topo), windowMean(c, win, reports, topo)
	if mw >= mp {
		t.Errorf("mean estimate over the window: windowed %.4f ms, prediction alone %.4f ms; want the windowed one lower", mw, mp)
	}
	// Without earlier reports (a request from before this field, or a
	// window the sidecar did not send) the option changes nothing.
	req := windowReq(topo, c, reports, nil)
	req.Layers[0].Earlier = nil
	none, err := planReq(t, New(), req)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(none.Layers[0], plain) {
		t.Errorf("without earlier reports: got %v, want the prediction's plan %v", none.Layers[0], plain)
	}
	// The plan in force being the replicated layout, the windowed choice
	// keeps it slot for slot (nothing moves).
	req = windowReq(topo, c, reports, nil)
	req.Layers[0].Current = win
	again, err := planReq(t, New(), req)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(again.Layers[0], win) {
		t.Errorf("with the replicated layout in force: got %v, want it kept %v", again.Layers[0], win)
	}
}

// Where the experts do not all fit in one node's slots (E=64, 6 slots, nodes
// of 8) there is no replicated layout to weigh, and the window changes
// nothing even when the hot set moves.
func TestWindowChangesNothingWithoutAReplicatedLayout(t *testing.T) {
	topo := sdk.Topology{WorldSize: 16, SlotsPerRank: 6, RanksPerNode: 8}
	c := h200(50)
	sets := [][]int{{3, 17, 40, 41}, {9, 26, 50, 60}, {12, 30, 33, 1}}
	reports := make([][]uint64, 8)
	for i := range reports {
		reports[i] = hotLoads(64, sets[i/3], float64(4096*16*8), uint64(i))
	}
	plain, win := planPair(t, topo, c, reports)
	if !slices.Equal(win, plain) {
		t.Errorf("windowed plan %v, want the prediction's plan %v", win, plain)
	}
}

// A hot set that stays put: every report of the window looks like the
// prediction, and the windowed choice keeps the plan the prediction alone
// gives.
func TestWindowKeepsTheChoiceWhenTheHotSetStays(t *testing.T) {
	for _, tc := range []struct {
		name  string
		e, s  int
		inter float64
	}{{"E=32 50GBps", 32, 4, 50}, {"E=32 12.5GBps", 32, 4, 12.5}, {"E=16 50GBps", 16, 4, 50}} {
		t.Run(tc.name, func(t *testing.T) {
			topo := sdk.Topology{WorldSize: 16, SlotsPerRank: tc.s, RanksPerNode: 8}
			c := h200(tc.inter)
			total := float64(4096 * 16 * 2)
			reports := make([][]uint64, 8)
			for i := range reports {
				reports[i] = hotLoads(tc.e, []int{3, 17}, total, uint64(i))
			}
			plain, win := planPair(t, topo, c, reports)
			if !slices.Equal(win, plain) {
				t.Errorf("windowed plan %v, want the prediction's plan %v", win, plain)
			}
		})
	}
}

// The windowed choice is deterministic and no worse over its window than
// the prediction's plan on random windows.
func TestWindowNeverWorseOverItsWindow(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 5))
	for i := range 40 {
		e := []int{16, 32, 64}[i%3]
		topo := sdk.Topology{WorldSize: 16, SlotsPerRank: 4 + 2*(i%2), RanksPerNode: 8}
		c := h200([]float64{12.5, 50}[i%2])
		reports := make([][]uint64, 2+rng.IntN(8))
		for k := range reports {
			hot := []int{rng.IntN(e), rng.IntN(e)}
			reports[k] = hotLoads(e, hot, float64(4096*16*2), rng.Uint64())
		}
		plain, win := planPair(t, topo, c, reports)
		_, again := planPair(t, topo, c, reports)
		if !slices.Equal(win, again) {
			t.Fatalf("case %d: two plans of one request differ", i)
		}
		mp, mw := windowMean(c, plain, reports, topo), windowMean(c, win, reports, topo)
		if mw > mp*(1+1e-9) {
			t.Errorf("case %d (E=%d, %d reports): windowed mean %.6f ms above the prediction plan's %.6f ms", i, e, len(reports), mw, mp)
		}
	}
}
