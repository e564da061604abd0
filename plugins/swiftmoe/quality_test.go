package swiftmoe

import (
	"encoding/json"
	"flag"
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/swiftmoe/swiftmoe/plugins/sdk"
)

// The plan quality golden (testdata/quality.json) holds, for seeded random
// requests and for layers of the benchmark's requests, what a reference
// planner achieved: the estimated step time of the plan made for step time
// and the max_over_mean of the plan made for compute. The planner may get
// faster or better, never worse beyond qualityTolerance. The estimate of a
// fixed plan (the static layout) is held exactly, so that a change to the
// step model cannot move the yardstick.

var updateQuality = flag.Bool("update-quality", false,
	"rewrite testdata/quality.json from the planner as it is (only for a change that makes no case worse)")

// qualityTolerance is how much worse than the golden one case may be, as a
// fraction: 1e-4 of a step time or of max_over_mean.
const qualityTolerance = 1e-4

const qualityGolden = "testdata/quality.json"

// qualityCase is one request of the golden and its reference figures.
type qualityCase struct {
	Name    string  `json:"name"`
	StepMs  float64 `json:"step_ms"`   // estimated step time of the plan for step time
	Balance float64 `json:"balance"`   // max_over_mean of the plan for compute
	Static  float64 `json:"static_ms"` // estimated step time of the static layout
	Digest  string  `json:"digest"`    // of both plans, to tell changed plans apart
}

// qualityRequest is a one-layer request of the golden.
type qualityRequest struct {
	name  string
	topo  sdk.Topology
	cm    costModel
	loads []float64
	cur   []int
}

// qualityLoads draws loads of one of the simulator's workload shapes.
func qualityLoads(rng *rand.Rand, e int) []float64 {
	loads := make([]float64, e)
	total := float64(1024 * (1 + rng.IntN(64)))
	switch rng.IntN(5) {
	case 0: // a few hot experts take about half
		hot := 1 + rng.IntN(max(1, e/8))
		for i := range loads {
			loads[i] = total / 2 / float64(e)
		}
		for range hot {
			loads[rng.IntN(e)] += total / 2 / float64(hot)
		}
	case 1: // half idle
		for i := range loads {
			if rng.IntN(2) == 0 {
				loads[i] = math.Round(rng.Float64() * total / float64(e) * 2)
			}
		}
	case 2: // about uniform
		for i := range loads {
			loads[i] = math.Round(total / float64(e) * (0.9 + 0.2*rng.Float64()))
		}
	case 3: // random
		for i := range loads {
			loads[i] = math.Round(rng.Float64() * total / float64(e) * 2)
		}
	default:
		loads = zipfLoads(e, 0.5+rng.Float64()*1.2, total, rng.Uint64())
	}
	return loads
}

// qualityRequests are the golden's requests: seeded random layouts of 2 to
// 8 nodes, and layers of the benchmark's requests (with nodes of 8 at 12.5
// and 50 GB/s, and one node).
func qualityRequests(t testing.TB) []qualityRequest {
	rng := rand.New(rand.NewPCG(2504, 19925))
	var out []qualityRequest
	for i := range 400 {
		m := []int{2, 2, 2, 3, 4, 4, 8}[rng.IntN(7)]
		g := []int{1, 2, 4, 8, 8}[rng.IntN(5)]
		s := 1 + rng.IntN(8)
		n := m * g
		e := max(1, min(n*s, []int{8, 16, 32, 64, 128, 256}[rng.IntN(6)]))
		if rng.IntN(4) == 0 {
			e = 1 + rng.IntN(n*s)
		}
		topo := sdk.Topology{WorldSize: n, SlotsPerRank: s, RanksPerNode: g}
		cm := h200([]float64{3, 12.5, 12.5, 50, 50, 400}[rng.IntN(6)])
		if rng.IntN(3) == 0 {
			cm.burstSlots, cm.burstThreshold = 1, 1.1
		}
		loads := qualityLoads(rng, e)
		var cur []int
		switch rng.IntN(3) {
		case 1:
			cur = sdk.StaticSlots(e, topo)
		case 2: // the plan made for the previous iteration's loads
			prev := &qualityRequest{topo: topo, cm: cm, loads: qualityLoads(rng, e)}
			cur, _ = prev.plans(t)
		}
		out = append(out, qualityRequest{
			name: fmt.Sprintf("random %d: N=%d G=%d S=%d E=%d %gGBps bursts %d", i, n, g, s, e, cm.interBW/1e9, cm.burstSlots),
			topo: topo, cm: cm, loads: loads, cur: cur,
		})
	}
	for _, rpn := range []int{8, 0} {
		req := benchRequest(rpn)
		for _, bw := range []float64{12.5, 50} {
			if rpn == 0 && bw != 12.5 {
				continue
			}
			for l := range 4 {
				in := req.Layers[l]
				out = append(out, qualityRequest{
					name: fmt.Sprintf("bench layer %d: ranks_per_node %d %gGBps", l, rpn, bw),
					topo: req.Topology, cm: h200(bw), loads: in.Predicted, cur: in.Current,
				})
			}
		}
	}
	return out
}

// plans returns the plan for step time (the default objective) and the one
// for compute (objective=compute).
func (q *qualityRequest) plans(t testing.TB) (step, compute []int) {
	s := New()
	plan := func(opts map[string]string) []int {
		req := stepReq(q.topo, q.cm, q.loads, q.cur, opts)
		req.CostModel.BurstSlotsPerRank, req.CostModel.BurstThreshold = q.cm.burstSlots, q.cm.burstThreshold
		resp, err := planReq(t, s, req)
		if err != nil {
			t.Fatalf("%s: %v", q.name, err)
		}
		return resp.Layers[0]
	}
	return plan(nil), plan(map[string]string{optObjective: "compute"})
}

// measure plans q and returns its figures.
func (q *qualityRequest) measure(t testing.TB) qualityCase {
	step, compute := q.plans(t)
	ms := func(slots []int) float64 {
		if hierarchical(q.topo) == 0 {
			return 0
		}
		v, _, _ := estimate(q.cm, slots, q.loads, q.topo)
		return v
	}
	h := fnv.New64a()
	for _, v := range append(append([]int{}, step...), compute...) {
		fmt.Fprintf(h, "%d,", v)
	}
	return qualityCase{
		Name: q.name, StepMs: ms(step), Balance: balance(compute, q.loads, q.topo),
		Static: ms(sdk.StaticSlots(len(q.loads), q.topo)), Digest: fmt.Sprintf("%016x", h.Sum64()),
	}
}

func TestPlanQualityGolden(t *testing.T) {
	reqs := qualityRequests(t)
	got := make([]qualityCase, len(reqs))
	for i := range reqs {
		got[i] = reqs[i].measure(t)
	}
	if *updateQuality {
		writeGolden(t, qualityGolden, got)
		return
	}
	var want []qualityCase
	readGolden(t, qualityGolden, &want, len(got), "go test -run TestPlanQualityGolden -update-quality rewrites it from the planner as it is")
	var changed, better, worse int
	var sumGot, sumWant float64
	for i, w := range want {
		g := got[i]
		if g.Name != w.Name {
			t.Fatalf("case %d is %q, the golden's %q; rewrite it with -update-quality from the reference planner", i, g.Name, w.Name)
		}
		if math.Abs(g.Static-w.Static) > 1e-9*w.Static {
			t.Errorf("%s: the static layout is estimated at %.9g ms, the golden at %.9g: the step model changed", g.Name, g.Static, w.Static)
		}
		if g.StepMs > w.StepMs*(1+qualityTolerance) {
			t.Errorf("%s: the plan for step time is estimated at %.6g ms, the reference's at %.6g (+%.3f%%); want at most +%g%%",
				g.Name, g.StepMs, w.StepMs, 100*(g.StepMs/w.StepMs-1), 100*qualityTolerance)
		}
		if g.Balance > w.Balance*(1+qualityTolerance) {
			t.Errorf("%s: the plan for compute has max_over_mean %.6f, the reference's %.6f; want at most +%g%%",
				g.Name, g.Balance, w.Balance, 100*qualityTolerance)
		}
		if g.Digest != w.Digest {
			changed++
		}
		switch {
		case g.StepMs < w.StepMs*(1-1e-9) || g.Balance < w.Balance*(1-1e-9):
			better++
		case g.StepMs > w.StepMs*(1+1e-9) || g.Balance > w.Balance*(1+1e-9):
			worse++
		}
		sumGot += g.StepMs
		sumWant += w.StepMs
	}
	t.Logf("%d cases: %d plans differ from the reference's, %d better, %d worse within the tolerance; total step time %.6g ms against %.6g",
		len(got), changed, better, worse, sumGot, sumWant)
}

// writeGolden writes the cases got as the JSON golden at path.
func writeGolden[T any](t *testing.T, path string, got []T) {
	t.Helper()
	b, err := json.MarshalIndent(got, "", " ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %d cases to %s", len(got), path)
}

// readGolden reads the JSON golden at path into want (a pointer to a
// slice), which must hold n cases; fix says how the golden is made.
func readGolden[T any](t *testing.T, path string, want *[]T, n int, fix string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading the golden: %v (%s)", err, fix)
	}
	if err := json.Unmarshal(b, want); err != nil {
		t.Fatalf("%s: %v (%s)", path, err, fix)
	}
	if len(*want) != n {
		t.Fatalf("%s has %d cases, the test makes %d (%s)", path, len(*want), n, fix)
	}
}
