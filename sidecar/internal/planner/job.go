package planner

import (
	"sync"
	"sync/atomic"
	"unicode/utf8"

	pb "github.com/swiftmoe/swiftmoe/bridge/gen/swiftmoe/v1"
	"github.com/swiftmoe/swiftmoe/plugins/sdk"
)

// job is one registered training job: its shape, its load history and the
// plan in force. mu serializes the job's reports; plans once published are
// never mutated, so they can be returned without copying.
type job struct {
	mu sync.Mutex

	id         string
	strategy   string
	topo       sdk.Topology
	experts    []int
	numel      []uint64 // per layer
	bytesParam uint64
	// weightBytes and optBytes are per layer the bytes of one expert's
	// weights and optimizer state, shared by every planning request
	// (strategies must not modify a request).
	weightBytes, optBytes []uint64
	// costModel is what strategies price step time with (the zero value
	// when the job gave none), shared by every planning request.
	costModel sdk.CostModel
	options   map[string]string // passed to the strategy
	predictor predictorConfig
	info      *pb.StrategyInfo
	// window is how many recent reports per layer the planning requests
	// carry (loadWindow); 0 sends LastLoad alone.
	window int

	traffic  remapTraffic // bytes of every remap, from the job's shape
	hist     []*history
	slots    [][]int                 // placement in force
	plan     atomic.Pointer[pb.Plan] // plan in force, read without mu
	hadValid bool                    // a valid plan was given or planned: a fallback serves the last valid one
	cost     uint64                  // bytes the job may make the sidecar hold (jobShape)
	retired  bool                    // replaced by a new registration of the same id
	// refused says why the strategy's plugin binary is not trusted for this
	// job (empty when it is): its reports are answered with the placement in
	// force, never by the plugin.
	refused string
}

func newJob(id string, req *pb.RegisterJobRequest, pred predictorConfig) *job {
	t := sdk.TopologyFromProto(req.GetTopology())
	experts := sdk.IntsFromProto(req.GetExpertsPerLayer())
	numel := make([]uint64, len(experts))
	weightBytes := make([]uint64, len(experts))
	optBytes := make([]uint64, len(experts))
	for l := range numel {
		if len(req.GetExpertParamNumel()) == 1 {
			numel[l] = req.GetExpertParamNumel()[0]
		} else {
			numel[l] = req.GetExpertParamNumel()[l]
		}
		weightBytes[l] = numel[l] * uint64(req.GetBytesPerParam())
		optBytes[l] = numel[l] * uint64(req.GetOptimizerBytesPerParam())
	}
	j := &job{
		id: id, strategy: req.GetStrategy(), topo: t, experts: experts, numel: numel,
		bytesParam: uint64(req.GetBytesPerParam()), weightBytes: weightBytes, optBytes: optBytes,
		options: strategyOptions(req.GetStrategyOptions()), predictor: pred,
		hist: make([]*history, len(experts)), slots: make([][]int, len(experts)),
	}
	j.costModel = jobCostModel(req.GetCostModel(), numel)
	j.traffic = newRemapTraffic(numel, j.bytesParam, t.WorldSize, t.SlotsPerRank)
	cur := req.GetCurrentSlots()
	hist := req.GetHistory().GetLayers()
	for l, e := range experts {
		j.hist[l] = newHistory(e, DefaultHistory)
		if len(hist) == len(experts) {
			j.hist[l].restore(hist[l])
		}
		if len(cur) == len(experts) {
			j.slots[l] = sdk.IntsFromProto(cur[l].GetSlots())
		} else {
			j.slots[l] = sdk.StaticSlots(e, t)
		}
	}
	// A placement the caller has in force is valid (validateCurrentSlots):
	// a fallback serves it as the last valid plan.
	j.hadValid = len(cur) == len(experts)
	return j
}

// predictions returns every layer's predicted loads, in one allocation.
func (j *job) predictions() [][]float64 {
	n := 0
	for _, e := range j.experts {
		n += e
	}
	buf := make([]float64, n)
	out := make([][]float64, len(j.hist))
	for l, h := range j.hist {
		e := len(h.ewma)
		out[l] = buf[:e:e]
		buf = buf[e:]
		h.predictInto(out[l], j.predictor)
	}
	return out
}

// strategyRequest is the planning call for iteration it.
func (j *job) strategyRequest(it uint64, predicted [][]float64) *sdk.Request {
	req := &sdk.Request{
		Topology: j.topo, Iteration: it, Options: j.options,
		Layers:               make([]sdk.LayerInput, len(j.experts)),
		ExpertWeightBytes:    j.weightBytes,
		ExpertOptimizerBytes: j.optBytes,
		CostModel:            j.costModel,
	}
	for l, e := range j.experts {
		req.Layers[l] = sdk.LayerInput{
			Layer: l, NumExperts: e, Predicted: predicted[l],
			LastLoad: j.hist[l].last(), Current: j.slots[l],
		}
		if j.window > 1 && e <= j.topo.RanksPerNode*j.topo.SlotsPerRank {
			req.Layers[l].Earlier = j.hist[l].earlier(j.window - 1)
		}
	}
	return req
}

// buildPlan describes slots as the plan for iteration it, with the remap
// from the plan in force.
func (j *job) buildPlan(it uint64, slots [][]int, predicted [][]float64, source pb.PlanSource, note string, migrated uint64) *pb.Plan {
	layers := describePlan(slots, predicted, j.topo)
	remap := j.traffic.summary(j.slots, slots)
	remap.MigratedBytes = migrated
	return &pb.Plan{
		JobId: j.id, Iteration: it, Strategy: j.strategy,
		WorldSize: uint32(j.topo.WorldSize), SlotsPerRank: uint32(j.topo.SlotsPerRank),
		Layers: layers, MaxOverMean: planMaxOverMean(layers), Remap: remap,
		Source: source, Note: cutNote(note),
	}
}

// replicas returns the replica counts of the plan in force, per layer.
func (j *job) replicas() [][]uint32 {
	out := make([][]uint32, len(j.plan.Load().GetLayers()))
	for l, lp := range j.plan.Load().GetLayers() {
		out[l] = lp.GetReplicas()
	}
	return out
}

// layerBalance returns the max_over_mean of each layer of the plan in force.
func (j *job) layerBalance() []float64 {
	out := make([]float64, len(j.plan.Load().GetLayers()))
	for l, lp := range j.plan.Load().GetLayers() {
		out[l] = lp.GetMaxOverMean()
	}
	return out
}

// cutNote shortens a note to at most MaxNoteBytes, on a UTF-8 boundary, so
// that a strategy's remark or error cannot make a plan unbounded.
func cutNote(note string) string {
	if len(note) <= MaxNoteBytes {
		return note
	}
	const mark = " [cut]"
	n := MaxNoteBytes - len(mark)
	for n > 0 && !utf8.RuneStart(note[n]) {
		n--
	}
	return note[:n] + mark
}
