// Package static is expert parallelism as DeepSpeed-MoE lays it out: experts
// spread evenly over the ranks, replicated uniformly where slots exceed
// experts, and never moved.
package static

import (
	"context"

	"github.com/swiftmoe/swiftmoe/plugins/sdk"
)

// Name is the strategy's name; its plugin binary is swiftmoe-strategy-static.
const Name = "static"

// Version is the strategy's version, reported by Info.
const Version = "1.0.0"

// Strategy returns sdk.StaticSlots for every layer. It is stateless.
type Strategy struct{}

var _ sdk.Strategy = (*Strategy)(nil)

// New returns the static strategy.
func New() *Strategy { return &Strategy{} }

// Info describes the strategy. It accepts no options.
func (*Strategy) Info() sdk.Info {
	return sdk.Info{
		Name:        Name,
		Description: "static expert parallelism: slot r*S+s holds expert (r*S+s) mod E, whatever the load",
		Version:     Version,
	}
}

// Plan returns the static layout of every layer.
func (*Strategy) Plan(_ context.Context, req *sdk.Request) (*sdk.Response, error) {
	if err := sdk.ValidateRequest(req); err != nil {
		return nil, err
	}
	if err := sdk.CheckOptions(req.Options); err != nil {
		return nil, err
	}
	out := make([][]int, len(req.Layers))
	for i, l := range req.Layers {
		out[i] = sdk.StaticSlots(l.NumExperts, req.Topology)
	}
	return &sdk.Response{Layers: out}, nil
}
