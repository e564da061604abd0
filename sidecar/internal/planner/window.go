package planner

import (
	"strconv"
	"strings"

	"github.com/swiftmoe/swiftmoe/plugins/sdk"
)

// loadWindow is how many recent reports per layer a job's planning requests
// carry (LastLoad and Earlier together): the value of the option the
// strategy names in Info.LoadWindowOption (the job's, else the option's
// default), at most DefaultHistory, and 0 (none) unless the job's cost model
// can price traffic across nodes: token bytes, flops per second and the
// bandwidth between nodes known, and more than one node. Elsewhere a window
// cannot change a plan that weighs compute alone, so it is not sent. Even
// then only the layers whose experts fit in one node's slots get it
// (strategyRequest): only there can a layout hold every expert in every
// node, the hedge a window weighs; elsewhere it would triple the request of
// a large job for nothing.
func loadWindow(info sdk.Info, opts map[string]string, cm sdk.CostModel, t sdk.Topology) int {
	name := info.LoadWindowOption
	if name == "" || !pricesTraffic(cm, t) {
		return 0
	}
	v, ok := opts[name]
	if !ok {
		for _, o := range info.Options {
			if o.Name == name {
				v, ok = o.Default, true
				break
			}
		}
	}
	if !ok {
		return 0
	}
	w, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || w < 2 {
		// The strategy's own validation rejects a bad value at
		// registration; 0 or 1 asks for no report beyond LastLoad.
		return 0
	}
	return min(w, DefaultHistory)
}

// pricesTraffic reports whether cm and t let a strategy weigh the token
// traffic between nodes against compute.
func pricesTraffic(cm sdk.CostModel, t sdk.Topology) bool {
	multiNode := t.RanksPerNode > 0 && t.RanksPerNode < t.WorldSize
	return multiNode && cm.TokenBytes > 0 && cm.FlopsPerSecond > 0 && t.InterNodeBandwidth > 0
}

// earlier returns up to n reports before the latest, latest first, sharing
// the ring's slices (valid until the next add); nil when there are none.
func (h *history) earlier(n int) [][]uint64 {
	n = min(n, h.count-1)
	if n <= 0 {
		return nil
	}
	out := make([][]uint64, n)
	for i := range n {
		out[i] = h.recent(i + 1)
	}
	return out
}
