package planner

import (
	"math"
	"regexp"
	"sort"
	"strings"

	pb "github.com/swiftmoe/swiftmoe/bridge/gen/swiftmoe/v1"
	"github.com/swiftmoe/swiftmoe/plugins/sdk"
)

var (
	jobIDRE     = regexp.MustCompile(`^[A-Za-z0-9._:-]+$`)
	optionKeyRE = regexp.MustCompile(`^[A-Za-z0-9_.-]+$`)
	sha256RE    = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// validateRegister checks everything in a RegisterJobRequest that does not
// need the strategy plugin, the job's cost within lim included.
// knownStrategy reports whether a strategy exists and, when not, what is
// available.
func validateRegister(req *pb.RegisterJobRequest, lim costLimits, knownStrategy func(string) error) (predictorConfig, error) {
	var p problems
	validateJobID(req.GetJobId(), true, &p)
	t := req.GetTopology()
	n, s := uint64(t.GetWorldSize()), uint64(t.GetSlotsPerRank())
	switch {
	case t == nil:
		p.addf("topology: required; set world_size and slots_per_rank")
	default:
		if n < 1 || n > MaxWorldSize {
			p.addf("topology.world_size: %d is out of range; set the number of ranks, 1..%d", n, MaxWorldSize)
		}
		switch {
		case s == 0:
			p.addf("topology.slots_per_rank: 0 lets the sidecar choose from free GPU memory only when the rest of the job is valid and no current_slots are given; fix the other problems, or set the expert slots per rank per layer, 1..%d", MaxSlotsPerRank)
		case s > MaxSlotsPerRank:
			p.addf("topology.slots_per_rank: %d is out of range; set the expert slots per rank per layer, 1..%d", s, MaxSlotsPerRank)
		}
		if rpn := uint64(t.GetRanksPerNode()); rpn != 0 && n >= 1 && n%rpn != 0 {
			p.addf("topology.ranks_per_node: %d does not divide world_size %d; set a divisor of world_size, or 0 for one node", rpn, n)
		}
		for _, bw := range []struct {
			name string
			v    float64
		}{{"intra_node_bandwidth", t.GetIntraNodeBandwidth()}, {"inter_node_bandwidth", t.GetInterNodeBandwidth()}} {
			if math.IsNaN(bw.v) || math.IsInf(bw.v, 0) || bw.v < 0 {
				p.addf("topology.%s: %v is not a bandwidth; set bytes per second >= 0, or 0 when unknown", bw.name, bw.v)
			}
		}
	}
	experts := req.GetExpertsPerLayer()
	layers := len(experts)
	switch {
	case layers == 0:
		p.addf("experts_per_layer: empty; give the number of experts of each MoE layer")
	case layers > MaxLayers:
		p.addf("experts_per_layer: %d layers exceed the limit of %d", layers, MaxLayers)
	default:
		shapeOK := n >= 1 && n <= MaxWorldSize && s >= 1 && s <= MaxSlotsPerRank
		total := n * s
		for l, e := range experts {
			switch {
			case e < 1 || e > MaxExperts:
				p.addf("experts_per_layer[%d]: %d is out of range; use 1..%d", l, e, MaxExperts)
			case shapeOK && uint64(e) > total:
				p.addf("experts_per_layer[%d]: %d experts do not fit in world_size*slots_per_rank = %d slots; raise slots_per_rank to at least %d", l, e, total, (uint64(e)+n-1)/n)
			}
		}
		if all := uint64(layers) * total; shapeOK && all > MaxTotalSlots {
			p.addf("experts_per_layer: %d layers x %d slots = %d slots exceed the limit of %d; plan fewer layers or slots per request", layers, total, all, MaxTotalSlots)
		}
	}
	if len(p.list) == 0 {
		// The shape is valid: bound what the job costs.
		checkCost(shapeOf(req), lim, &p)
	}
	numel := req.GetExpertParamNumel()
	switch {
	case len(numel) != 1 && len(numel) != layers:
		p.addf("expert_param_numel: %d entries, want 1 (for every layer) or one per layer (%d)", len(numel), layers)
	default:
		for l, x := range numel {
			if x < 1 || x > MaxParamNumel {
				p.addf("expert_param_numel[%d]: %d is out of range; give the element count of one expert's flattened parameters, 1..%d", l, x, uint64(MaxParamNumel))
			}
		}
	}
	if b := req.GetBytesPerParam(); b < 1 || b > MaxBytesPerParam {
		p.addf("bytes_per_param: %d is out of range; set the bytes of one transferred weight element (2 for bf16, 4 for fp32), 1..%d", b, MaxBytesPerParam)
	}
	if b := req.GetOptimizerBytesPerParam(); b > MaxOptimizerBytes {
		p.addf("optimizer_bytes_per_param: %d is out of range; set optimizer-state bytes per parameter (12 for AdamW with fp32 master weights), 0..%d", b, MaxOptimizerBytes)
	}
	switch name := req.GetStrategy(); {
	case name == "":
		p.addf("strategy: required; name a strategy such as swiftmoe, static or flexmoe")
	default:
		if err := knownStrategy(name); err != nil {
			p.addf("strategy: %v", err)
		}
	}
	opts := req.GetStrategyOptions()
	if len(opts) > MaxOptions {
		p.addf("strategy_options: %d options exceed the limit of %d", len(opts), MaxOptions)
	} else {
		for _, k := range sortedKeys(opts) {
			if len(k) > MaxOptionKeyLen || !optionKeyRE.MatchString(k) {
				p.addf("strategy_options: key %q is not valid; use up to %d characters of A-Z, a-z, 0-9, '_', '.' or '-'", truncate(k), MaxOptionKeyLen)
			}
			if len(opts[k]) > MaxOptionValueLen {
				p.addf("strategy_options[%q]: value of %d bytes exceeds the limit of %d", truncate(k), len(opts[k]), MaxOptionValueLen)
			}
		}
	}
	validateCurrentSlots(req, &p)
	if len(p.list) == 0 {
		validateHistory(req.GetHistory(), req.GetExpertsPerLayer(), &p)
	}
	if d := req.GetStrategySha256(); d != "" && !sha256RE.MatchString(d) {
		p.addf("strategy_sha256: %q is not a SHA-256 digest; send the 64 lower-case hex digits of RegisterJobResponse.strategy.sha256 the job first got, or nothing", truncate(d))
	}
	validateCostModel(req.GetCostModel(), layers, &p)
	cfg := parsePredictor(opts, &p)
	return cfg, p.err("RegisterJobRequest")
}

// validateCurrentSlots checks the optional placement in force: one valid
// plan per layer. It runs only when the job's shape itself is valid.
func validateCurrentSlots(req *pb.RegisterJobRequest, p *problems) {
	cur := req.GetCurrentSlots()
	if len(cur) == 0 || len(p.list) > 0 {
		return
	}
	experts := req.GetExpertsPerLayer()
	if len(cur) != len(experts) {
		p.addf("current_slots: %d entries, want one per MoE layer (%d), or none for the static placement", len(cur), len(experts))
		return
	}
	t := sdk.TopologyFromProto(req.GetTopology())
	for l, ls := range cur {
		if err := sdk.ValidateSlots(sdk.IntsFromProto(ls.GetSlots()), int(experts[l]), t); err != nil {
			p.addf("current_slots[%d]: %v; send the placement in force or leave current_slots empty", l, err)
		}
	}
}

// validateReport checks a ReportLoadsRequest against its job's shape.
func validateReport(req *pb.ReportLoadsRequest, experts []int) error {
	var p problems
	if req.GetIteration() == math.MaxUint64 {
		p.addf("iteration: %d leaves no next iteration to plan; count iterations from 0", req.GetIteration())
	}
	layers := req.GetLayers()
	if len(layers) != len(experts) {
		p.addf("layers: %d entries, want one per MoE layer of the job (%d)", len(layers), len(experts))
		return p.err("ReportLoadsRequest")
	}
	for l, ll := range layers {
		if got := len(ll.GetTokens()); got != experts[l] {
			p.addf("layers[%d].tokens: %d entries, want one per expert of the layer (%d)", l, got, experts[l])
		}
	}
	return p.err("ReportLoadsRequest")
}

func validateJobID(id string, emptyOK bool, p *problems) {
	switch {
	case id == "" && emptyOK:
	case id == "":
		p.addf("job_id: required; use the job_id RegisterJob returned")
	case len(id) > MaxJobIDLen || !jobIDRE.MatchString(id):
		p.addf("job_id: %q is not valid; use up to %d characters of A-Z, a-z, 0-9, '.', '_', ':' or '-'", truncate(id), MaxJobIDLen)
	}
}

// checkOptionNames adds a problem for every option that neither the sidecar
// nor the strategy declares.
func checkOptionNames(opts map[string]string, strategy string, declared []string, p *problems) {
	known := map[string]bool{}
	for _, d := range declared {
		known[d] = true
	}
	for _, k := range sortedKeys(opts) {
		if !isSidecarOption(k) && !known[k] {
			list := append(append([]string(nil), declared...), sidecarOptions...)
			p.addf("strategy_options: unknown option %q for strategy %q; it accepts %s", truncate(k), strategy, strings.Join(list, ", "))
		}
	}
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// truncate shortens user text quoted back in errors.
func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
