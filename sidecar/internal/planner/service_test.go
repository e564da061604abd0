package planner

import (
	"context"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	pb "github.com/swiftmoe/swiftmoe/bridge/gen/swiftmoe/v1"
	"github.com/swiftmoe/swiftmoe/plugins/sdk"
	"github.com/swiftmoe/swiftmoe/sidecar/internal/metrics"
)

func TestShardBounds(t *testing.T) {
	tests := []struct {
		numel uint64
		n     int
		want  [][2]uint64 // offset, length per rank
	}{
		{10, 3, [][2]uint64{{0, 3}, {3, 3}, {6, 4}}},
		{8, 4, [][2]uint64{{0, 2}, {2, 2}, {4, 2}, {6, 2}}},
		{2, 4, [][2]uint64{{0, 0}, {0, 1}, {1, 0}, {1, 1}}},
		{7, 1, [][2]uint64{{0, 7}}},
		{1 << 36, 65536, nil},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%d/%d", tc.numel, tc.n), func(t *testing.T) {
			var next uint64
			for r := 0; r < tc.n; r++ {
				off, length := ShardBounds(tc.numel, r, tc.n)
				if off != next {
					t.Fatalf("rank %d: offset %d, want %d (contiguous)", r, off, next)
				}
				next = off + length
				if tc.want != nil && (off != tc.want[r][0] || length != tc.want[r][1]) {
					t.Errorf("rank %d: got [%d,+%d), want [%d,+%d)", r, off, length, tc.want[r][0], tc.want[r][1])
				}
			}
			if next != tc.numel {
				t.Errorf("ranges cover %d elements, want %d", next, tc.numel)
			}
		})
	}
}

func TestRegisterReturnsLayoutAndStaticPlan(t *testing.T) {
	s := New(&fakeStrategies{}, nil, nil)
	req := goodRegister()
	req.ExpertParamNumel = []uint64{10, 7}
	resp, err := s.RegisterJob(ctxT(t), req)
	if err != nil {
		t.Fatal(err)
	}
	if got := len(resp.GetShardLayout()); got != 2 {
		t.Fatalf("got %d layer layouts, want 2", got)
	}
	l1 := resp.GetShardLayout()[1]
	wantL1 := [][2]uint64{{0, 1}, {1, 2}, {3, 2}, {5, 2}} // 7 elements over 4 ranks
	for r, sr := range l1.GetRanges() {
		if sr.GetRank() != uint32(r) || sr.GetOffset() != wantL1[r][0] || sr.GetLength() != wantL1[r][1] {
			t.Errorf("layer 1 rank %d: got %v, want offset %d length %d", r, sr, wantL1[r][0], wantL1[r][1])
		}
	}
	p := resp.GetInitialPlan()
	if p.GetSource() != pb.PlanSource_PLAN_SOURCE_STRATEGY || p.GetIteration() != 0 {
		t.Errorf("initial plan: source %v iteration %d, want STRATEGY and 0", p.GetSource(), p.GetIteration())
	}
	topo := sdk.Topology{WorldSize: 4, SlotsPerRank: 2}
	for l, lp := range p.GetLayers() {
		want := sdk.StaticSlots(int(req.ExpertsPerLayer[l]), topo)
		if got := sdk.IntsFromProto(lp.GetSlots()); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("layer %d slots: got %v, want static %v", l, got, want)
		}
	}
	if resp.GetStrategy().GetPath() != "/x/swiftmoe-strategy-fake" {
		t.Errorf("strategy path: got %q", resp.GetStrategy().GetPath())
	}
}

func TestRemapSummary(t *testing.T) {
	// One layer, 2 ranks x 2 slots, 3 experts, numel 10 (shards 5/5), 2 bytes.
	prev := [][]int{{0, 1, 2, 0}}
	next := [][]int{{0, 1, 2, 1}}
	got := remapSummary(prev, next, []uint64{10}, 2, 2, 2)
	// Each rank holds 2 slots and receives 10-5 elements per slot: 20 bytes.
	// Each rank sends its 5-element shard to the 2 slots of the other: 20 bytes.
	want := &pb.RemapSummary{SendBytes: []uint64{20, 20}, RecvBytes: []uint64{20, 20}, TotalBytes: 40, ChangedSlots: 1}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("got %v, want %v", got, want)
	}
	// Uneven shards: numel 7 over 2 ranks is 3 and 4.
	got = remapSummary(nil, next, []uint64{7}, 1, 2, 2)
	want = &pb.RemapSummary{SendBytes: []uint64{6, 8}, RecvBytes: []uint64{8, 6}, TotalBytes: 14, ChangedSlots: 4}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("uneven: got %v, want %v", got, want)
	}
}

func TestHistoryPredictors(t *testing.T) {
	h := newHistory(2, 3)
	if got := h.predict(predictorConfig{kind: PredictLast}); fmt.Sprint(got) != "[0 0]" {
		t.Errorf("before any report: got %v, want zeros", got)
	}
	for _, x := range [][]uint64{{10, 0}, {20, 4}, {40, 8}, {80, 16}} {
		h.add(x, 0.5)
	}
	if got := h.predict(predictorConfig{kind: PredictLast}); fmt.Sprint(got) != "[80 16]" {
		t.Errorf("last: got %v, want [80 16]", got)
	}
	// ewma: 10 -> 15 -> 27.5 -> 53.75; 0 -> 2 -> 5 -> 10.5
	if got := h.predict(predictorConfig{kind: PredictEWMA, alpha: 0.5}); fmt.Sprint(got) != "[53.75 10.5]" {
		t.Errorf("ewma: got %v, want [53.75 10.5]", got)
	}
	if got := h.len(); got != 3 {
		t.Errorf("kept %d reports, want the ring size 3", got)
	}
	// The ring holds {20, 4}, {40, 8}, {80, 16}; then {30, 2} makes it
	// {40, 8}, {80, 16}, {30, 2}.
	h.add([]uint64{30, 2}, 0.5)
	for _, tc := range []struct {
		cfg  predictorConfig
		want string
	}{
		{predictorConfig{kind: PredictMax, window: 1}, "[30 2]"},
		{predictorConfig{kind: PredictMax, window: 2}, "[80 16]"},
		{predictorConfig{kind: PredictMax, window: 16}, "[80 16]"}, // as many as are kept
		// window 2: {80, 30} has mean 55 and deviation 25, {16, 2} 9 and 7.
		{predictorConfig{kind: PredictHedge, window: 2, sigmas: 1}, "[55 9]"},
		{predictorConfig{kind: PredictHedge, window: 2, sigmas: 0}, "[30 2]"},
	} {
		if got := h.predict(tc.cfg); fmt.Sprint(got) != tc.want {
			t.Errorf("%v: got %v, want %s", tc.cfg, got, tc.want)
		}
	}
	one := newHistory(1, 4)
	one.add([]uint64{7}, 0.5)
	if got := one.predict(predictorConfig{kind: PredictHedge, window: 4, sigmas: 2}); fmt.Sprint(got) != "[7]" {
		t.Errorf("hedge over one report: got %v, want [7]", got)
	}
}

func report(t *testing.T, s *Service, id string, it uint64, loads ...[]uint64) *pb.Plan {
	t.Helper()
	req := &pb.ReportLoadsRequest{JobId: id, Iteration: it}
	for _, l := range loads {
		req.Layers = append(req.Layers, &pb.LayerLoads{Tokens: l})
	}
	resp, err := s.ReportLoads(ctxT(t), req)
	if err != nil {
		t.Fatalf("ReportLoads: %v", err)
	}
	return resp.GetPlan()
}

func TestReportPlansWithPredictionsAndFallsBack(t *testing.T) {
	var mu sync.Mutex
	var seen []*sdk.Request
	fail := false
	f := &fakeStrategies{plan: func(_ context.Context, _ string, req *sdk.Request) (*sdk.Response, error) {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, req)
		if fail {
			return nil, errors.New("boom")
		}
		// Layer 0: the last slot takes expert 2; layer 1: swap the first
		// and last slots.
		resp := staticResponse(req)
		resp.Layers[0][7] = 2
		l1 := resp.Layers[1]
		l1[0], l1[7] = l1[7], l1[0]
		return resp, nil
	}}
	m := metrics.New()
	s := New(f, m, nil)
	req := goodRegister()
	req.StrategyOptions = map[string]string{"predictor": "ewma", "ewma_alpha": "0.25"}
	if _, err := s.RegisterJob(ctxT(t), req); err != nil {
		t.Fatal(err)
	}
	fail = true
	p := report(t, s, "job-1", 5, []uint64{8, 0, 0, 0, 0, 0}, []uint64{1, 1, 1, 1, 1, 1, 1, 1})
	if p.GetSource() != pb.PlanSource_PLAN_SOURCE_STATIC_FALLBACK || !strings.Contains(p.GetNote(), "boom") || !strings.Contains(p.GetNote(), "static plan") {
		t.Errorf("first failure: source %v note %q, want STATIC_FALLBACK naming the error", p.GetSource(), p.GetNote())
	}
	if p.GetIteration() != 6 {
		t.Errorf("iteration: got %d, want 6", p.GetIteration())
	}
	fail = false
	p = report(t, s, "job-1", 6, []uint64{0, 0, 0, 0, 0, 16}, []uint64{1, 1, 1, 1, 1, 1, 1, 1})
	if p.GetSource() != pb.PlanSource_PLAN_SOURCE_STRATEGY {
		t.Fatalf("got source %v, want STRATEGY", p.GetSource())
	}
	last := seen[len(seen)-1]
	// EWMA with alpha 0.25: expert 0 is 0.25*0 + 0.75*8 = 6, expert 5 is 0.25*16 = 4.
	if got := last.Layers[0].Predicted; got[0] != 6 || got[5] != 4 {
		t.Errorf("predicted: got %v, want expert 0 = 6 and expert 5 = 4", got)
	}
	if got := last.Layers[0].LastLoad; fmt.Sprint(got) != "[0 0 0 0 0 16]" {
		t.Errorf("last load: got %v", got)
	}
	if _, ok := last.Options["predictor"]; ok {
		t.Error("sidecar-level option predictor was passed to the strategy")
	}
	if got := last.ExpertWeightBytes; fmt.Sprint(got) != "[20 20]" {
		t.Errorf("expert weight bytes: got %v, want [20 20]", got)
	}
	if got := p.GetRemap().GetChangedSlots(); got != 3 {
		t.Errorf("changed slots: got %d, want 3", got)
	}
	// Layer 0 slots: 0 1 2 3 4 5 0 2; experts 0 and 2 have 2 replicas.
	if got := p.GetLayers()[0].GetReplicas(); fmt.Sprint(got) != "[2 1 2 1 1 1]" {
		t.Errorf("replicas: got %v", got)
	}
	// Rank r holds slots 2r, 2r+1; expert 0's load 6 is split 2 ways.
	if got := p.GetLayers()[0].GetRankLoad(); fmt.Sprint(got) != "[3 0 4 3]" {
		t.Errorf("rank load: got %v, want [3 0 4 3]", got)
	}
	if got, want := p.GetLayers()[0].GetMaxOverMean(), 4/2.5; math.Abs(got-want) > 1e-12 {
		t.Errorf("max_over_mean: got %v, want %v", got, want)
	}
	fail = true
	p2 := report(t, s, "job-1", 7, []uint64{1, 1, 1, 1, 1, 1}, []uint64{1, 1, 1, 1, 1, 1, 1, 1})
	if p2.GetSource() != pb.PlanSource_PLAN_SOURCE_LAST_VALID {
		t.Errorf("failure after a valid plan: got %v, want LAST_VALID", p2.GetSource())
	}
	if fmt.Sprint(p2.GetLayers()[0].GetSlots()) != fmt.Sprint(p.GetLayers()[0].GetSlots()) {
		t.Errorf("fallback slots %v differ from the last valid %v", p2.GetLayers()[0].GetSlots(), p.GetLayers()[0].GetSlots())
	}
	if p2.GetRemap().GetChangedSlots() != 0 {
		t.Errorf("fallback changed %d slots, want 0", p2.GetRemap().GetChangedSlots())
	}
	cur, err := s.GetPlan(ctxT(t), &pb.GetPlanRequest{JobId: "job-1"})
	if err != nil || cur != p2 {
		t.Errorf("GetPlan: got %v, %v; want the plan just served", cur.GetSource(), err)
	}
}

func TestCostModelReachesTheStrategy(t *testing.T) {
	var mu sync.Mutex
	var last *sdk.Request
	f := &fakeStrategies{plan: func(_ context.Context, _ string, req *sdk.Request) (*sdk.Response, error) {
		mu.Lock()
		defer mu.Unlock()
		last = req
		return staticResponse(req), nil
	}}
	for _, tc := range []struct {
		name string
		in   *pb.CostModel
		want sdk.CostModel
	}{
		{"absent: compute only", nil, sdk.CostModel{}},
		{"flops per token from the expert size", &pb.CostModel{TokenBytes: 1536, FlopsPerSecond: 4e14},
			sdk.CostModel{TokenBytes: 1536, FlopsPerToken: []float64{60, 60}, FlopsPerSecond: 4e14}},
		{"flops per token given", &pb.CostModel{TokenBytes: 8, FlopsPerToken: []float64{7}},
			sdk.CostModel{TokenBytes: 8, FlopsPerToken: []float64{7}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := New(f, nil, nil)
			req := goodRegister()
			req.CostModel = tc.in
			if _, err := s.RegisterJob(ctxT(t), req); err != nil {
				t.Fatal(err)
			}
			report(t, s, "job-1", 0, []uint64{1, 2, 3, 4, 5, 6}, []uint64{1, 1, 1, 1, 1, 1, 1, 1})
			mu.Lock()
			got := last.CostModel
			mu.Unlock()
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got cost model %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestReregisterReplacesJob(t *testing.T) {
	s := New(&fakeStrategies{}, metrics.New(), nil)
	if _, err := s.RegisterJob(ctxT(t), goodRegister()); err != nil {
		t.Fatal(err)
	}
	report(t, s, "job-1", 3, make([]uint64, 6), make([]uint64, 8))
	req := goodRegister()
	req.ExpertsPerLayer = []uint32{4}
	if _, err := s.RegisterJob(ctxT(t), req); err != nil {
		t.Fatal(err)
	}
	p, err := s.GetPlan(ctxT(t), &pb.GetPlanRequest{JobId: "job-1"})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.GetLayers()) != 1 || p.GetIteration() != 0 {
		t.Errorf("after re-registering: %d layers at iteration %d, want 1 layer at 0", len(p.GetLayers()), p.GetIteration())
	}
}

func TestUnavailableStrategyRegistersWithStaticPlan(t *testing.T) {
	s := New(&fakeStrategies{down: true}, nil, nil)
	resp, err := s.RegisterJob(ctxT(t), goodRegister())
	if err != nil {
		t.Fatal(err)
	}
	if p := resp.GetInitialPlan(); p.GetSource() != pb.PlanSource_PLAN_SOURCE_STATIC_FALLBACK || !strings.Contains(p.GetNote(), "failed to start") {
		t.Errorf("got source %v note %q, want STATIC_FALLBACK naming the start failure", p.GetSource(), p.GetNote())
	}
}

func TestGeneratedJobIDAndJobLimit(t *testing.T) {
	s := New(&fakeStrategies{}, nil, nil)
	req := goodRegister()
	req.JobId = ""
	ids := map[string]bool{}
	for i := 0; i < MaxJobs; i++ {
		resp, err := s.RegisterJob(ctxT(t), req)
		if err != nil {
			t.Fatalf("job %d: %v", i, err)
		}
		ids[resp.GetJobId()] = true
	}
	if len(ids) != MaxJobs {
		t.Errorf("got %d distinct generated ids, want %d", len(ids), MaxJobs)
	}
	if _, err := s.RegisterJob(ctxT(t), req); !errors.Is(err, ErrTooManyJobs) {
		t.Errorf("job %d: got %v, want ErrTooManyJobs", MaxJobs+1, err)
	}
}

func TestConcurrentJobs(t *testing.T) {
	s := New(&fakeStrategies{}, metrics.New(), nil)
	var wg sync.WaitGroup
	for j := 0; j < 8; j++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req := goodRegister()
			req.JobId = fmt.Sprintf("job-%d", j%4) // pairs of goroutines share a job
			if _, err := s.RegisterJob(ctxT(t), req); err != nil {
				t.Error(err)
				return
			}
			for it := uint64(0); it < 50; it++ {
				_, err := s.ReportLoads(ctxT(t), &pb.ReportLoadsRequest{JobId: req.JobId, Iteration: it,
					Layers: []*pb.LayerLoads{{Tokens: []uint64{1, 2, 3, 4, 5, it}}, {Tokens: make([]uint64, 8)}}})
				if err != nil {
					t.Error(err)
					return
				}
				if _, err := s.GetPlan(ctxT(t), &pb.GetPlanRequest{JobId: req.JobId}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

func TestCallerGivingUpGetsContextError(t *testing.T) {
	f := &fakeStrategies{plan: func(ctx context.Context, _ string, _ *sdk.Request) (*sdk.Response, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}}
	s := New(f, nil, nil)
	if _, err := s.RegisterJob(ctxT(t), goodRegister()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := s.ReportLoads(ctx, &pb.ReportLoadsRequest{JobId: "job-1", Layers: []*pb.LayerLoads{{Tokens: make([]uint64, 6)}, {Tokens: make([]uint64, 8)}}})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want context.DeadlineExceeded", err)
	}
	// The plan in force is unchanged: still the initial one.
	p, err := s.GetPlan(ctxT(t), &pb.GetPlanRequest{JobId: "job-1"})
	if err != nil || p.GetIteration() != 0 {
		t.Errorf("plan in force: iteration %d (%v), want the initial plan", p.GetIteration(), err)
	}
}
