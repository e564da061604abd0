package planner

import (
	"math"

	pb "github.com/swiftmoe/swiftmoe/bridge/gen/swiftmoe/v1"
	"github.com/swiftmoe/swiftmoe/plugins/sdk"
)

// Bounds on a job's cost model: far above any real model and machine, low
// enough that products of them stay finite.
const (
	// MaxTokenBytes bounds cost_model.token_bytes (a 1 Mi-wide fp64 row).
	MaxTokenBytes = 1 << 23
	// MaxFlopsPerToken bounds cost_model.flops_per_token.
	MaxFlopsPerToken = 1e15
	// MaxFlopsPerSecond bounds cost_model.flops_per_second.
	MaxFlopsPerSecond = 1e18
	// MaxBurstThreshold bounds cost_model.burst_threshold.
	MaxBurstThreshold = 1e6
)

// flopsPerParam is the forward+backward FLOPs of one token per expert
// parameter (forward 2P, backward 4P): the default of
// cost_model.flops_per_token.
const flopsPerParam = 6

// validateCostModel checks a registration's optional cost model: every
// figure finite and within its bound, flops_per_token empty, one value or one
// per layer.
func validateCostModel(c *pb.CostModel, layers int, p *problems) {
	if c == nil {
		return
	}
	for _, f := range []struct {
		name, what string
		v, hi      float64
	}{
		{"token_bytes", "bytes of one token's activation row (d_model x bytes per element)", c.GetTokenBytes(), MaxTokenBytes},
		{"flops_per_second", "one rank's effective expert GEMM throughput in FLOP/s", c.GetFlopsPerSecond(), MaxFlopsPerSecond},
		{"burst_threshold", "busiest rank's load over the mean above which the engine makes burst replicas (>= 1)", c.GetBurstThreshold(), MaxBurstThreshold},
	} {
		if v := f.v; math.IsNaN(v) || math.IsInf(v, 0) || v < 0 || v > f.hi {
			p.addf("cost_model.%s: %v is out of range; set the %s, 0..%g, or 0 when unknown", f.name, v, f.what, f.hi)
		}
	}
	if b := c.GetBurstSlotsPerRank(); b > MaxSlotsPerRank {
		p.addf("cost_model.burst_slots_per_rank: %d is out of range; set the engine's burst slots per rank, 0..%d (0: no burst replicas)", b, MaxSlotsPerRank)
	}
	if t := c.GetBurstThreshold(); t > 0 && t < 1 {
		p.addf("cost_model.burst_threshold: %v is below 1; set the busiest rank's load over the mean above which the engine makes burst replicas (>= 1), or 0", t)
	}
	fpt := c.GetFlopsPerToken()
	if n := len(fpt); n > 1 && n != layers {
		p.addf("cost_model.flops_per_token: %d entries, want none (6 x expert_param_numel), 1 (for every layer) or one per layer (%d)", n, layers)
		return
	}
	for l, v := range fpt {
		if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 || v > MaxFlopsPerToken {
			p.addf("cost_model.flops_per_token[%d]: %v is out of range; set the forward+backward FLOPs of one token through one expert (about 6 x its parameters), 0..%g, or leave it empty for 6 x expert_param_numel", l, v, MaxFlopsPerToken)
		}
	}
}

// jobCostModel is the cost model a job plans with: the registration's, with
// flops_per_token filled in as 6 x expert_param_numel per layer when it is
// empty. A registration without a cost model has none (the zero value):
// strategies then balance compute alone, as before cost models existed.
func jobCostModel(c *pb.CostModel, numel []uint64) sdk.CostModel {
	if c == nil {
		return sdk.CostModel{}
	}
	out := sdk.CostModelFromProto(c)
	if len(out.FlopsPerToken) == 0 {
		out.FlopsPerToken = make([]float64, len(numel))
		for l, n := range numel {
			out.FlopsPerToken[l] = flopsPerParam * float64(n)
		}
	} else {
		out.FlopsPerToken = append([]float64(nil), out.FlopsPerToken...)
	}
	return out
}
