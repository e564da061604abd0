package planner

import (
	"fmt"

	pb "github.com/swiftmoe/swiftmoe/bridge/gen/swiftmoe/v1"
)

// What a job costs the sidecar. A registered job holds its load history, its
// placement in force and its plan; each report builds the next plan beside
// the one in force and carries the wire forms of the report, the planning
// call and the reply; the plugin connection keeps copies of recent
// placements. jobShape bounds all of it from the job's shape, so that a
// registration is refused before anything is allocated for it.
//
// The terms are bytes per unit of the shape (64-bit Go, worst-case varints),
// counted from the code that allocates them: history.go, plan.go, remap.go,
// job.go, and the SDK's request and response conversions.
const (
	// keptPlacements is how many recent placements the sidecar's end of a
	// plugin connection keeps copies of (the SDK's current-placement cache).
	keptPlacements = 8

	// costPerExpert, per expert of every layer: the history ring and its
	// EWMA, the predictions, the replica counts of the plan in force and of
	// the next one and on the wire, the report on the wire and decoded, and
	// the planning call's predicted and last loads on the wire.
	costPerExpert = (DefaultHistory+1)*8 + 8 + 2*4 + 4 + (11 + 8) + (8 + 11)
	// costPerSlot, per slot of every layer: the placement in force and the
	// kept copies, the strategy's answer on the wire, as protobuf and
	// decoded, the slots of the plan in force and of the next one, the
	// placement in force in the planning call and the plan on the wire.
	costPerSlot = (1+keptPlacements)*8 + (4 + 4 + 8) + 2*4 + 4 + 4
	// costPerLayerRank, per layer and rank: the rank loads of two plans and
	// on the wire, and at registration the shard layout (a 64-byte message,
	// its pointer and its wire form).
	costPerLayerRank = 2*8 + 9 + 64 + 8 + shardRangeWire
	// costPerRank: the remap byte counts of the job and of two plans, and on
	// the wire.
	costPerRank = 2*8 + 2*2*8 + 2*11
	// costPerLayer: the messages, slice headers and history ring of a layer.
	costPerLayer = 2048
	// costPerJob: the job itself, its strategy description and its series.
	costPerJob = 64 << 10
)

// Wire sizes (protobuf, worst case) of the messages whose size depends on the
// job's shape.
const (
	// shardRangeWire is one ShardRange in a layer's shard layout: its tag
	// and length, and rank, offset and length at their largest.
	shardRangeWire = 2 + (1 + 3) + (1 + 6) + (1 + 6)
	// planLayerWire is a LayerPlan's fixed part: its tag and length, the
	// three packed fields' tags and lengths, and max_over_mean.
	planLayerWire = (1 + 5) + 3*(1+5) + 9
	// planFixedWire is a Plan's fixed part besides the strings: iteration,
	// world size, slots per rank, max_over_mean, source, and the remap's
	// tag, length, totals and packed fields' tags and lengths.
	planFixedWire = 11 + 6 + 6 + 9 + 3 + (1 + 5) + 3*11 + 2*(1+5)
	// registerAllowance bounds, before the strategy is asked, the parts of a
	// RegisterJobResponse that do not depend on the shape: the strategy's
	// description, the topology and the defaults' lines.
	registerAllowance = 256 << 10
)

// jobShape is what a job's cost depends on.
type jobShape struct {
	layers, worldSize, slotsPerRank uint64
	experts                         uint64 // over all layers
	text                            uint64 // job id, strategy name and options
}

func shapeOf(req *pb.RegisterJobRequest) jobShape {
	sh := jobShape{
		layers:       uint64(len(req.GetExpertsPerLayer())),
		worldSize:    uint64(req.GetTopology().GetWorldSize()),
		slotsPerRank: uint64(req.GetTopology().GetSlotsPerRank()),
		text:         uint64(MaxJobIDLen + len(req.GetStrategy())),
	}
	for _, e := range req.GetExpertsPerLayer() {
		sh.experts += uint64(e)
	}
	for k, v := range req.GetStrategyOptions() {
		sh.text += uint64(len(k) + len(v))
	}
	return sh
}

// slots is the job's slot count over all layers.
func (sh jobShape) slots() uint64 { return sh.layers * sh.worldSize * sh.slotsPerRank }

// memoryBytes bounds the bytes the sidecar holds for the job while it plans
// it, transient ones included.
func (sh jobShape) memoryBytes() uint64 {
	return sh.experts*costPerExpert + sh.slots()*costPerSlot +
		sh.layers*sh.worldSize*costPerLayerRank + sh.worldSize*costPerRank +
		sh.layers*costPerLayer + costPerJob + 2*sh.text
}

// planWireBytes bounds a Plan of the job on the wire (ReportLoadsResponse,
// GetPlan, and the initial plan of RegisterJobResponse), its note at
// MaxNoteBytes included.
func (sh jobShape) planWireBytes() uint64 {
	return 4*sh.slots() + 4*sh.experts + 8*sh.layers*sh.worldSize + sh.layers*planLayerWire +
		2*10*sh.worldSize + planFixedWire + 3*(3+sh.text) + 3 + MaxNoteBytes
}

// registerWireBytes bounds the RegisterJobResponse on the wire, less the
// parts registerAllowance covers.
func (sh jobShape) registerWireBytes() uint64 {
	layout := sh.layers * ((1 + 5) + (1 + 3) + (1 + 10) + sh.worldSize*shardRangeWire)
	return (3 + sh.text) + layout + (1 + 5) + sh.planWireBytes()
}

// costLimits are the limits on what jobs cost: MaxJobBytes,
// MaxTotalJobBytes and MaxMessageBytes, smaller in tests.
type costLimits struct {
	job, total, message uint64
}

var defaultCostLimits = costLimits{job: MaxJobBytes, total: MaxTotalJobBytes, message: MaxMessageBytes}

// checkCost adds a problem when the job would cost more than lim.job or its
// responses could exceed lim.message. sh must be a valid shape.
func checkCost(sh jobShape, lim costLimits, p *problems) {
	what := fmt.Sprintf("%d layers of world_size %d x slots_per_rank %d (%d slots) and %d experts", sh.layers, sh.worldSize, sh.slotsPerRank, sh.slots(), sh.experts)
	if m := sh.memoryBytes(); m > lim.job {
		p.addf("experts_per_layer, topology: %s make the sidecar hold about %s, over the limit of %s per job; plan fewer layers, ranks or slots per request", what, mib(m), mib(lim.job))
	}
	if w := sh.registerWireBytes() + registerAllowance; w > lim.message {
		p.addf("experts_per_layer, topology: %s make responses of up to %s, over the message limit of %s; plan fewer layers or ranks per request", what, mib(w), mib(lim.message))
	}
}

// mib writes a byte count in MiB.
func mib(b uint64) string {
	if b < 1<<20 {
		return fmt.Sprintf("%.2f MiB", float64(b)/(1<<20))
	}
	return fmt.Sprintf("%d MiB", (b+(1<<20)-1)>>20)
}
