// Package flexmoe is FlexMoE's rebalancing policy as a baseline: keep the
// placement in force until imbalance passes a threshold, then make a bounded
// number of replica moves, each from the expert with the least load per
// replica to the one with the most. In FlexMoE an expert's optimizer state
// moves with it, so the response reports the bytes those moves would
// migrate.
package flexmoe

import (
	"context"
	"fmt"
	"math"
	"slices"

	"github.com/swiftmoe/swiftmoe/plugins/sdk"
)

// Name is the strategy's name; its plugin binary is swiftmoe-strategy-flexmoe.
const Name = "flexmoe"

// Version is the strategy's version, reported by Info.
const Version = "1.0.0"

// Option names and defaults.
const (
	OptThreshold = "threshold"
	OptMaxMoves  = "max_moves"
	OptInterval  = "interval"

	DefaultThreshold = 1.2
	DefaultMaxMoves  = 4
	DefaultInterval  = 1
)

// Strategy adjusts the current plan. It is stateless given the request.
type Strategy struct{}

var (
	_ sdk.Strategy        = (*Strategy)(nil)
	_ sdk.OptionValidator = (*Strategy)(nil)
)

// New returns the flexmoe strategy.
func New() *Strategy { return &Strategy{} }

// Info describes the strategy and its options.
func (*Strategy) Info() sdk.Info {
	return sdk.Info{
		Name:        Name,
		Description: "FlexMoE baseline: when max_over_mean passes a threshold, move a few replicas from the coldest to the hottest expert; optimizer state moves with them",
		Version:     Version,
		Options: []sdk.Option{
			{Name: OptThreshold, Description: "max_over_mean above which a layer is rebalanced, >= 1", Default: "1.2",
				Type: sdk.OptionFloat, Min: 1, Max: math.Inf(1)},
			{Name: OptMaxMoves, Description: "most replica moves per layer per adjustment, >= 1", Default: "4",
				Type: sdk.OptionInt, Min: 1, Max: sdk.MaxSlotsPerLayer},
			{Name: OptInterval, Description: "check every interval iterations (iteration % interval == 0), >= 1", Default: "1",
				Type: sdk.OptionInt, Min: 1, Max: math.MaxInt32},
		},
	}
}

// ValidateOptions checks a job's options against their declarations in Info,
// listing every problem. The declarations bound each option as parseOptions
// does, so options accepted at registration never make Plan fail.
func (s *Strategy) ValidateOptions(opts map[string]string) error {
	return sdk.ValidateDeclared(opts, s.Info().Options)
}

type options struct {
	threshold float64
	maxMoves  int
	interval  int
}

func parseOptions(o map[string]string) (options, error) {
	var out options
	if err := sdk.CheckOptions(o, OptThreshold, OptMaxMoves, OptInterval); err != nil {
		return out, err
	}
	var err error
	if out.threshold, err = sdk.FloatOption(o, OptThreshold, DefaultThreshold, 1, math.Inf(1)); err != nil {
		return out, err
	}
	if out.maxMoves, err = sdk.IntOption(o, OptMaxMoves, DefaultMaxMoves, 1, sdk.MaxSlotsPerLayer); err != nil {
		return out, err
	}
	if out.interval, err = sdk.IntOption(o, OptInterval, DefaultInterval, 1, math.MaxInt32); err != nil {
		return out, err
	}
	return out, nil
}

// Plan returns every layer's plan: the current one (the static layout when
// none is given), adjusted where the policy triggers.
func (*Strategy) Plan(ctx context.Context, req *sdk.Request) (*sdk.Response, error) {
	if err := sdk.ValidateRequest(req); err != nil {
		return nil, err
	}
	opt, err := parseOptions(req.Options)
	if err != nil {
		return nil, err
	}
	t := req.Topology
	check := req.Iteration%uint64(opt.interval) == 0
	resp := &sdk.Response{Layers: make([][]int, len(req.Layers))}
	for i := range req.Layers {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("planning layer %d: %w", req.Layers[i].Layer, err)
		}
		l := &req.Layers[i]
		var plan []int
		if len(l.Current) == 0 {
			plan = sdk.StaticSlots(l.NumExperts, t)
		} else {
			if err := sdk.ValidateSlots(l.Current, l.NumExperts, t); err != nil {
				return nil, fmt.Errorf("layers[%d] (layer %d): current_slots is not a valid plan, and flexmoe only adjusts a valid one: %w", i, l.Layer, err)
			}
			plan = slices.Clone(l.Current)
		}
		resp.Layers[i] = plan
		if !check || len(l.Predicted) == 0 {
			continue
		}
		if sdk.MaxOverMean(sdk.RankLoads(plan, l.Predicted, t)) <= opt.threshold {
			continue
		}
		moves := rebalance(plan, l.Predicted, t, opt.maxMoves)
		if moves == 0 {
			continue
		}
		wb, ob, err := req.ExpertBytes(l.Layer)
		if err != nil {
			return nil, err
		}
		resp.MigratedBytes += uint64(moves) * (wb + ob)
	}
	return resp, nil
}
