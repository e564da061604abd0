package swiftmoe

import (
	"fmt"

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

// options are the strategy's parsed options.
type options struct {
	nodes nodePolicy
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
	if err := sdk.CheckOptions(opts, optNodePolicy); err != nil {
		return o, err
	}
	if v, ok := opts[optNodePolicy]; ok {
		switch v {
		case nodesSpread.String():
			o.nodes = nodesSpread
		case nodesPack.String():
			o.nodes = nodesPack
		default:
			return o, fmt.Errorf("%w: option %s = %q; want %s or %s (default %s)",
				sdk.ErrBadOption, optNodePolicy, v, nodesSpread, nodesPack, nodesSpread)
		}
	}
	return o, nil
}
