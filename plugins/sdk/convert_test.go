package sdk

import (
	"reflect"
	"slices"
	"testing"

	"google.golang.org/protobuf/proto"

	pb "github.com/swiftmoe/swiftmoe/bridge/gen/swiftmoe/v1"
)

func TestRequestRoundTrip(t *testing.T) {
	want := sampleRequest()
	wire, err := proto.Marshal(RequestToProto(want))
	if err != nil {
		t.Fatal(err)
	}
	var msg pb.StrategyPlanRequest
	if err := proto.Unmarshal(wire, &msg); err != nil {
		t.Fatal(err)
	}
	got := RequestFromProto(&msg)
	if got.Topology != want.Topology || got.Iteration != want.Iteration || !reflect.DeepEqual(got.Options, want.Options) ||
		!slices.Equal(got.ExpertWeightBytes, want.ExpertWeightBytes) || !slices.Equal(got.ExpertOptimizerBytes, want.ExpertOptimizerBytes) ||
		!reflect.DeepEqual(got.CostModel, want.CostModel) {
		t.Fatalf("request header round trip: got %+v, want %+v", got, want)
	}
	if len(got.Layers) != len(want.Layers) {
		t.Fatalf("got %d layers, want %d", len(got.Layers), len(want.Layers))
	}
	for i, w := range want.Layers {
		g := got.Layers[i]
		if g.Layer != w.Layer || g.NumExperts != w.NumExperts || !slices.Equal(g.Predicted, w.Predicted) ||
			!slices.Equal(g.LastLoad, w.LastLoad) || !slices.Equal(g.Current, w.Current) || !reflect.DeepEqual(g.Earlier, w.Earlier) {
			t.Errorf("layer %d: got %+v, want %+v", i, g, w)
		}
	}
}

func TestRequestWithoutCostModelHasNoneOnTheWire(t *testing.T) {
	r := sampleRequest()
	r.CostModel = CostModel{}
	if m := RequestToProto(r); m.GetCostModel() != nil {
		t.Errorf("got cost_model %v on the wire, want none for an unknown cost model", m.GetCostModel())
	}
	if got := RequestFromProto(RequestToProto(r)).CostModel; !reflect.DeepEqual(got, CostModel{}) {
		t.Errorf("got %+v back, want the zero cost model", got)
	}
}

func TestResponseAndInfoRoundTrip(t *testing.T) {
	resp := &Response{Layers: [][]int{{0, 1, 2}, {2, 2, 0}}, MigratedBytes: 99, Note: "n"}
	got := ResponseFromProto(ResponseToProto(resp))
	if !reflect.DeepEqual(got, resp) {
		t.Errorf("response round trip: got %+v, want %+v", got, resp)
	}
	info := rotate{}.Info()
	if got := InfoFromProto(InfoToProto(info)); !reflect.DeepEqual(got, info) {
		t.Errorf("info round trip: got %+v, want %+v", got, info)
	}
}

func TestResponseNegativeIDsFailValidation(t *testing.T) {
	got := ResponseFromProto(ResponseToProto(&Response{Layers: [][]int{{0, -1}}}))
	if err := ValidateSlots(got.Layers[0], 2, Topology{WorldSize: 1, SlotsPerRank: 2}); err == nil {
		t.Errorf("a negative id survived the wire as %v and validated, want it rejected", got.Layers[0])
	}
}

// FuzzRequestFromProto decodes arbitrary bytes as a planning request; the
// decoding, validation and per-layer byte lookup must never panic, and an
// accepted request must hold what ValidateRequest promises.
func FuzzRequestFromProto(f *testing.F) {
	seed, _ := proto.Marshal(RequestToProto(sampleRequest()))
	f.Add(seed)
	f.Add([]byte{})
	f.Add([]byte{0x0a, 0x02, 0x08, 0x00})
	f.Fuzz(func(t *testing.T, raw []byte) {
		var msg pb.StrategyPlanRequest
		if proto.Unmarshal(raw, &msg) != nil {
			return
		}
		req := RequestFromProto(&msg)
		for _, l := range req.Layers {
			_, _, _ = req.ExpertBytes(l.Layer)
		}
		if ValidateRequest(req) != nil {
			return
		}
		ns := req.Topology.TotalSlots()
		for i, l := range req.Layers {
			if l.NumExperts < 1 || l.NumExperts > ns {
				t.Fatalf("layer %d: accepted num_experts %d with %d slots", i, l.NumExperts, ns)
			}
			for _, e := range l.Current {
				if e < 0 || e >= l.NumExperts {
					t.Fatalf("layer %d: accepted current id %d", i, e)
				}
			}
		}
	})
}

func TestValidateRequest(t *testing.T) {
	cases := []struct {
		name    string
		edit    func(r *Request)
		wantSub string
	}{
		{"valid", func(*Request) {}, ""},
		{"world size", func(r *Request) { r.Topology.WorldSize = 0 }, "topology.world_size"},
		{"slots", func(r *Request) { r.Topology.SlotsPerRank = 0 }, "topology.slots_per_rank"},
		{"ranks per node", func(r *Request) { r.Topology.RanksPerNode = -1 }, "topology.ranks_per_node"},
		{"huge", func(r *Request) { r.Topology.WorldSize = 1 << 20; r.Topology.SlotsPerRank = 4 }, "exceeds"},
		{"experts", func(r *Request) { r.Layers[0].NumExperts = 0 }, "num_experts is 0"},
		{"too many experts", func(r *Request) { r.Layers[1].NumExperts = 9 }, "raise slots_per_rank"},
		{"predicted length", func(r *Request) { r.Layers[0].Predicted = []float64{1} }, "predicted_load has 1 values"},
		{"predicted NaN", func(r *Request) { r.Layers[0].Predicted[2] = nan() }, "predicted_load[2]"},
		{"last load length", func(r *Request) { r.Layers[0].LastLoad = []uint64{1} }, "last_load"},
		{"current length", func(r *Request) { r.Layers[0].Current = []int{0} }, "current_slots has 1"},
		{"earlier length", func(r *Request) { r.Layers[0].Earlier[1] = []uint64{1, 2} }, "earlier_loads[1] has 2 values; want num_experts = 4"},
		{"earlier without last", func(r *Request) { r.Layers[0].LastLoad = nil }, "earlier_loads has 2 reports but last_load is empty"},
		{"earlier too many", func(r *Request) { r.Layers[0].Earlier = make([][]uint64, MaxEarlierLoads+1) }, "earlier_loads has 65 reports; at most 64"},
		{"current id", func(r *Request) { r.Layers[1].Current[5] = 3 }, "current_slots[5] (rank 2)"},
		{"token bytes", func(r *Request) { r.CostModel.TokenBytes = -1 }, "cost_model.token_bytes"},
		{"flops per second", func(r *Request) { r.CostModel.FlopsPerSecond = nan() }, "cost_model.flops_per_second"},
		{"flops per token", func(r *Request) { r.CostModel.FlopsPerToken[1] = -2 }, "cost_model.flops_per_token[1]"},
		{"burst slots", func(r *Request) { r.CostModel.BurstSlotsPerRank = -1 }, "cost_model.burst_slots_per_rank is -1"},
		{"burst threshold", func(r *Request) { r.CostModel.BurstThreshold = nan() }, "cost_model.burst_threshold"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := sampleRequest()
			tc.edit(r)
			err := ValidateRequest(r)
			if tc.wantSub == "" {
				if err != nil {
					t.Errorf("got %v, want valid", err)
				}
				return
			}
			if err == nil || !contains(err.Error(), tc.wantSub) {
				t.Errorf("got %v, want an error containing %q", err, tc.wantSub)
			}
		})
	}
}

func TestExpertBytes(t *testing.T) {
	r := sampleRequest() // weights per layer {10, 20}, optimizer one value {60}
	for _, tc := range []struct {
		layer      int
		w, o       uint64
		wantErrSub string
	}{{0, 10, 60, ""}, {1, 20, 60, ""}, {2, 0, 0, "expert_weight_bytes has 2 values"}} {
		w, o, err := r.ExpertBytes(tc.layer)
		if tc.wantErrSub != "" {
			if err == nil || !contains(err.Error(), tc.wantErrSub) {
				t.Errorf("layer %d: got %v, want error containing %q", tc.layer, err, tc.wantErrSub)
			}
			continue
		}
		if err != nil || w != tc.w || o != tc.o {
			t.Errorf("layer %d: got (%d, %d, %v), want (%d, %d, nil)", tc.layer, w, o, err, tc.w, tc.o)
		}
	}
	if w, o, err := (&Request{}).ExpertBytes(3); w != 0 || o != 0 || err != nil {
		t.Errorf("empty vectors: got (%d, %d, %v), want (0, 0, nil)", w, o, err)
	}
}

func TestFlopsPerTokenOf(t *testing.T) {
	r := sampleRequest() // {2.8e7, 5.6e7}
	if v, err := r.FlopsPerTokenOf(1); err != nil || v != 5.6e7 {
		t.Errorf("layer 1: got (%v, %v), want (5.6e7, nil)", v, err)
	}
	if _, err := r.FlopsPerTokenOf(2); err == nil || !contains(err.Error(), "cost_model.flops_per_token has 2 values") {
		t.Errorf("layer 2: got %v, want an error naming cost_model.flops_per_token", err)
	}
	r.CostModel.FlopsPerToken = []float64{7}
	if v, err := r.FlopsPerTokenOf(5); err != nil || v != 7 {
		t.Errorf("one value for all layers: got (%v, %v), want (7, nil)", v, err)
	}
	if v, err := (&Request{}).FlopsPerTokenOf(3); err != nil || v != 0 {
		t.Errorf("unknown: got (%v, %v), want (0, nil)", v, err)
	}
}

func TestOptions(t *testing.T) {
	opts := map[string]string{"f": "1.5", "i": "3", "bad": "x"}
	if v, err := FloatOption(opts, "f", 2, 1, 2); err != nil || v != 1.5 {
		t.Errorf("FloatOption = %v, %v; want 1.5", v, err)
	}
	if v, err := FloatOption(opts, "missing", 2, 1, 3); err != nil || v != 2 {
		t.Errorf("FloatOption default = %v, %v; want 2", v, err)
	}
	if _, err := FloatOption(opts, "bad", 2, 1, 3); err == nil || !contains(err.Error(), "option bad") {
		t.Errorf("FloatOption(bad) = %v, want an error naming the option", err)
	}
	if v, err := IntOption(opts, "i", 1, 1, 5); err != nil || v != 3 {
		t.Errorf("IntOption = %v, %v; want 3", v, err)
	}
	if _, err := IntOption(opts, "i", 1, 4, 5); err == nil || !contains(err.Error(), "[4, 5]") {
		t.Errorf("IntOption out of range = %v, want an error with the range", err)
	}
	if err := CheckOptions(opts, "f", "i"); err == nil || !contains(err.Error(), `"bad"`) {
		t.Errorf("CheckOptions = %v, want an error naming \"bad\"", err)
	}
	if err := CheckOptions(nil); err != nil {
		t.Errorf("CheckOptions(nil) = %v, want nil", err)
	}
}
