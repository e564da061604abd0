// Package sdk is what a SwiftMoE strategy plugin is written against: the
// Strategy interface, the go-plugin handshake, and the gRPC adapter pair that
// carries a Strategy between the sidecar and a plugin process. How that
// connection is tuned (buffer pool, codec, window sizes, the placement in
// force sent by reference) is internal/transport's business, not part of
// this contract.
//
// A strategy is one small Go package implementing Strategy, plus a main:
//
//	func main() { sdk.Serve(mystrategy.New()) }
package sdk

import "context"

// Topology is the shape of the job a plan is for.
type Topology struct {
	// WorldSize is the number of ranks, >= 1.
	WorldSize int
	// RanksPerNode groups ranks into nodes: ranks r and q share a node when
	// r/RanksPerNode == q/RanksPerNode. 0 means one node holds every rank.
	RanksPerNode int
	// SlotsPerRank is the number of expert slots per rank per layer, >= 1.
	SlotsPerRank int
	// IntraNodeBandwidth and InterNodeBandwidth are in bytes per second, 0
	// when unknown.
	IntraNodeBandwidth float64
	InterNodeBandwidth float64
}

// TotalSlots is WorldSize*SlotsPerRank, the length of every layer's plan.
func (t Topology) TotalSlots() int { return t.WorldSize * t.SlotsPerRank }

// NodeOf returns the node index of rank r.
func (t Topology) NodeOf(r int) int {
	if t.RanksPerNode <= 0 {
		return 0
	}
	return r / t.RanksPerNode
}

// LayerInput is what a strategy knows about one MoE layer.
type LayerInput struct {
	// Layer is the MoE layer's index in the job.
	Layer int
	// NumExperts is the number of experts in the layer, >= 1.
	NumExperts int
	// Predicted is the predicted token count per expert for the iteration
	// being planned (len NumExperts, each >= 0). The sidecar derives it from
	// its load history (last iteration or EWMA).
	Predicted []float64
	// LastLoad is the latest reported token count per expert; nil before the
	// first report.
	LastLoad []uint64
	// Current is the placement in force (len TotalSlots): Current[r*S+s] is
	// the expert in slot s of rank r.
	Current []int
	// Earlier holds the reports before LastLoad, latest first (each len
	// NumExperts). The sidecar sends them only to a strategy that names a
	// window option (Info.LoadWindowOption), only when the job's cost model
	// prices traffic across nodes, and only for a layer whose experts fit
	// in one node's slots; otherwise it is nil. Strategies must not modify
	// them (they share the sidecar's history).
	Earlier [][]uint64
}

// Request is one planning call.
type Request struct {
	Topology Topology
	// Iteration is the training iteration the plan is for.
	Iteration uint64
	Layers    []LayerInput
	// Options are the job's strategy options, as given at registration.
	Options map[string]string
	// ExpertWeightBytes and ExpertOptimizerBytes are the bytes of one
	// expert's weights and optimizer state, per layer (or one value for
	// every layer; see ExpertBytes).
	ExpertWeightBytes    []uint64
	ExpertOptimizerBytes []uint64
	// CostModel is what the step-time cost model needs beyond the
	// topology's bandwidths; its zero value means unknown.
	CostModel CostModel
}

// CostModel holds the inputs of the step-time cost model beyond the link
// bandwidths of the topology. A zero or empty field is unknown: a strategy
// prices only what it can, and without a compute figure or a bandwidth it
// balances compute alone.
type CostModel struct {
	// TokenBytes is the size of one token's activation row in the
	// all-to-all (d_model x bytes per element).
	TokenBytes float64
	// FlopsPerToken is the forward+backward FLOPs of one token through one
	// expert, per layer or one value for every layer (see FlopsPerTokenOf).
	FlopsPerToken []float64
	// FlopsPerSecond is the effective expert GEMM throughput of one rank.
	FlopsPerSecond float64
	// BurstSlotsPerRank is the burst slots per rank the engine holds (0:
	// none); BurstThreshold the busiest rank over the mean above which it
	// considers bursts (0 means 1).
	BurstSlotsPerRank int
	BurstThreshold    float64
}

// Response is a strategy's answer.
type Response struct {
	// Layers holds one placement per request layer, in request order, each
	// of len Topology.TotalSlots() with ids in [0, NumExperts).
	Layers [][]int
	// MigratedBytes is the optimizer-state volume this plan would move in a
	// system whose optimizer state follows its expert (0 for SwiftMoE).
	MigratedBytes uint64
	// Note is an optional remark shown in logs.
	Note string
}

// OptionType is the type of an option's value, as a strategy declares it.
type OptionType string

// The option types ValidateDeclared checks.
const (
	// OptionString is any string; the strategy checks it itself (its
	// OptionValidator, or Plan).
	OptionString OptionType = ""
	// OptionFloat is a finite number in [Min, Max] (Max may be +Inf).
	OptionFloat OptionType = "float"
	// OptionInt is an integer in [Min, Max].
	OptionInt OptionType = "int"
	// OptionEnum is one of Values.
	OptionEnum OptionType = "enum"
)

// Option describes one option a strategy accepts.
type Option struct {
	Name        string
	Description string
	Default     string
	// Type is the value's type; Min and Max bound a float or int, Values
	// lists what an enum accepts (see ValidateDeclared).
	Type     OptionType
	Min, Max float64
	Values   []string
}

// Info describes a strategy.
type Info struct {
	Name        string
	Description string
	Version     string
	Options     []Option
	// LoadWindowOption names one of Options, of type OptionInt, whose value
	// (the job's, else its Default) is how many recent reports per layer
	// the strategy weighs: LayerInput.LastLoad and up to that many less one
	// in LayerInput.Earlier (see there for when the sidecar sends them).
	// Empty: the strategy reads no window, and the sidecar sends none.
	LoadWindowOption string
}

// Strategy plans the placement of expert replicas into slots.
//
// The sidecar calls a Strategy from one goroutine per job at a time, but a
// plugin may serve several jobs, so implementations must be safe for
// concurrent use.
type Strategy interface {
	// Info describes the strategy. It is called once when the plugin is
	// loaded and must not fail or block.
	Info() Info

	// Plan returns the placement of every layer for req.Iteration.
	//
	// It is called once per reported iteration with a context whose deadline
	// is a few milliseconds away; it must return by then. It must not mutate
	// req. It must be deterministic (the same request gives the same
	// response) so that a restarted plugin plans as the old one did.
	//
	// A returned placement must be valid (see ValidateSlots): every expert
	// in at least one slot, every id in range, exactly TotalSlots entries,
	// and two replicas of one expert on a rank only when the slot count
	// forces it. The sidecar validates every response and serves the last
	// valid plan instead of an invalid one. A non-nil error means "no plan";
	// it is logged and the last valid plan stays in force, and the plugin
	// process keeps serving (only a crash, a missed deadline or an invalid
	// plan restarts it). Options that ValidateOptions accepted must not make
	// Plan fail.
	Plan(ctx context.Context, req *Request) (*Response, error)
}

// OptionValidator is implemented by a Strategy that checks a job's options
// itself. A Strategy without it gets ValidateDeclared over its Info's
// options.
type OptionValidator interface {
	// ValidateOptions checks a job's options, as Plan will receive them, when
	// the job registers, before it trains. nil accepts them; an error refuses
	// the job (INVALID_ARGUMENT), and should be an *OptionsError with one
	// problem per bad option, each naming the option and the fix. It is
	// called from any goroutine, must be fast, must not block, and must not
	// keep or modify opts.
	ValidateOptions(opts map[string]string) error
}
