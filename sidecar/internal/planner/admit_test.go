package planner

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	pb "github.com/swiftmoe/swiftmoe/bridge/gen/swiftmoe/v1"
	"github.com/swiftmoe/swiftmoe/plugins/sdk"
	"github.com/swiftmoe/swiftmoe/sidecar/internal/metrics"
	"github.com/swiftmoe/swiftmoe/sidecar/internal/testbin"
)

// flexLike declares options as flexmoe does.
var flexLike = []sdk.Option{
	{Name: "threshold", Default: "1.2", Type: sdk.OptionFloat, Min: 1, Max: math.Inf(1)},
	{Name: "interval", Default: "1", Type: sdk.OptionInt, Min: 1, Max: math.MaxInt32},
	{Name: "node_policy", Default: "spread", Type: sdk.OptionEnum, Values: []string{"spread", "pack"}},
}

// TestRegisterRefusesBadOptionValues: values the strategy refuses fail the
// registration with INVALID_ARGUMENT naming each option and what it accepts,
// and register nothing; the sidecar's own options never reach the strategy.
func TestRegisterRefusesBadOptionValues(t *testing.T) {
	var asked [][]string
	f := &fakeStrategies{options: flexLike}
	f.validate = func(opts map[string]string) error {
		keys := make([]string, 0, len(opts))
		for k := range opts {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		asked = append(asked, keys)
		return sdk.ValidateDeclared(opts, flexLike)
	}
	s := New(f, nil, nil)
	req := goodRegister()
	req.StrategyOptions = map[string]string{"threshold": "NaN", "interval": "0", "node_policy": "bogus", OptPredictor: PredictEWMA}
	_, err := s.RegisterJob(ctxT(t), req)
	wantProblems(t, err, []string{
		`strategy_options: option interval = "0"; want an integer in [1, 2147483647] (default 1) (strategy "fake")`,
		`option node_policy = "bogus"; want one of spread, pack (default spread)`,
		`option threshold = "NaN"; want a number in [1, inf] (default 1.2)`,
	})
	if _, err := s.GetPlan(ctxT(t), &pb.GetPlanRequest{JobId: req.JobId}); !errors.Is(err, ErrUnknownJob) {
		t.Errorf("GetPlan after the refused registration: got %v, want ErrUnknownJob", err)
	}
	if len(asked) != 1 || strings.Join(asked[0], ",") != "interval,node_policy,threshold" {
		t.Errorf("the strategy was asked about %v, want its own three options once", asked)
	}
	req.StrategyOptions = map[string]string{"threshold": "1.5", "interval": "10", OptPredictor: PredictEWMA}
	if _, err := s.RegisterJob(ctxT(t), req); err != nil {
		t.Errorf("good options: %v", err)
	}
	// A strategy that could not be asked (a plugin that hangs, or one that
	// died) does not block the registration.
	f.validate = func(map[string]string) error { return errors.New("plugin unreachable") }
	if _, err := s.RegisterJob(ctxT(t), req); err != nil {
		t.Errorf("options not checkable: got %v, want the job registered", err)
	}
}

// TestRefusedPluginServesThePlacementInForce: a sidecar that never saw the
// job (restarted) trusts the digest the job brings; a binary with another
// digest is refused, loudly, and the job keeps its placement in force with
// every report, without the plugin being called.
func TestRefusedPluginServesThePlacementInForce(t *testing.T) {
	good, tampered := strings.Repeat("a", 64), strings.Repeat("b", 64)
	first := New(&fakeStrategies{digest: good}, nil, nil)
	resp, err := first.RegisterJob(ctxT(t), goodRegister())
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.GetStrategy().GetSha256(); got != good || resp.GetPluginRefused() != "" {
		t.Fatalf("first registration: digest %q, refused %q; want %s trusted", got, resp.GetPluginRefused(), good)
	}

	var calls atomic.Int32
	f := &fakeStrategies{digest: tampered, plan: func(_ context.Context, _ string, req *sdk.Request) (*sdk.Response, error) {
		calls.Add(1)
		return staticResponse(req), nil
	}}
	m := metrics.New()
	s := New(f, m, nil)
	req := goodRegister()
	cur := [][]int{{0, 1, 2, 3, 4, 5, 0, 1}, {7, 6, 5, 4, 3, 2, 1, 0}}
	req.CurrentSlots = slotsOf(cur...)
	req.StrategySha256 = good
	resp, err = s.RegisterJob(ctxT(t), req)
	if err != nil {
		t.Fatalf("a refused plugin must not refuse the job: %v", err)
	}
	if r := resp.GetPluginRefused(); !strings.Contains(r, "plugin checksum refused") || !strings.Contains(r, tampered) {
		t.Errorf("plugin_refused: got %q, want the checksum refusal naming the binary's digest", r)
	}
	p := resp.GetInitialPlan()
	if p.GetSource() != pb.PlanSource_PLAN_SOURCE_LAST_VALID || p.GetFallbackReason() != "refused" {
		t.Errorf("initial plan: source %v reason %q, want LAST_VALID, refused", p.GetSource(), p.GetFallbackReason())
	}
	for it := range uint64(3) {
		p = report(t, s, req.JobId, it, []uint64{9, 1, 1, 1, 1, 1}, []uint64{1, 2, 3, 4, 5, 6, 7, 8})
		if p.GetSource() != pb.PlanSource_PLAN_SOURCE_LAST_VALID || p.GetFallbackReason() != "refused" || !strings.Contains(p.GetNote(), "refused") {
			t.Errorf("iteration %d: source %v reason %q note %q; want the placement in force, refused", it, p.GetSource(), p.GetFallbackReason(), p.GetNote())
		}
		for l, lp := range p.GetLayers() {
			if got := sdk.IntsFromProto(lp.GetSlots()); !slices.Equal(got, cur[l]) {
				t.Errorf("iteration %d layer %d: got %v, want the placement in force %v", it, l, got, cur[l])
			}
		}
	}
	if n := calls.Load(); n != 0 {
		t.Errorf("the refused plugin was asked for %d plans, want 0", n)
	}
	got, err := testbin.Gathered(m.Registry(), "swiftmoe_fallbacks_served_total", map[string]string{"strategy": "fake", "reason": "refused"})
	if err != nil || got != 3 {
		t.Errorf("fallback metric: got %v (%v), want 3", got, err)
	}

	// Registering again with the trusted binary back clears the refusal.
	f.digest = good
	resp, err = s.RegisterJob(ctxT(t), req)
	if err != nil || resp.GetPluginRefused() != "" {
		t.Fatalf("re-registration with the trusted binary: %v, refused %q", err, resp.GetPluginRefused())
	}
	if p := report(t, s, req.JobId, 3, []uint64{9, 1, 1, 1, 1, 1}, []uint64{1, 2, 3, 4, 5, 6, 7, 8}); p.GetSource() != pb.PlanSource_PLAN_SOURCE_STRATEGY || calls.Load() != 1 {
		t.Errorf("after the binary is back: source %v, %d plugin calls; want STRATEGY and 1", p.GetSource(), calls.Load())
	}
}

// TestHistoryRoundTrip: a job restored from its exported history predicts
// exactly as the job that kept running, with every predictor, including
// after its ring has wrapped.
func TestHistoryRoundTrip(t *testing.T) {
	for _, opts := range []map[string]string{
		{OptPredictor: PredictLast},
		{OptPredictor: PredictEWMA, OptEWMAAlpha: "0.3"},
	} {
		t.Run(opts[OptPredictor], func(t *testing.T) {
			var seen [2][][][]float64 // per service, per call, per layer
			newSvc := func(i int) *Service {
				return New(&fakeStrategies{plan: func(_ context.Context, _ string, req *sdk.Request) (*sdk.Response, error) {
					pred := make([][]float64, len(req.Layers))
					for l, in := range req.Layers {
						pred[l] = slices.Clone(in.Predicted)
					}
					seen[i] = append(seen[i], pred)
					return staticResponse(req), nil
				}}, nil, nil)
			}
			rng := rand.New(rand.NewPCG(1, 2))
			loads := make([][2][]uint64, 30)
			for i := range loads {
				for l, e := range []int{6, 8} {
					loads[i][l] = make([]uint64, e)
					for k := range loads[i][l] {
						loads[i][l][k] = rng.Uint64N(1000)
					}
				}
			}
			a := newSvc(0)
			req := goodRegister()
			req.StrategyOptions = opts
			if _, err := a.RegisterJob(ctxT(t), req); err != nil {
				t.Fatal(err)
			}
			const cut = 20 // past the 16 reports kept: the ring has wrapped
			for it := range cut {
				report(t, a, req.JobId, uint64(it), loads[it][0], loads[it][1])
			}
			exp, err := a.ExportJob(ctxT(t), &pb.ExportJobRequest{JobId: req.JobId})
			if err != nil {
				t.Fatal(err)
			}
			h := exp.GetHistory()
			if n := len(h.GetLayers()[1].GetReports()); n != DefaultHistory {
				t.Fatalf("exported %d reports, want the %d kept", n, DefaultHistory)
			}
			if got := h.GetLayers()[1].GetReports()[DefaultHistory-1].GetTokens(); !slices.Equal(got, loads[cut-1][1]) {
				t.Errorf("newest exported report %v, want the last reported %v", got, loads[cut-1][1])
			}
			if got := h.GetLayers()[0].GetReports()[0].GetTokens(); !slices.Equal(got, loads[cut-DefaultHistory][0]) {
				t.Errorf("oldest exported report %v, want %v", got, loads[cut-DefaultHistory][0])
			}
			b := newSvc(1)
			req2 := goodRegister()
			req2.StrategyOptions = opts
			req2.History = h
			if _, err := b.RegisterJob(ctxT(t), req2); err != nil {
				t.Fatal(err)
			}
			seen[0] = nil
			for it := cut; it < len(loads); it++ {
				report(t, a, req.JobId, uint64(it), loads[it][0], loads[it][1])
				report(t, b, req2.JobId, uint64(it), loads[it][0], loads[it][1])
			}
			if fmt.Sprint(seen[0]) != fmt.Sprint(seen[1]) || len(seen[1]) != len(loads)-cut {
				t.Errorf("predictions after the restore differ:\nkept running %v\nrestored     %v", seen[0], seen[1])
			}
			for i := range seen[0] {
				for l := range seen[0][i] {
					for e, x := range seen[0][i][l] {
						if math.Float64bits(x) != math.Float64bits(seen[1][i][l][e]) {
							t.Fatalf("call %d layer %d expert %d: %v vs %v, want the same bits", i, l, e, x, seen[1][i][l][e])
						}
					}
				}
			}
		})
	}
}

func TestHistoryValidation(t *testing.T) {
	good := func() *pb.JobHistory {
		return &pb.JobHistory{Layers: []*pb.LayerHistory{
			{Reports: []*pb.LayerLoads{{Tokens: make([]uint64, 6)}}, Series: []*pb.NamedSeries{{Name: "ewma", Values: make([]float64, 6)}}},
			{},
		}}
	}
	tests := []struct {
		name   string
		mutate func(*pb.JobHistory)
		want   string
	}{
		{"valid", func(*pb.JobHistory) {}, ""},
		{"layer count", func(h *pb.JobHistory) { h.Layers = h.Layers[:1] }, "history.layers: 1 entries, want one per MoE layer (2)"},
		{"report width", func(h *pb.JobHistory) { h.Layers[0].Reports[0].Tokens = []uint64{1} }, "history.layers[0].reports[0].tokens: 1 entries, want one per expert of the layer (6)"},
		{"too many reports", func(h *pb.JobHistory) {
			for range DefaultHistory {
				h.Layers[1].Reports = append(h.Layers[1].Reports, &pb.LayerLoads{Tokens: make([]uint64, 8)})
			}
			h.Layers[1].Series = []*pb.NamedSeries{{Name: "ewma", Values: make([]float64, 8)}}
			h.Layers[1].Reports = append(h.Layers[1].Reports, &pb.LayerLoads{Tokens: make([]uint64, 8)})
		}, "history.layers[1].reports: 17 reports, more than the 16"},
		{"unknown series", func(h *pb.JobHistory) { h.Layers[0].Series[0].Name = "median" }, `history.layers[0].series[0].name: unknown series "median"`},
		{"series width", func(h *pb.JobHistory) { h.Layers[0].Series[0].Values = []float64{1} }, "(ewma): 1 values, want one per expert of the layer (6)"},
		{"NaN", func(h *pb.JobHistory) { h.Layers[0].Series[0].Values[2] = math.NaN() }, "(ewma) value 2: NaN; want a finite number >= 0"},
		{"negative", func(h *pb.JobHistory) { h.Layers[0].Series[0].Values[0] = -1 }, "value 0: -1"},
		{"twice", func(h *pb.JobHistory) { h.Layers[0].Series = append(h.Layers[0].Series, h.Layers[0].Series[0]) }, `series "ewma" appears twice`},
		{"series without reports", func(h *pb.JobHistory) { h.Layers[0].Reports = nil }, "history.layers[0].series: state without reports"},
		{"reports without series", func(h *pb.JobHistory) { h.Layers[0].Series = nil }, "history.layers[0].series: has 0 of the series ewma"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := New(&fakeStrategies{}, nil, nil)
			req := goodRegister()
			req.History = good()
			tc.mutate(req.History)
			_, err := s.RegisterJob(ctxT(t), req)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			wantProblems(t, err, []string{tc.want})
		})
	}
	s := New(&fakeStrategies{}, nil, nil)
	req := goodRegister()
	req.StrategySha256 = "ABC"
	_, err := s.RegisterJob(ctxT(t), req)
	wantProblems(t, err, []string{`strategy_sha256: "ABC" is not a SHA-256 digest`})
	if _, err := s.ExportJob(ctxT(t), &pb.ExportJobRequest{JobId: "nope"}); !errors.Is(err, ErrUnknownJob) {
		t.Errorf("ExportJob of an unknown job: got %v, want ErrUnknownJob", err)
	}
}

// A job registered with the placement in force falls back to it as the last
// valid plan, not as the static plan.
func TestFallbackAfterRegisteringWithCurrentSlots(t *testing.T) {
	s := New(&fakeStrategies{plan: func(context.Context, string, *sdk.Request) (*sdk.Response, error) {
		return nil, errors.New("no plan today")
	}}, nil, nil)
	req := goodRegister()
	cur := [][]int{{0, 1, 2, 3, 4, 5, 0, 1}, {7, 6, 5, 4, 3, 2, 1, 0}}
	req.CurrentSlots = slotsOf(cur...)
	if _, err := s.RegisterJob(ctxT(t), req); err != nil {
		t.Fatal(err)
	}
	p := report(t, s, req.JobId, 0, []uint64{1, 1, 1, 1, 1, 1}, []uint64{1, 1, 1, 1, 1, 1, 1, 1})
	if p.GetSource() != pb.PlanSource_PLAN_SOURCE_LAST_VALID || p.GetFallbackReason() != "error" {
		t.Errorf("got source %v reason %q, want LAST_VALID, error", p.GetSource(), p.GetFallbackReason())
	}
	if got := sdk.IntsFromProto(p.GetLayers()[1].GetSlots()); !slices.Equal(got, cur[1]) {
		t.Errorf("got %v, want the placement in force %v", got, cur[1])
	}
}
