// Package hotspread is an example third-party strategy written only against
// the SwiftMoE plugin SDK: one replica per expert, every extra slot to the
// expert with the highest predicted load, laid out round-robin over ranks.
package hotspread

import (
	"context"
	"fmt"

	"github.com/swiftmoe/swiftmoe/plugins/sdk"
)

// Name is the strategy's name; its binary is swiftmoe-strategy-hotspread.
const Name = "hotspread"

// Strategy is stateless.
type Strategy struct{}

var (
	_ sdk.Strategy        = (*Strategy)(nil)
	_ sdk.OptionValidator = (*Strategy)(nil)
)

// New returns the strategy.
func New() *Strategy { return &Strategy{} }

// Info describes the strategy. It accepts no options.
func (*Strategy) Info() sdk.Info {
	return sdk.Info{Name: Name, Version: "0.1.0",
		Description: "example: every extra slot to the hottest expert, round-robin over ranks"}
}

// ValidateOptions refuses every option when a job registers, as Plan would:
// a misspelled option fails before training, not at the first plan.
func (*Strategy) ValidateOptions(opts map[string]string) error {
	return sdk.CheckOptions(opts)
}

// Plan lays out each layer: the hottest expert's replicas first, then one
// replica of every other expert, replica j on rank j mod N, so no rank holds
// more than ceil(r/N) replicas of an expert.
func (*Strategy) Plan(ctx context.Context, req *sdk.Request) (*sdk.Response, error) {
	if err := sdk.ValidateRequest(req); err != nil {
		return nil, err
	}
	if err := sdk.CheckOptions(req.Options); err != nil {
		return nil, err
	}
	t := req.Topology
	out := &sdk.Response{Layers: make([][]int, len(req.Layers))}
	for i, l := range req.Layers {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("planning layer %d: %w", l.Layer, err)
		}
		hot := 0
		for e, x := range l.Predicted {
			if x > l.Predicted[hot] {
				hot = e
			}
		}
		order := make([]int, 0, t.TotalSlots())
		for range t.TotalSlots() - l.NumExperts + 1 {
			order = append(order, hot)
		}
		for e := range l.NumExperts {
			if e != hot {
				order = append(order, e)
			}
		}
		slots := make([]int, t.TotalSlots())
		for j, e := range order {
			slots[(j%t.WorldSize)*t.SlotsPerRank+j/t.WorldSize] = e
		}
		out.Layers[i] = slots
	}
	return out, nil
}
