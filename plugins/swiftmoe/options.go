package swiftmoe

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/swiftmoe/swiftmoe/plugins/sdk"
)

// optNodePolicy names the option that chooses how an expert's replicas are
// laid out over nodes when ranks_per_node splits the job into nodes.
const optNodePolicy = "node_policy"

// nodePolicy is the value of the node_policy option.
type nodePolicy uint8

const (
	// nodesSpread (the default) gives an expert with r replicas
	// min(r, nodes) distinct nodes, the per-node counts differing by at
	// most one: every node holds its share of the expert's replicas, so the
	// token split keeps each node's tokens inside it.
	nodesSpread nodePolicy = iota
	// nodesPack keeps all replicas of an expert within one node when their
	// count fits.
	nodesPack
)

var nodePolicyNames = [...]string{nodesSpread: "spread", nodesPack: "pack"}

func (n nodePolicy) String() string { return nodePolicyNames[n] }

// optObjective names the option that chooses what the plan minimizes.
const optObjective = "objective"

// objective is the value of the objective option.
type objective uint8

const (
	// objectiveStep (the default) plans for step time, compute plus the
	// token all-to-all, when the request carries the cost model's inputs
	// and the job has more than one node; otherwise it plans as
	// objectiveCompute does.
	objectiveStep objective = iota
	// objectiveCompute balances compute alone.
	objectiveCompute
)

var objectiveNames = [...]string{objectiveStep: "step", objectiveCompute: "compute"}

func (o objective) String() string { return objectiveNames[o] }

// optLoadWindow names the option that sets how many recent iterations'
// loads planning for step time weighs the replicated layout over
// (window.go).
const optLoadWindow = "load_window"

// defaultLoadWindow is load_window's default, and maxLoadWindow its largest
// value (the reports the sidecar keeps per layer).
const (
	defaultLoadWindow = 8
	maxLoadWindow     = 16
)

// optTwoHomeMargin names the option that sets how much estimated step time
// planning for step time gives up for a 2-homed layout (costplan.go).
const optTwoHomeMargin = "two_home_margin"

// optKeepMargin names the option that sets by how much a new plan must beat
// the current one for the current one to be replaced (layout.go,
// costplan.go).
const optKeepMargin = "keep_margin"

// optIntakeDealNodes names the option that sets the most nodes on which
// planning for step time also scores each candidate's intake-dealt form
// (costplan.go, intake.go).
const optIntakeDealNodes = "intake_deal_nodes"

// defaultIntakeDealNodes is intake_deal_nodes' default (homedNodes: beyond
// it the deal doubled the planner benchmark's instructions; see
// plugins/swiftmoe/README.md), and maxIntakeDealNodes its largest value.
const (
	defaultIntakeDealNodes = homedNodes
	maxIntakeDealNodes     = 1 << 16
)

// defaultTwoHomeMargin is two_home_margin's default (measured in the
// simulator: plugins/swiftmoe/README.md).
const defaultTwoHomeMargin = 0.2

// options are the strategy's parsed options.
type options struct {
	nodes     nodePolicy
	objective objective
	// window is load_window: with objective=step, the replicated layout
	// replaces the chosen plan when its mean estimated step time over the
	// prediction and the last window reports is lower (window.go; 0 or 1:
	// the prediction alone decides).
	window int
	// twoHome is two_home_margin: a 2-homed layout wins when its estimate
	// is within this fraction above the best (costplan.go).
	twoHome float64
	// keep is keep_margin: the current plan stays unless the new one's
	// busiest rank (objective=compute) or estimated step time
	// (objective=step) is lower by more than this fraction of it.
	keep float64
	// dealNodes is intake_deal_nodes: on up to this many nodes, each
	// candidate is also scored intake-dealt (costplan.go).
	dealNodes int
	// noSearch skips the count search of small layers (search.go): the
	// hybrid layouts' node plans, of which a layer makes many, go without.
	noSearch bool
	// eagerEstimate estimates the compute-balanced plan at once, where
	// planning for step time would let the estimate wait (costplan.go):
	// not an option users set; tests compare the two.
	eagerEstimate bool
	// searchWhole packs every count the count search tries (search.go),
	// where it would skip those that cannot pack below the plan to beat:
	// for tests, as eagerEstimate.
	searchWhole bool
	// packWhole packs every hybrid candidate in full before estimating it,
	// where planning for step time would stop packing one that the nodes
	// packed so far rule out (costplan.go): for tests, as eagerEstimate.
	packWhole bool
}

// optionSpecs are the options Info declares.
var optionSpecs = []sdk.Option{{
	Name: optNodePolicy,
	Description: "how an expert's replicas are laid out over nodes when ranks_per_node is set: " +
		"spread (an expert with r replicas on min(r, nodes) nodes, counts per node differing by at most one, " +
		"so each node's tokens for it stay in the node) or pack (all replicas of an expert in one node when they fit)",
	Default: nodesSpread.String(),
	Type:    sdk.OptionEnum,
	Values:  []string{nodesSpread.String(), nodesPack.String()},
}, {
	Name: optObjective,
	Description: "what a plan minimizes: step (the busiest rank's compute plus the token all-to-all, " +
		"from the request's cost model and link bandwidths, when they are known and there is more than one node; " +
		"otherwise compute) or compute (the busiest rank's load alone)",
	Default: objectiveStep.String(),
	Type:    sdk.OptionEnum,
	Values:  []string{objectiveStep.String(), objectiveCompute.String()},
}, {
	Name: optLoadWindow,
	Description: "with objective=step, where every expert fits in one node's slots, keep every expert in every node instead of the plan " +
		"for the predicted loads when that has the lower mean estimated step time over the prediction and the last load_window iterations' loads " +
		"(sent by the sidecar when the job has a cost model and more than one node), so that a plan holds when the hot experts move; " +
		"0 or 1: the prediction alone decides",
	Default: strconv.Itoa(defaultLoadWindow),
	Type:    sdk.OptionInt,
	Min:     0,
	Max:     maxLoadWindow,
}, {
	Name: optTwoHomeMargin,
	Description: "with objective=step on 3 to 8 nodes where the experts do not all fit in one node's slots, how much more " +
		"estimated step time (a fraction) a layout that holds the hot experts in every node and every other expert in two nodes " +
		"may have and still be chosen over the best plan for the predicted loads: a hedge for the experts whose load moves " +
		"(one that was cold has a replica in two nodes, not one); 0: the estimate alone decides",
	Default: strconv.FormatFloat(defaultTwoHomeMargin, 'g', -1, 64),
	Type:    sdk.OptionFloat,
	Min:     0,
	Max:     1,
}, {
	Name: optKeepMargin,
	Description: "keep the current plan unless the new one's busiest rank (objective=compute) or estimated step time " +
		"(objective=step) is lower by more than this fraction: where the loads barely move (uniform routing), the placement " +
		"then stays, and the engine does not index and split a new placement on the next iteration's layer calls; " +
		"0: the current plan stays only where the new one is no better",
	Default: "0",
	Type:    sdk.OptionFloat,
	Min:     0,
	Max:     1,
}, {
	Name: optIntakeDealNodes,
	Description: "with objective=step where the experts do not all fit in one node's slots, the most nodes on which each candidate plan " +
		"is also scored with every node's replicas re-dealt over its ranks, those that take in tokens from other nodes spread first, " +
		"and kept so when that is estimated faster; on more nodes it costs planning time (about twice the instructions on 32 nodes " +
		"of 8) for a lower all-to-all; 0: never",
	Default: strconv.Itoa(defaultIntakeDealNodes),
	Type:    sdk.OptionInt,
	Min:     0,
	Max:     maxIntakeDealNodes,
}}

var _ sdk.OptionValidator = (*Strategy)(nil)

// ValidateOptions checks a job's options against their declarations
// (optionSpecs), listing every problem; parseOptions accepts the same values,
// so options accepted at registration never make Plan fail.
func (*Strategy) ValidateOptions(opts map[string]string) error {
	return sdk.ValidateDeclared(opts, optionSpecs)
}

// parseOptions checks req options strictly: unknown names and unknown values
// are errors that name the option and what it accepts.
func parseOptions(opts map[string]string) (options, error) {
	var o options
	if err := sdk.CheckOptions(opts, optNodePolicy, optObjective, optLoadWindow, optTwoHomeMargin, optIntakeDealNodes, optKeepMargin); err != nil {
		return o, err
	}
	nodes, err := choice(opts, optNodePolicy, nodePolicyNames[:])
	if err != nil {
		return o, err
	}
	obj, err := choice(opts, optObjective, objectiveNames[:])
	if err != nil {
		return o, err
	}
	window, err := sdk.IntOption(opts, optLoadWindow, defaultLoadWindow, 0, maxLoadWindow)
	if err != nil {
		return o, err
	}
	twoHome, err := sdk.FloatOption(opts, optTwoHomeMargin, defaultTwoHomeMargin, 0, 1)
	if err != nil {
		return o, err
	}
	deal, err := sdk.IntOption(opts, optIntakeDealNodes, defaultIntakeDealNodes, 0, maxIntakeDealNodes)
	if err != nil {
		return o, err
	}
	keep, err := sdk.FloatOption(opts, optKeepMargin, 0, 0, 1)
	if err != nil {
		return o, err
	}
	o.keep = keep
	o.nodes, o.objective, o.window, o.twoHome, o.dealNodes = nodePolicy(nodes), objective(obj), window, twoHome, deal
	return o, nil
}

// choice returns the index of opts[name] among names, 0 (the default) when
// the option is absent, or an error naming the option and its values.
func choice(opts map[string]string, name string, names []string) (uint8, error) {
	v, ok := opts[name]
	if !ok {
		return 0, nil
	}
	for i, n := range names {
		if v == n {
			return uint8(i), nil
		}
	}
	return 0, fmt.Errorf("%w: option %s = %q; want %s or %s (default %s)",
		sdk.ErrBadOption, name, v, strings.Join(names[:len(names)-1], ", "), names[len(names)-1], names[0])
}
