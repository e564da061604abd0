package sdk

import (
	"errors"
	"fmt"
	"math"
)

// ErrInvalidRequest is wrapped by every error ValidateRequest returns.
var ErrInvalidRequest = errors.New("invalid planning request")

// Bounds on a request's shape. They keep a malformed request from making a
// strategy allocate without limit; real jobs are far below them.
const (
	// MaxSlotsPerLayer bounds WorldSize*SlotsPerRank.
	MaxSlotsPerLayer = 1 << 20
	// MaxLayers bounds the number of layers in one request.
	MaxLayers = 1 << 12
	// MaxEarlierLoads bounds LayerInput.Earlier.
	MaxEarlierLoads = 64
)

// ValidateRequest checks a planning request before a strategy plans from it:
// a usable topology, and for every layer num_experts in [1, total slots],
// predicted_load empty or one finite value >= 0 per expert, last_load empty
// or one value per expert, earlier_loads at most MaxEarlierLoads reports of
// one value per expert each (only with last_load), and current_slots empty
// or one id in range per slot. It does not require current_slots to be a
// valid plan. Errors name the field (as in the wire message) and the fix.
func ValidateRequest(r *Request) error {
	if r == nil {
		return fmt.Errorf("%w: request is nil", ErrInvalidRequest)
	}
	if err := validateTopology(r.Topology); err != nil {
		return err
	}
	if err := validateCostModel(&r.CostModel); err != nil {
		return err
	}
	if len(r.Layers) > MaxLayers {
		return fmt.Errorf("%w: %d layers, at most %d supported", ErrInvalidRequest, len(r.Layers), MaxLayers)
	}
	for i := range r.Layers {
		if err := validateLayer(&r.Layers[i], r.Topology); err != nil {
			return fmt.Errorf("%w: layers[%d] (layer %d): %w", ErrInvalidRequest, i, r.Layers[i].Layer, err)
		}
	}
	return nil
}

func validateTopology(t Topology) error {
	if t.WorldSize < 1 {
		return fmt.Errorf("%w: topology.world_size is %d; want >= 1", ErrInvalidRequest, t.WorldSize)
	}
	if t.SlotsPerRank < 1 {
		return fmt.Errorf("%w: topology.slots_per_rank is %d; want >= 1", ErrInvalidRequest, t.SlotsPerRank)
	}
	if t.RanksPerNode < 0 {
		return fmt.Errorf("%w: topology.ranks_per_node is %d; want >= 0 (0 means one node)", ErrInvalidRequest, t.RanksPerNode)
	}
	if t.WorldSize > MaxSlotsPerLayer || t.SlotsPerRank > MaxSlotsPerLayer || t.TotalSlots() > MaxSlotsPerLayer {
		return fmt.Errorf("%w: topology.world_size*slots_per_rank = %d*%d exceeds %d slots per layer", ErrInvalidRequest, t.WorldSize, t.SlotsPerRank, MaxSlotsPerLayer)
	}
	return nil
}

func validateLayer(l *LayerInput, t Topology) error {
	total := t.TotalSlots()
	if l.NumExperts < 1 {
		return fmt.Errorf("num_experts is %d; want >= 1", l.NumExperts)
	}
	if l.NumExperts > total {
		return fmt.Errorf("num_experts is %d but there are only %d slots; raise slots_per_rank to at least %d", l.NumExperts, total, (l.NumExperts+t.WorldSize-1)/t.WorldSize)
	}
	if n := len(l.Predicted); n != 0 && n != l.NumExperts {
		return fmt.Errorf("predicted_load has %d values; want num_experts = %d (or none before the first report)", n, l.NumExperts)
	}
	for e, x := range l.Predicted {
		if math.IsNaN(x) || math.IsInf(x, 0) || x < 0 {
			return fmt.Errorf("predicted_load[%d] is %v; want a finite token count >= 0", e, x)
		}
	}
	if n := len(l.LastLoad); n != 0 && n != l.NumExperts {
		return fmt.Errorf("last_load has %d values; want num_experts = %d (or none before the first report)", n, l.NumExperts)
	}
	if n := len(l.Earlier); n > MaxEarlierLoads {
		return fmt.Errorf("earlier_loads has %d reports; at most %d supported", n, MaxEarlierLoads)
	}
	for i, r := range l.Earlier {
		if len(r) != l.NumExperts {
			return fmt.Errorf("earlier_loads[%d] has %d values; want num_experts = %d", i, len(r), l.NumExperts)
		}
	}
	if len(l.Earlier) > 0 && len(l.LastLoad) == 0 {
		return fmt.Errorf("earlier_loads has %d reports but last_load is empty; send the latest report in last_load and those before it in earlier_loads", len(l.Earlier))
	}
	if n := len(l.Current); n != 0 && n != total {
		return fmt.Errorf("current_slots has %d ids; want world_size*slots_per_rank = %d (or none)", n, total)
	}
	for i, e := range l.Current {
		if e < 0 || e >= l.NumExperts {
			return fmt.Errorf("current_slots[%d] (rank %d) is expert %d; want 0..%d", i, i/t.SlotsPerRank, e, l.NumExperts-1)
		}
	}
	return nil
}

func validateCostModel(c *CostModel) error {
	for _, f := range []struct {
		name string
		v    float64
	}{{"cost_model.token_bytes", c.TokenBytes}, {"cost_model.flops_per_second", c.FlopsPerSecond}, {"cost_model.burst_threshold", c.BurstThreshold}} {
		if math.IsNaN(f.v) || math.IsInf(f.v, 0) || f.v < 0 {
			return fmt.Errorf("%w: %s is %v; want a finite value >= 0 (0 when unknown)", ErrInvalidRequest, f.name, f.v)
		}
	}
	if c.BurstSlotsPerRank < 0 || c.BurstSlotsPerRank > MaxSlotsPerLayer {
		return fmt.Errorf("%w: cost_model.burst_slots_per_rank is %d; want 0..%d", ErrInvalidRequest, c.BurstSlotsPerRank, MaxSlotsPerLayer)
	}
	if len(c.FlopsPerToken) > MaxLayers {
		return fmt.Errorf("%w: cost_model.flops_per_token has %d values, at most %d supported", ErrInvalidRequest, len(c.FlopsPerToken), MaxLayers)
	}
	for i, v := range c.FlopsPerToken {
		if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
			return fmt.Errorf("%w: cost_model.flops_per_token[%d] is %v; want a finite FLOP count >= 0 (0 when unknown)", ErrInvalidRequest, i, v)
		}
	}
	return nil
}

// ExpertBytes returns the bytes of one expert's weights and of its optimizer
// state for the job's MoE layer index layer (LayerInput.Layer). Each of
// ExpertWeightBytes and ExpertOptimizerBytes may be empty (unknown: 0), hold
// one value for every layer, or hold one value per layer of the job.
func (r *Request) ExpertBytes(layer int) (weights, optimizer uint64, err error) {
	weights, err = perLayer(r.ExpertWeightBytes, layer, "expert_weight_bytes")
	if err != nil {
		return 0, 0, err
	}
	optimizer, err = perLayer(r.ExpertOptimizerBytes, layer, "expert_optimizer_bytes")
	if err != nil {
		return 0, 0, err
	}
	return weights, optimizer, nil
}

// FlopsPerTokenOf returns the cost model's forward+backward FLOPs of one
// token through one expert of the job's MoE layer index layer; 0 when
// unknown. CostModel.FlopsPerToken may be empty, hold one value for every
// layer, or one per layer of the job.
func (r *Request) FlopsPerTokenOf(layer int) (float64, error) {
	return perLayer(r.CostModel.FlopsPerToken, layer, "cost_model.flops_per_token")
}

func perLayer[T uint64 | float64](v []T, layer int, field string) (T, error) {
	switch {
	case len(v) == 0:
		return 0, nil
	case len(v) == 1:
		return v[0], nil
	case layer >= 0 && layer < len(v):
		return v[layer], nil
	default:
		return 0, fmt.Errorf("%w: %s has %d values but layer %d needs one; give one value for all layers or one per layer", ErrInvalidRequest, field, len(v), layer)
	}
}
