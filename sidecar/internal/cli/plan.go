package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"time"

	pb "github.com/swiftmoe/swiftmoe/bridge/gen/swiftmoe/v1"
	"github.com/swiftmoe/swiftmoe/sidecar/internal/host"
	"github.com/swiftmoe/swiftmoe/sidecar/internal/planner"
)

// planTimeout bounds the whole offline plan, plugin start included.
const planTimeout = 2 * time.Minute

type planFlags struct {
	strategy, loads, pluginsDir string
	worldSize, slots, rpn       int
	iteration                   int64
	options                     keyValues
	asJSON                      bool
	pluginTimeout               time.Duration
	// The cost model (0: unknown): link bandwidths in GB/s, and what
	// RegisterJobRequest.cost_model carries.
	intraBW, interBW                       float64
	tokenBytes, flopsPerToken, flopsPerSec float64
	expertParams                           uint64
}

func runPlan(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("plan", "--strategy NAME --loads FILE --world-size N --slots S [flags]",
		"Plans one iteration offline: reads per-layer per-expert token counts from a routing trace\n"+
			"(one object, or JSON Lines: the last line, or the line of --iteration), runs the strategy\n"+
			"plugin through the sidecar's own host and validation, and prints the plan. Each rank's load\n"+
			"(and max_over_mean) splits every expert's tokens evenly across its replicas.",
		"swiftmoe-sidecar plan --strategy swiftmoe --loads trace.jsonl --world-size 16 --slots 4 --json", stdout, stderr)
	f := planFlags{options: keyValues{}}
	fs.StringVar(&f.strategy, "strategy", "", "strategy `NAME`: the plugin swiftmoe-strategy-NAME (required)")
	fs.StringVar(&f.loads, "loads", "", "`FILE` of routing-trace objects, {\"iteration\": N, \"loads\": [[...], ...]} per line (required)")
	fs.IntVar(&f.worldSize, "world-size", 0, "number of ranks (required)")
	fs.IntVar(&f.slots, "slots", 0, "expert slots per rank per layer (required)")
	fs.IntVar(&f.rpn, "ranks-per-node", 0, "ranks per node, dividing --world-size (0: one node)")
	fs.Int64Var(&f.iteration, "iteration", -1, "plan from the trace line of this iteration; -1 takes the last line")
	fs.Var(f.options, "option", "strategy option `key=value`; repeat for several")
	fs.StringVar(&f.pluginsDir, "plugins-dir", "", "`DIR` of the plugin binaries (default: the sidecar executable's directory)")
	fs.BoolVar(&f.asJSON, "json", false, "print the plan JSON instead of a table")
	fs.DurationVar(&f.pluginTimeout, "plugin-timeout", 10*time.Second, "deadline of the strategy call")
	fs.Float64Var(&f.intraBW, "intra-bw", 0, "GB/s between two ranks of one node (0: unknown)")
	fs.Float64Var(&f.interBW, "inter-bw", 0, "GB/s between ranks of two nodes (0: unknown)")
	fs.Uint64Var(&f.expertParams, "expert-params", 1, "parameters of one expert (its weight bytes at 2 bytes each; flops per token default to 6x)")
	fs.Float64Var(&f.tokenBytes, "token-bytes", 0, "bytes of one token's activation row, d_model x bytes per element (0: unknown)")
	fs.Float64Var(&f.flopsPerToken, "flops-per-token", 0, "forward+backward FLOPs of one token through one expert (0: 6 x --expert-params)")
	fs.Float64Var(&f.flopsPerSec, "flops-per-second", 0, "one rank's expert GEMM throughput, FLOP/s (0: unknown); with --token-bytes and --inter-bw, strategies plan for step time")
	if err := fs.parse(args); err != nil {
		return done(err)
	}
	switch {
	case f.strategy == "":
		return fs.fail("--strategy is required; name a plugin, e.g. --strategy swiftmoe")
	case f.loads == "":
		return fs.fail("--loads is required; give a routing-trace file")
	case f.worldSize < 1 || f.worldSize > planner.MaxWorldSize:
		return fs.fail("--world-size %d is out of range; give the number of ranks, 1..%d", f.worldSize, planner.MaxWorldSize)
	case f.slots < 1 || f.slots > planner.MaxSlotsPerRank:
		return fs.fail("--slots %d is out of range; give the expert slots per rank, 1..%d", f.slots, planner.MaxSlotsPerRank)
	case f.rpn < 0 || (f.rpn > 0 && f.worldSize%f.rpn != 0):
		return fs.fail("--ranks-per-node %d does not divide --world-size %d; give a divisor, or 0 for one node", f.rpn, f.worldSize)
	case f.iteration < -1:
		return fs.fail("--iteration %d is negative; give an iteration of the trace, or leave it out for the last line", f.iteration)
	case f.pluginTimeout <= 0:
		return fs.fail("--plugin-timeout %v must be positive", f.pluginTimeout)
	case !finiteAtLeast0(f.intraBW, f.interBW, f.tokenBytes, f.flopsPerToken, f.flopsPerSec):
		return fs.fail("--intra-bw, --inter-bw, --token-bytes, --flops-per-token and --flops-per-second must be finite numbers >= 0 (0: unknown)")
	case f.expertParams < 1 || f.expertParams > planner.MaxParamNumel:
		return fs.fail("--expert-params %d is out of range; give one expert's parameter count, 1..%d", f.expertParams, uint64(planner.MaxParamNumel))
	case f.worldSize*f.slots > planner.MaxTotalSlots:
		return fs.fail("--world-size %d x --slots %d = %d slots per layer exceed the limit of %d; give fewer ranks or slots", f.worldSize, f.slots, f.worldSize*f.slots, planner.MaxTotalSlots)
	}
	rec, err := readTrace(f.loads, f.iteration, planLimits(f))
	if err != nil {
		return err
	}
	plan, err := planOffline(f, rec)
	if err != nil {
		return err
	}
	if f.asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(planToJSON(plan))
	}
	return writePlanTable(stdout, plan, f.loads, rec)
}

// finiteAtLeast0 reports whether every value is a finite number >= 0.
func finiteAtLeast0(vs ...float64) bool {
	for _, v := range vs {
		if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
			return false
		}
	}
	return true
}

// planLimits bounds a trace record by the job the flags describe: a layer
// has at most one expert per slot, and the layers' slots are at most
// planner.MaxTotalSlots.
func planLimits(f planFlags) traceLimits {
	perLayer := f.worldSize * f.slots
	layers := min(planner.MaxLayers, planner.MaxTotalSlots/perLayer)
	lim := traceLimits{
		layers:  layers,
		experts: min(planner.MaxExperts, perLayer),
		layersFix: fmt.Sprintf("with --world-size %d x --slots %d = %d slots per layer, at most %d layers fit the limit of %d slots (and %d layers); plan from a trace of fewer layers",
			f.worldSize, f.slots, perLayer, layers, planner.MaxTotalSlots, planner.MaxLayers),
		expertsFix: fmt.Sprintf("--world-size %d x --slots %d = %d slots per layer hold at most that many; raise --slots or --world-size, or check the trace",
			f.worldSize, f.slots, perLayer),
	}
	if perLayer > planner.MaxExperts {
		lim.expertsFix = "that is the limit of experts per layer; check the trace"
	}
	return lim
}

// planOffline registers a throw-away job shaped by the flags and the record
// and reports the record's loads, so the plan goes through the same host,
// validation and plan description as the daemon's.
func planOffline(f planFlags, rec traceRecord) (*pb.Plan, error) {
	dir, err := pluginsDir(f.pluginsDir)
	if err != nil {
		return nil, err
	}
	h, err := host.New(host.Options{Dir: dir, CallTimeout: f.pluginTimeout})
	if err != nil {
		return nil, fmt.Errorf("--plugins-dir: %w", err)
	}
	defer h.Close()
	svc := planner.New(h, nil, nil)
	ctx, cancel := context.WithTimeout(context.Background(), planTimeout)
	defer cancel()
	experts := make([]uint32, len(rec.Loads))
	layers := make([]*pb.LayerLoads, len(rec.Loads))
	for l, row := range rec.Loads {
		experts[l] = uint32(len(row))
		layers[l] = &pb.LayerLoads{Tokens: row}
	}
	var cost *pb.CostModel
	if f.tokenBytes > 0 || f.flopsPerToken > 0 || f.flopsPerSec > 0 {
		cost = &pb.CostModel{TokenBytes: f.tokenBytes, FlopsPerSecond: f.flopsPerSec}
		if f.flopsPerToken > 0 {
			cost.FlopsPerToken = []float64{f.flopsPerToken}
		}
	}
	reg, err := svc.RegisterJob(ctx, &pb.RegisterJobRequest{
		JobId: "offline",
		Topology: &pb.Topology{
			WorldSize: uint32(f.worldSize), RanksPerNode: uint32(f.rpn), SlotsPerRank: uint32(f.slots),
			IntraNodeBandwidth: f.intraBW * 1e9, InterNodeBandwidth: f.interBW * 1e9,
		},
		ExpertsPerLayer:  experts,
		ExpertParamNumel: []uint64{f.expertParams},
		BytesPerParam:    2,
		Strategy:         f.strategy,
		StrategyOptions:  f.options,
		CostModel:        cost,
	})
	if err != nil {
		return nil, fmt.Errorf("the flags and %s line %d do not describe a valid job: %w", f.loads, rec.Line, err)
	}
	if src := reg.GetInitialPlan().GetSource(); src != pb.PlanSource_PLAN_SOURCE_STRATEGY {
		return nil, fmt.Errorf("strategy %q: %s", f.strategy, reg.GetInitialPlan().GetNote())
	}
	resp, err := svc.ReportLoads(ctx, &pb.ReportLoadsRequest{JobId: reg.GetJobId(), Iteration: rec.Iteration, Layers: layers})
	if err != nil {
		return nil, fmt.Errorf("planning %s line %d: %w", f.loads, rec.Line, err)
	}
	plan := resp.GetPlan()
	if plan.GetSource() != pb.PlanSource_PLAN_SOURCE_STRATEGY {
		return nil, fmt.Errorf("strategy %q gave no valid plan: %s", f.strategy, plan.GetNote())
	}
	return plan, nil
}
