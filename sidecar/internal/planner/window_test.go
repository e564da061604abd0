package planner

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"

	pb "github.com/swiftmoe/swiftmoe/bridge/gen/swiftmoe/v1"
	"github.com/swiftmoe/swiftmoe/plugins/sdk"
)

// windowStrategies is a fake strategy that names a window option ("win",
// default 3) and keeps the last request's Earlier reports, copied.
func windowStrategies(named bool) (*fakeStrategies, func() [][][]uint64) {
	var mu sync.Mutex
	var earlier [][][]uint64
	f := &fakeStrategies{
		options: []sdk.Option{{Name: "win", Default: "3", Type: sdk.OptionInt, Min: 0, Max: 16}},
		plan: func(_ context.Context, _ string, req *sdk.Request) (*sdk.Response, error) {
			mu.Lock()
			defer mu.Unlock()
			earlier = make([][][]uint64, len(req.Layers))
			for l, in := range req.Layers {
				for _, r := range in.Earlier {
					earlier[l] = append(earlier[l], slices.Clone(r))
				}
			}
			return staticResponse(req), nil
		},
	}
	if named {
		f.windowOption = "win"
	}
	return f, func() [][][]uint64 {
		mu.Lock()
		defer mu.Unlock()
		return earlier
	}
}

// windowLoads is iteration it's report: layer 0 of 6 experts, layer 1 of 8.
func windowLoads(it int) [2][]uint64 {
	a, b := make([]uint64, 6), make([]uint64, 8)
	for e := range a {
		a[e] = uint64(100*it + e)
	}
	for e := range b {
		b[e] = uint64(1000*it + e)
	}
	return [2][]uint64{a, b}
}

func TestWindowSentOnlyWhenAskedAndPriced(t *testing.T) {
	priced := &pb.CostModel{TokenBytes: 1536, FlopsPerSecond: 4e14}
	tests := []struct {
		name    string
		named   bool              // the strategy names its window option
		opts    map[string]string // the job's options
		cost    *pb.CostModel
		perNode uint32
		interBW float64
		slots   uint32 // per rank: with 2 ranks per node, 3 fit layer 0 (6 experts) in a node, 4 both
		want    int    // reports sent before the latest, once 6 are kept
	}{
		{"asked, default 3", true, nil, priced, 2, 5e10, 4, 2},
		{"asked, job sets 5", true, map[string]string{"win": "5"}, priced, 2, 5e10, 4, 4},
		{"asked, job sets 0", true, map[string]string{"win": "0"}, priced, 2, 5e10, 4, 0},
		{"asked, job sets 1", true, map[string]string{"win": "1"}, priced, 2, 5e10, 4, 0},
		{"not asked", false, nil, priced, 2, 5e10, 4, 0},
		{"no cost model", true, nil, nil, 2, 5e10, 4, 0},
		{"no flops per second", true, nil, &pb.CostModel{TokenBytes: 1536}, 2, 5e10, 4, 0},
		{"one node", true, nil, priced, 0, 5e10, 4, 0},
		{"one node of all ranks", true, nil, priced, 4, 5e10, 4, 0},
		{"no inter-node bandwidth", true, nil, priced, 2, 0, 4, 0},
		{"layer 1 does not fit a node", true, nil, priced, 2, 5e10, 3, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, earlier := windowStrategies(tc.named)
			s := New(f, nil, nil)
			req := goodRegister()
			req.CostModel = tc.cost
			req.StrategyOptions = tc.opts
			req.Topology.RanksPerNode = tc.perNode
			req.Topology.InterNodeBandwidth = tc.interBW
			req.Topology.IntraNodeBandwidth = 3e11
			req.Topology.SlotsPerRank = tc.slots
			if _, err := s.RegisterJob(ctxT(t), req); err != nil {
				t.Fatal(err)
			}
			for it := range 6 {
				l := windowLoads(it)
				report(t, s, "job-1", uint64(it), l[0], l[1])
				got := earlier()
				want := min(tc.want, it)
				for layer := range 2 {
					if layer == 1 && tc.slots*2 < 8 {
						want = 0 // 8 experts do not fit 2 ranks of tc.slots
					}
					if len(got[layer]) != want {
						t.Fatalf("after report %d, layer %d: got %d earlier reports, want %d", it, layer, len(got[layer]), want)
					}
					// Latest first: the i-th is report it-1-i.
					for i, r := range got[layer] {
						if w := windowLoads(it - 1 - i)[layer]; !slices.Equal(r, w) {
							t.Errorf("after report %d, layer %d, earlier[%d]: got %v, want report %d's %v", it, layer, i, r, it-1-i, w)
						}
					}
				}
			}
		})
	}
}

// A job resumed from its exported history sends the same window as the
// uninterrupted job, so its plans stay bit-exact.
func TestWindowAfterResume(t *testing.T) {
	priced := &pb.CostModel{TokenBytes: 1536, FlopsPerSecond: 4e14}
	register := func(s *Service, h *pb.JobHistory) {
		req := goodRegister()
		req.CostModel = priced
		req.StrategyOptions = map[string]string{"win": "16"}
		req.Topology.InterNodeBandwidth = 5e10
		req.Topology.SlotsPerRank = 4
		req.History = h
		if _, err := s.RegisterJob(ctxT(t), req); err != nil {
			t.Fatal(err)
		}
	}
	fa, ea := windowStrategies(true)
	a := New(fa, nil, nil)
	register(a, nil)
	const cut, total = 20, 24 // past the 16 reports kept
	for it := range cut {
		l := windowLoads(it)
		report(t, a, "job-1", uint64(it), l[0], l[1])
	}
	exp, err := a.ExportJob(ctxT(t), &pb.ExportJobRequest{JobId: "job-1"})
	if err != nil {
		t.Fatal(err)
	}
	fb, eb := windowStrategies(true)
	b := New(fb, nil, nil)
	register(b, exp.GetHistory())
	for it := cut; it < total; it++ {
		l := windowLoads(it)
		report(t, a, "job-1", uint64(it), l[0], l[1])
		report(t, b, "job-1", uint64(it), l[0], l[1])
		ga, gb := ea(), eb()
		if len(ga[1]) != DefaultHistory-1 {
			t.Fatalf("report %d: the uninterrupted job sent %d earlier reports, want %d", it, len(ga[1]), DefaultHistory-1)
		}
		if fmt.Sprint(ga) != fmt.Sprint(gb) {
			t.Fatalf("report %d: the resumed job sent earlier reports %v, want the uninterrupted job's %v", it, gb, ga)
		}
	}
}
