package planner

import (
	"context"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	pb "github.com/swiftmoe/swiftmoe/bridge/gen/swiftmoe/v1"
	"github.com/swiftmoe/swiftmoe/plugins/sdk"
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func goodRegister() *pb.RegisterJobRequest {
	return &pb.RegisterJobRequest{
		JobId:                  "job-1",
		Topology:               &pb.Topology{WorldSize: 4, RanksPerNode: 2, SlotsPerRank: 2},
		ExpertsPerLayer:        []uint32{6, 8},
		ExpertParamNumel:       []uint64{10},
		BytesPerParam:          2,
		OptimizerBytesPerParam: 12,
		Strategy:               "fake",
	}
}

func TestRegisterValidation(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*pb.RegisterJobRequest)
		want   []string // substrings, each must appear
	}{
		{"valid", func(*pb.RegisterJobRequest) {}, nil},
		{"no topology", func(r *pb.RegisterJobRequest) { r.Topology = nil }, []string{"topology: required"}},
		{"world size 0", func(r *pb.RegisterJobRequest) { r.Topology.WorldSize = 0 }, []string{"topology.world_size: 0 is out of range"}},
		{"world size huge", func(r *pb.RegisterJobRequest) { r.Topology.WorldSize = 1 << 20 }, []string{"topology.world_size", "1..65536"}},
		{"slots 0", func(r *pb.RegisterJobRequest) { r.Topology.SlotsPerRank = 0 }, []string{"topology.slots_per_rank: 0"}},
		{"ranks per node not dividing", func(r *pb.RegisterJobRequest) { r.Topology.RanksPerNode = 3 }, []string{"topology.ranks_per_node: 3 does not divide world_size 4"}},
		{"nan bandwidth", func(r *pb.RegisterJobRequest) { r.Topology.InterNodeBandwidth = math.NaN() }, []string{"topology.inter_node_bandwidth"}},
		{"negative bandwidth", func(r *pb.RegisterJobRequest) { r.Topology.IntraNodeBandwidth = -1 }, []string{"topology.intra_node_bandwidth"}},
		{"no layers", func(r *pb.RegisterJobRequest) { r.ExpertsPerLayer = nil }, []string{"experts_per_layer: empty"}},
		{"zero experts", func(r *pb.RegisterJobRequest) { r.ExpertsPerLayer = []uint32{6, 0} }, []string{"experts_per_layer[1]: 0 is out of range"}},
		{"too many experts", func(r *pb.RegisterJobRequest) { r.ExpertsPerLayer = []uint32{9, 8} }, []string{"experts_per_layer[0]: 9 experts do not fit", "raise slots_per_rank to at least 3"}},
		{"too many slots", func(r *pb.RegisterJobRequest) {
			r.Topology.WorldSize, r.Topology.SlotsPerRank, r.ExpertsPerLayer = 65536, 64, []uint32{1, 1}
		}, []string{"exceed the limit"}},
		{"numel length", func(r *pb.RegisterJobRequest) { r.ExpertParamNumel = []uint64{1, 2, 3} }, []string{"expert_param_numel: 3 entries, want 1"}},
		{"numel zero", func(r *pb.RegisterJobRequest) { r.ExpertParamNumel = []uint64{5, 0} }, []string{"expert_param_numel[1]: 0 is out of range"}},
		{"numel missing", func(r *pb.RegisterJobRequest) { r.ExpertParamNumel = nil }, []string{"expert_param_numel: 0 entries"}},
		{"bytes per param", func(r *pb.RegisterJobRequest) { r.BytesPerParam = 0 }, []string{"bytes_per_param: 0 is out of range", "2 for bf16"}},
		{"optimizer bytes", func(r *pb.RegisterJobRequest) { r.OptimizerBytesPerParam = 1000 }, []string{"optimizer_bytes_per_param: 1000"}},
		{"no strategy", func(r *pb.RegisterJobRequest) { r.Strategy = "" }, []string{"strategy: required"}},
		{"unknown strategy", func(r *pb.RegisterJobRequest) { r.Strategy = "nope" }, []string{"unknown strategy \"nope\"", "available strategies: fake"}},
		{"bad job id", func(r *pb.RegisterJobRequest) { r.JobId = "a/b" }, []string{"job_id: \"a/b\" is not valid"}},
		{"bad predictor", func(r *pb.RegisterJobRequest) { r.StrategyOptions = map[string]string{"predictor": "oracle"} }, []string{`strategy_options["predictor"]: unknown predictor "oracle"`, `"max"`, `"hedge"`}},
		{"alpha without ewma", func(r *pb.RegisterJobRequest) { r.StrategyOptions = map[string]string{"ewma_alpha": "0.3"} }, []string{"set predictor=ewma"}},
		{"alpha out of range", func(r *pb.RegisterJobRequest) {
			r.StrategyOptions = map[string]string{"predictor": "ewma", "ewma_alpha": "1.5"}
		}, []string{`strategy_options["ewma_alpha"]: 1.5 is out of range`}},
		{"alpha not a number", func(r *pb.RegisterJobRequest) {
			r.StrategyOptions = map[string]string{"predictor": "ewma", "ewma_alpha": "NaN"}
		}, []string{`"NaN" is not a number`}},
		{"window out of range", func(r *pb.RegisterJobRequest) {
			r.StrategyOptions = map[string]string{"predictor": "max", "predictor_window": "17"}
		}, []string{`strategy_options["predictor_window"]: "17" is not an iteration count in 1..16`}},
		{"window without a windowed predictor", func(r *pb.RegisterJobRequest) {
			r.StrategyOptions = map[string]string{"predictor_window": "3"}
		}, []string{"set predictor=max or predictor=hedge, or drop predictor_window"}},
		{"hedge sigmas", func(r *pb.RegisterJobRequest) {
			r.StrategyOptions = map[string]string{"predictor": "hedge", "hedge_sigmas": "-1"}
		}, []string{`strategy_options["hedge_sigmas"]: "-1" is not a number in [0, 100]`}},
		{"hedge sigmas without hedge", func(r *pb.RegisterJobRequest) {
			r.StrategyOptions = map[string]string{"predictor": "max", "hedge_sigmas": "1"}
		}, []string{"set predictor=hedge or drop hedge_sigmas"}},
		{"unknown option", func(r *pb.RegisterJobRequest) { r.StrategyOptions = map[string]string{"colour": "red"} }, []string{`unknown option "colour" for strategy "fake"; it accepts threshold, predictor, ewma_alpha`}},
		{"bad option key", func(r *pb.RegisterJobRequest) { r.StrategyOptions = map[string]string{"a b": "1"} }, []string{`key "a b" is not valid`}},
		{"cost model token bytes", func(r *pb.RegisterJobRequest) { r.CostModel = &pb.CostModel{TokenBytes: -1} }, []string{"cost_model.token_bytes: -1 is out of range", "d_model x bytes per element"}},
		{"cost model flops per second", func(r *pb.RegisterJobRequest) {
			r.CostModel = &pb.CostModel{FlopsPerSecond: math.Inf(1)}
		}, []string{"cost_model.flops_per_second: +Inf is out of range"}},
		{"cost model flops per token length", func(r *pb.RegisterJobRequest) {
			r.CostModel = &pb.CostModel{FlopsPerToken: []float64{1, 2, 3}}
		}, []string{"cost_model.flops_per_token: 3 entries, want none (6 x expert_param_numel), 1 (for every layer) or one per layer (2)"}},
		{"cost model flops per token value", func(r *pb.RegisterJobRequest) {
			r.CostModel = &pb.CostModel{FlopsPerToken: []float64{1, math.NaN()}}
		}, []string{"cost_model.flops_per_token[1]: NaN is out of range"}},
		{"cost model burst slots", func(r *pb.RegisterJobRequest) { r.CostModel = &pb.CostModel{BurstSlotsPerRank: 5000} }, []string{"cost_model.burst_slots_per_rank: 5000 is out of range"}},
		{"cost model burst threshold", func(r *pb.RegisterJobRequest) { r.CostModel = &pb.CostModel{BurstThreshold: 0.5} }, []string{"cost_model.burst_threshold: 0.5 is below 1"}},
		{"several problems at once", func(r *pb.RegisterJobRequest) {
			r.Topology.WorldSize, r.BytesPerParam, r.Strategy = 0, 0, ""
		}, []string{"3 problems", "topology.world_size", "bytes_per_param", "strategy: required"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := New(&fakeStrategies{options: []sdk.Option{{Name: "threshold"}}}, nil, nil)
			req := goodRegister()
			tc.mutate(req)
			resp, err := s.RegisterJob(ctxT(t), req)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("got %v, want success", err)
				}
				if resp.GetJobId() != "job-1" {
					t.Errorf("job id: got %q, want job-1", resp.GetJobId())
				}
				return
			}
			wantProblems(t, err, tc.want)
		})
	}
}

// wantProblems fails unless err is a *ValidationError whose text has every
// string of want.
func wantProblems(t *testing.T, err error, want []string) {
	t.Helper()
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("got %v, want a *ValidationError", err)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not contain %q", err, w)
		}
	}
}

func TestReportValidation(t *testing.T) {
	s := New(&fakeStrategies{}, nil, nil)
	if _, err := s.RegisterJob(ctxT(t), goodRegister()); err != nil {
		t.Fatal(err)
	}
	loads := func(sizes ...int) []*pb.LayerLoads {
		out := make([]*pb.LayerLoads, len(sizes))
		for i, n := range sizes {
			out[i] = &pb.LayerLoads{Tokens: make([]uint64, n)}
		}
		return out
	}
	tests := []struct {
		name    string
		req     *pb.ReportLoadsRequest
		unknown bool
		want    []string
	}{
		{"valid", &pb.ReportLoadsRequest{JobId: "job-1", Layers: loads(6, 8)}, false, nil},
		{"no job id", &pb.ReportLoadsRequest{Layers: loads(6, 8)}, false, []string{"job_id: required"}},
		{"unknown job", &pb.ReportLoadsRequest{JobId: "job-2", Layers: loads(6, 8)}, true, []string{"call RegisterJob first"}},
		{"layer count", &pb.ReportLoadsRequest{JobId: "job-1", Layers: loads(6)}, false, []string{"layers: 1 entries, want one per MoE layer of the job (2)"}},
		{"expert count", &pb.ReportLoadsRequest{JobId: "job-1", Layers: loads(5, 9)}, false, []string{"layers[0].tokens: 5 entries", "layers[1].tokens: 9 entries"}},
		{"last iteration", &pb.ReportLoadsRequest{JobId: "job-1", Iteration: math.MaxUint64, Layers: loads(6, 8)}, false, []string{"iteration:"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.ReportLoads(ctxT(t), tc.req)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("got %v, want success", err)
				}
				return
			}
			if tc.unknown != errors.Is(err, ErrUnknownJob) {
				t.Errorf("errors.Is(ErrUnknownJob): got %v, want %v (%v)", !tc.unknown, tc.unknown, err)
			}
			for _, w := range tc.want {
				if err == nil || !strings.Contains(err.Error(), w) {
					t.Errorf("error %v does not contain %q", err, w)
				}
			}
		})
	}
	if _, err := s.GetPlan(ctxT(t), &pb.GetPlanRequest{JobId: "job-9"}); !errors.Is(err, ErrUnknownJob) {
		t.Errorf("GetPlan of an unknown job: got %v, want ErrUnknownJob", err)
	}
}

func TestProblemsAreCapped(t *testing.T) {
	s := New(&fakeStrategies{}, nil, nil)
	req := goodRegister()
	req.ExpertsPerLayer = make([]uint32, 100) // 100 zero-expert layers
	_, err := s.RegisterJob(ctxT(t), req)
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("got %v, want a *ValidationError", err)
	}
	if got := len(ve.Problems); got != maxProblems+1 {
		t.Errorf("got %d problems listed, want %d plus a count of the rest", got, maxProblems)
	}
	if !strings.Contains(err.Error(), "more problems") {
		t.Errorf("error %q does not count the dropped problems", err)
	}
}
