package swiftmoe

import (
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/swiftmoe/swiftmoe/plugins/sdk"
)

// The step model's golden (testdata/estimates.json) holds its estimates of
// seeded random plans (the static layout, random slots, and slots drawn by
// load). A rewrite for speed must estimate every plan the same, to 1e-9 of
// the step time. A model that routes differently, following the engine's
// split, rewrites it with -update-estimates (and the quality golden with
// -update-quality, whose yardstick it moves); TestStepModelRoutesAsTheEngine
// is what holds the routing to the engine's. Rewritten last when the node
// tier became proportional (a node's intake spread over its replicas, what
// it lacks sent from all its ranks, rather than from and to its last ones).

const estimatesGolden = "testdata/estimates.json"

var updateEstimates = flag.Bool("update-estimates", false,
	"rewrite testdata/estimates.json from the step model as it is (only when the engine's routing changed)")

// estimateCase is one plan of the golden and its estimate.
type estimateCase struct {
	Name      string  `json:"name"`
	StepMs    float64 `json:"step_ms"`
	ComputeMs float64 `json:"compute_ms"`
	A2aMs     float64 `json:"a2a_ms"`
	Sent      float64 `json:"sent"`     // tokens sent across nodes, all ranks
	Received  float64 `json:"received"` // tokens received across nodes
	Within    float64 `json:"within"`   // tokens sent within nodes
}

// estimateRequest is one plan of the golden.
type estimateRequest struct {
	name  string
	topo  sdk.Topology
	cm    costModel
	loads []float64
	slots []int
}

// randomNodeLayer draws a layer of 2 to 7 nodes of 1 to 8 ranks of 1 to 6
// slots, at most one expert per slot, with loads of qualityLoads.
func randomNodeLayer(rng *rand.Rand) (sdk.Topology, []float64) {
	m := 2 + rng.IntN(6)
	g := 1 + rng.IntN(8)
	s := 1 + rng.IntN(6)
	n := m * g
	e := 1 + rng.IntN(n*s)
	return sdk.Topology{WorldSize: n, SlotsPerRank: s, RanksPerNode: g}, qualityLoads(rng, e)
}

// randomCost draws the H200 cost model at 3, 12.5 or 50 GB/s between
// nodes, with the engine's bursts half the time.
func randomCost(rng *rand.Rand) costModel {
	cm := h200([]float64{3, 12.5, 50}[rng.IntN(3)])
	if rng.IntN(2) == 0 {
		cm.burstSlots, cm.burstThreshold = 1, 1.1
	}
	return cm
}

func estimateRequests() []estimateRequest {
	rng := rand.New(rand.NewPCG(7, 7))
	var out []estimateRequest
	for i := range 600 {
		topo, loads := randomNodeLayer(rng)
		n, g, s, e := topo.WorldSize, topo.RanksPerNode, topo.SlotsPerRank, len(loads)
		var slots []int
		kind := rng.IntN(3)
		switch kind {
		case 0:
			slots = sdk.StaticSlots(e, topo)
		case 1: // random slots, most experts held
			slots = make([]int, n*s)
			for k := range slots {
				slots[k] = rng.IntN(e)
			}
			for x := range e {
				if rng.IntN(4) > 0 {
					slots[rng.IntN(n*s)] = x
				}
			}
		default: // every expert, then replicas drawn by load, shuffled
			slots = make([]int, n*s)
			var total float64
			for _, l := range loads {
				total += l
			}
			for k := range slots {
				slots[k] = k % e
				if k >= e && total > 0 {
					u := rng.Float64() * total
					for x, l := range loads {
						if u -= l; u < 0 || x == e-1 {
							slots[k] = x
							break
						}
					}
				}
			}
			rng.Shuffle(len(slots), func(a, b int) { slots[a], slots[b] = slots[b], slots[a] })
		}
		cm := randomCost(rng)
		out = append(out, estimateRequest{
			name: fmt.Sprintf("%d: N=%d G=%d S=%d E=%d %gGBps bursts %d plan %d", i, n, g, s, e, cm.interBW/1e9, cm.burstSlots, kind),
			topo: topo, cm: cm, loads: loads, slots: slots,
		})
	}
	return out
}

func (q *estimateRequest) measure() estimateCase {
	var sm stepModel
	sm.reset(q.cm, q.loads, len(q.loads), q.topo.WorldSize, q.topo.RanksPerNode, q.topo.SlotsPerRank)
	step, compute, a2a := sm.eval(q.slots)
	c := estimateCase{Name: q.name, StepMs: step, ComputeMs: compute, A2aMs: a2a}
	for r := range q.topo.WorldSize {
		c.Sent += sm.se[r]
		c.Received += sm.re[r]
		c.Within += sm.si[r]
	}
	return c
}

func TestStepModelGolden(t *testing.T) {
	reqs := estimateRequests()
	got := make([]estimateCase, len(reqs))
	for i := range reqs {
		got[i] = reqs[i].measure()
	}
	if *updateEstimates {
		writeGolden(t, estimatesGolden, got)
		return
	}
	var want []estimateCase
	readGolden(t, estimatesGolden, &want, len(got), "a model that routes differently needs a new golden (-update-estimates) and a reason")
	for i, w := range want {
		g := got[i]
		if g.Name != w.Name {
			t.Fatalf("case %d is %q, the golden's %q", i, g.Name, w.Name)
		}
		tol := 1e-9 * max(w.StepMs, 1e-9)
		for _, f := range [][3]any{{"step", g.StepMs, w.StepMs}, {"compute", g.ComputeMs, w.ComputeMs}, {"all-to-all", g.A2aMs, w.A2aMs}} {
			if math.Abs(f[1].(float64)-f[2].(float64)) > tol {
				t.Errorf("%s: %s %.12g ms, the golden's %.12g", g.Name, f[0], f[1], f[2])
			}
		}
		vtol := 1e-9 * max(1, w.Sent+w.Received+w.Within)
		for _, f := range [][3]any{{"sent", g.Sent, w.Sent}, {"received", g.Received, w.Received}, {"within", g.Within, w.Within}} {
			if math.Abs(f[1].(float64)-f[2].(float64)) > vtol {
				t.Errorf("%s: %s %.12g tokens, the golden's %.12g", g.Name, f[0], f[1], f[2])
			}
		}
	}
}
