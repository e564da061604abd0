// Package swiftmoe is SwiftMoE's own placement strategy: replica counts
// proportional to each expert's predicted load, then replicas packed onto
// ranks so that every rank does about the same work.
package swiftmoe

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/swiftmoe/swiftmoe/plugins/sdk"
)

// Name is the strategy's name; its plugin binary is swiftmoe-strategy-swiftmoe.
const Name = "swiftmoe"

// Version is the strategy's version, reported by Info: 1.1.0 plans for step time
// when the job gives a cost model and weighs the load window (load_window);
// 1.2.0 adds 2-homed hybrid layouts on 3 to 8 nodes (two_home_margin);
// 1.3.0 lets intake-dealt plans be tried on more nodes (intake_deal_nodes);
// 1.4.0 can keep the current plan within a margin of the new one (keep_margin).
const Version = "1.4.0"

// Strategy plans replica counts and placement per layer. It holds no state
// between calls, so it is safe for concurrent use.
type Strategy struct {
	pool sync.Pool
}

var _ sdk.Strategy = (*Strategy)(nil)

// New returns the swiftmoe strategy.
func New() *Strategy {
	return &Strategy{pool: sync.Pool{New: func() any { return new(planner) }}}
}

// Info describes the strategy and declares its options (optionSpecs).
func (s *Strategy) Info() sdk.Info {
	return sdk.Info{
		Name:        Name,
		Description: "replicas proportional to predicted load (at least one each), packed onto ranks heaviest first to balance per-rank load; with ranks_per_node, an expert's replicas spread evenly over nodes (node_policy=spread) or kept within one node (node_policy=pack)",
		Version:     Version,
		Options:     slices.Clone(optionSpecs),
		// The sidecar sends the reports load_window asks for.
		LoadWindowOption: optLoadWindow,
	}
}

// Plan returns the placement of every layer. Layers are planned in parallel;
// each layer's plan depends only on that layer's input, so the response is
// deterministic.
func (s *Strategy) Plan(ctx context.Context, req *sdk.Request) (*sdk.Response, error) {
	if err := sdk.ValidateRequest(req); err != nil {
		return nil, err
	}
	o, err := parseOptions(req.Options)
	if err != nil {
		return nil, err
	}
	t := req.Topology
	ns := t.TotalSlots()
	n := len(req.Layers)
	flat := make([]int, n*ns)
	out := make([][]int, n)
	for i := range out {
		out[i] = flat[i*ns : (i+1)*ns : (i+1)*ns]
	}
	resp := &sdk.Response{Layers: out}
	if hierarchical(t) == 0 && t.RanksPerNode > 0 && t.RanksPerNode < t.WorldSize {
		resp.Note = fmt.Sprintf("ranks_per_node %d does not divide world_size %d; planned without node locality", t.RanksPerNode, t.WorldSize)
	}

	workers := min(runtime.GOMAXPROCS(0), n)
	if workers <= 1 {
		if err := s.planRange(ctx, req, o, out, new(atomic.Int64)); err != nil {
			return nil, err
		}
		return resp, nil
	}
	var next atomic.Int64
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() { errs[w] = s.planRange(ctx, req, o, out, &next) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return resp, nil
}

// planRange plans layers taken from next until none is left.
func (s *Strategy) planRange(ctx context.Context, req *sdk.Request, o options, out [][]int, next *atomic.Int64) error {
	p := s.pool.Get().(*planner)
	defer s.pool.Put(p)
	for {
		i := int(next.Add(1) - 1)
		if i >= len(out) {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("planning layer %d: %w", req.Layers[i].Layer, err)
		}
		l := &req.Layers[i]
		lc, step, err := layerCostOf(req, l, o)
		if err != nil {
			return fmt.Errorf("planning layer %d: %w", l.Layer, err)
		}
		if step {
			err = p.planLayerStep(out[i], l.Predicted, l.Current, l.NumExperts, req.Topology, o, &lc)
		} else {
			err = p.planLayer(out[i], l.Predicted, l.Current, l.NumExperts, req.Topology, o)
		}
		if err != nil {
			return fmt.Errorf("planning layer %d: %w", l.Layer, err)
		}
	}
}

// layerCostOf returns what planning layer l for step time needs, and false
// when it plans for compute alone: objective=compute, one node, or a cost
// model that cannot weigh traffic against compute (see costModel.usable).
func layerCostOf(req *sdk.Request, l *sdk.LayerInput, o options) (layerCost, bool, error) {
	t := req.Topology
	if o.objective != objectiveStep || hierarchical(t) == 0 {
		return layerCost{}, false, nil
	}
	fpt, err := req.FlopsPerTokenOf(l.Layer)
	if err != nil {
		return layerCost{}, false, err
	}
	wb, _, err := req.ExpertBytes(l.Layer)
	if err != nil {
		return layerCost{}, false, err
	}
	c := req.CostModel
	lc := layerCost{
		recent: l, windowLen: o.window,
		cm: costModel{
			tokenBytes: c.TokenBytes, expertBytes: float64(wb),
			flopsPerToken: fpt, flopsPerS: c.FlopsPerSecond,
			intraBW: t.IntraNodeBandwidth, interBW: t.InterNodeBandwidth,
			burstSlots: c.BurstSlotsPerRank, burstThreshold: c.BurstThreshold,
		},
	}
	return lc, lc.cm.usable(), nil
}

// hierarchical returns the ranks per node when node-aware packing applies
// (1 < nodes, equal-sized nodes), else 0.
func hierarchical(t sdk.Topology) int {
	r := t.RanksPerNode
	if r <= 0 || r >= t.WorldSize || t.WorldSize%r != 0 {
		return 0
	}
	return r
}
