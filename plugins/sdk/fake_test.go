package sdk

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// rotate is a test strategy written only against the SDK: the static layout
// rotated by the iteration, so every call's answer depends on its request.
type rotate struct{}

var _ Strategy = rotate{}

func (rotate) Info() Info {
	return Info{Name: "rotate", Description: "static layout rotated by the iteration", Version: "0.1",
		Options:          []Option{{Name: "fail", Description: "fail every plan", Default: "false"}, {Name: "w", Default: "2", Type: OptionInt, Max: 16}},
		LoadWindowOption: "w"}
}

func (rotate) Plan(ctx context.Context, req *Request) (*Response, error) {
	if err := ValidateRequest(req); err != nil {
		return nil, err
	}
	if err := CheckOptions(req.Options, "fail"); err != nil {
		return nil, err
	}
	if req.Options["fail"] == "true" {
		return nil, errors.New("asked to fail")
	}
	out := &Response{Note: fmt.Sprintf("iteration %d", req.Iteration), MigratedBytes: req.Iteration}
	for _, l := range req.Layers {
		static := StaticSlots(l.NumExperts, req.Topology)
		k := int(req.Iteration % uint64(len(static)))
		out.Layers = append(out.Layers, append(static[k:], static[:k]...))
	}
	return out, ctx.Err()
}

func sampleRequest() *Request {
	return &Request{
		Topology:  Topology{WorldSize: 4, RanksPerNode: 2, SlotsPerRank: 2, IntraNodeBandwidth: 1e11, InterNodeBandwidth: 1.25e10},
		Iteration: 7,
		Options:   map[string]string{"a": "1"},
		Layers: []LayerInput{
			{Layer: 0, NumExperts: 4, Predicted: []float64{1, 2.5, 0, 4}, LastLoad: []uint64{1, 2, 0, 4}, Current: []int{0, 1, 2, 3, 0, 1, 2, 3},
				Earlier: [][]uint64{{4, 0, 2, 1}, {7, 7, 7, 7}}},
			{Layer: 1, NumExperts: 3, Predicted: []float64{9, 0, 1}, Current: []int{0, 1, 2, 0, 1, 2, 0, 1}},
		},
		ExpertWeightBytes:    []uint64{10, 20},
		ExpertOptimizerBytes: []uint64{60},
		CostModel:            CostModel{TokenBytes: 1536, FlopsPerToken: []float64{2.8e7, 5.6e7}, FlopsPerSecond: 4e14, BurstSlotsPerRank: 1, BurstThreshold: 1.1},
	}
}

func nan() float64 { var z float64; return z / z }

func contains(s, sub string) bool { return strings.Contains(s, sub) }
