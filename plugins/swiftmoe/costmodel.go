package swiftmoe

// costModel is the step-time cost model of one MoE layer and iteration, in
// milliseconds: the spec shared with the engine
// (pyshim/swiftmoe/engine/costmodel.py), which testdata/vectors/costmodel.json
// keeps equal to this one.
//
//   - computeMs(load) = 1e3 * flopsPerToken * max_r load[r] / flopsPerS
//   - a2aMs(si, ri, se, re) = 4 * 1e3 * max_r max(max(si_r, ri_r) *
//     tokenBytes / intraBW, max(se_r, re_r) * tokenBytes / interBW): si/ri
//     are the tokens rank r sends to / receives from other ranks of its node,
//     se/re those across nodes; four one-way exchanges (dispatch and combine,
//     forward and backward), the simulator's all-to-all;
//   - copyMs(csi, cri, cse, cre): the same over expert copies, expertBytes
//     each, two exchanges (a burst copy and its gradient's return);
//   - step = compute + all-to-all (+ copies).
//
// An unknown input (0) prices its term at 0: a bandwidth of 0 makes its tier
// free, and without flopsPerToken or flopsPerS compute is free.
type costModel struct {
	tokenBytes, expertBytes  float64
	flopsPerToken, flopsPerS float64
	intraBW, interBW         float64
	// The engine's burst replicas, which the spec leaves out and step
	// estimates use (traffic.go): slots per rank (0: none) and the busiest
	// rank over the mean above which the engine makes them.
	burstSlots     int
	burstThreshold float64
}

// pricesCompute reports whether computeMs is known.
func (c *costModel) pricesCompute() bool { return c.flopsPerToken > 0 && c.flopsPerS > 0 }

// computeMs is the busiest rank's expert compute for per-rank token loads.
func (c *costModel) computeMs(load []float64) float64 {
	if !c.pricesCompute() || len(load) == 0 {
		return 0
	}
	var hi float64
	for _, x := range load {
		hi = max(hi, x)
	}
	return c.computeMsOf(hi)
}

// computeMsOf is computeMs for a busiest rank of hi tokens.
func (c *costModel) computeMsOf(hi float64) float64 {
	if !c.pricesCompute() {
		return 0
	}
	return 1e3 * c.flopsPerToken * hi / c.flopsPerS
}

// a2aMs is the token all-to-all of a layer from per-rank tier volumes.
func (c *costModel) a2aMs(si, ri, se, re []float64) float64 {
	return 4 * 1e3 * tiersSeconds(c.tokenBytes, c.intraBW, c.interBW, si, ri, se, re)
}

// copyMs is the burst copies of a layer from per-rank copy counts.
func (c *costModel) copyMs(csi, cri, cse, cre []float64) float64 {
	return 2 * 1e3 * tiersSeconds(c.expertBytes, c.intraBW, c.interBW, csi, cri, cse, cre)
}

// tiersSeconds is the slowest rank's max over its two tiers of
// max(sent, received) * unit bytes over the tier's bandwidth (0 for an
// unknown bandwidth).
func tiersSeconds(unit, intraBW, interBW float64, si, ri, se, re []float64) float64 {
	var t float64
	for r := range si {
		var ti, te float64
		if intraBW > 0 {
			ti = max(si[r], ri[r]) * unit / intraBW
		}
		if interBW > 0 {
			te = max(se[r], re[r]) * unit / interBW
		}
		t = max(t, ti, te)
	}
	return t
}
