package swiftmoe

// stepModel estimates the step time of a layer's placement with the cost
// model: the busiest rank's compute plus the token all-to-all, its traffic
// routed as the engine's split routes it (pyshim/swiftmoe/engine/split/
// tiers.py): every source rank's tokens for an expert go to its own slots of
// the expert first, then to the slots of the expert on its node, then to
// the rest, each tier taking sources and slots in rank order (north-west
// corner). So the tokens a node sends away for an expert leave from its last
// ranks, and those a node takes in land on its last slots of the expert.
//
// Each slot processes its expert's load split evenly over the expert's
// replicas: where the engine's split starts (engine/split/amounts.py) and
// what it keeps when that leaves the ranks balanced, as a plan packed for
// those weights does. Every rank routes an equal share of each expert's
// load (so a node's demand for an expert is its share of the ranks).
//
// An evaluation costs O(N*S + E*G): only the (expert, node) pairs that hold
// a replica are visited; a node that holds none of an expert sends its whole
// demand for it away, which every node's total gives at once.
//
// Shape legend: N ranks, G ranks per node, M nodes, S slots per rank, E
// experts; per (expert, node) entries at e*M+m.
type stepModel struct {
	cm         costModel
	n, g, m, s int
	e          int
	loads      []float64 // [E]
	nodeTotal  float64   // a node's demand for all experts

	// The plan being evaluated, indexed by index: its slots by expert, in
	// slot order (so by node), and the runs of one (expert, node) in them.
	start []int32 // [E+1]: expert e's slots are at[start[e]:start[e+1]]
	at    []int32 // [N*S]
	runs  []run   // the (expert, node) runs, expert by expert
	first []int32 // [E+1]: expert e's runs are runs[first[e]:first[e+1]]

	// Scratch of eval.
	load, local, si, ri, se, re []float64 // [N]
	allSend                     []float64 // [M]: what every rank of m sends away
	amt, slotLocal              []float64 // [N*S]
	w                           []float64 // [len(runs)]: per-replica weight of each run
}

// run is the slots at[lo:hi] of one expert on one node.
type run struct {
	node, lo, hi int32
}

// usable reports whether the cost model can weigh traffic against compute
// across nodes: compute priced, token bytes and the inter-node bandwidth
// known.
func (c *costModel) usable() bool {
	return c.pricesCompute() && c.tokenBytes > 0 && c.interBW > 0
}

// reset prepares the model for a layer of e experts with loads (len e, or
// empty: all zero) over n ranks in nodes of g, s slots each.
func (sm *stepModel) reset(cm costModel, loads []float64, e, n, g, s int) {
	m := n / g
	sm.cm, sm.n, sm.g, sm.m, sm.s, sm.e = cm, n, g, m, s, e
	sm.loads = loads
	var total float64
	for x := range e {
		total += loadOf(loads, x)
	}
	sm.nodeTotal = total / float64(m)
	for _, v := range []*[]float64{&sm.load, &sm.local, &sm.si, &sm.ri, &sm.se, &sm.re} {
		*v = grow(*v, n)
	}
	sm.allSend = grow(sm.allSend, m)
	sm.start = grow(sm.start, e+1)
	sm.first = grow(sm.first, e+1)
	sm.at = grow(sm.at, n*s)
	sm.amt = grow(sm.amt, n*s)
	sm.slotLocal = grow(sm.slotLocal, n*s)
}

// demand is the tokens a node's ranks route to expert x.
func (sm *stepModel) demand(x int) float64 {
	return loadOf(sm.loads, x) / float64(sm.m)
}

// index sorts dst's slots by expert (in slot order within one) and finds
// each expert's runs on nodes.
func (sm *stepModel) index(dst []int) {
	e, per := sm.e, sm.g*sm.s
	st := sm.start
	clear(st)
	for _, x := range dst {
		st[x+1]++
	}
	for i := 1; i <= e; i++ {
		st[i] += st[i-1]
	}
	for k, x := range dst {
		sm.at[st[x]] = int32(k)
		st[x]++
	}
	copy(st[1:], st[:e])
	st[0] = 0
	runs := sm.runs[:0]
	for x := range e {
		sm.first[x] = int32(len(runs))
		for i := st[x]; i < st[x+1]; i++ {
			nd := sm.at[i] / int32(per)
			if len(runs) > int(sm.first[x]) && runs[len(runs)-1].node == nd {
				runs[len(runs)-1].hi = i + 1
				continue
			}
			runs = append(runs, run{node: nd, lo: i, hi: i + 1})
		}
	}
	sm.first[e] = int32(len(runs))
	sm.runs = runs
	sm.w = grow(sm.w, len(runs))
}

// evenWeights sets each run's weight to its expert's load split evenly over
// all its replicas (the split's starting point, and what flat packing
// balances).
func (sm *stepModel) evenWeights() []float64 {
	for x := range sm.e {
		r := sm.start[x+1] - sm.start[x]
		for j := sm.first[x]; j < sm.first[x+1]; j++ {
			sm.w[j] = loadOf(sm.loads, x) / float64(r)
		}
	}
	return sm.w
}

// eval returns the estimated step time of dst (indexed, see index) with the
// per-replica weights w of its runs, and its compute and all-to-all parts.
func (sm *stepModel) eval(dst []int, w []float64) (step, compute, a2a float64) {
	n, g, s := sm.n, sm.g, sm.s
	clear(sm.load)
	clear(sm.local)
	clear(sm.se)
	clear(sm.re)
	for nd := range sm.m {
		sm.allSend[nd] = sm.nodeTotal
	}
	for j, rn := range sm.runs {
		for _, k := range sm.at[rn.lo:rn.hi] {
			sm.amt[k] = w[j]
			sm.load[int(k)/s] += w[j]
		}
	}
	// Local tier: a rank's share of the node's demand for x goes to its own
	// slots of x first, earlier slots first.
	for x := range sm.e {
		for j := sm.first[x]; j < sm.first[x+1]; j++ {
			rn := sm.runs[j]
			c := sm.demand(x) / float64(g)
			sm.allSend[rn.node] -= sm.demand(x)
			prev, left := int32(-1), 0.0
			for _, k := range sm.at[rn.lo:rn.hi] {
				r := k / int32(s)
				if r != prev {
					prev, left = r, c
				}
				t := min(left, sm.amt[k])
				sm.slotLocal[k] = t
				sm.local[r] += t
				left -= t
			}
		}
	}
	// Across nodes: what a node holding x cannot process of its demand
	// leaves from its last ranks, what its slots process beyond it lands on
	// its last slots of x; a node holding none sends all (allSend).
	for x := range sm.e {
		for j := sm.first[x]; j < sm.first[x+1]; j++ {
			rn := sm.runs[j]
			d := sm.demand(x)
			sup := w[j] * float64(rn.hi-rn.lo)
			switch {
			case d > sup:
				sm.sendTail(x, int(rn.node), d-sup, rn.lo, rn.hi)
			case sup > d:
				left := sup - d
				for i := rn.hi - 1; i >= rn.lo && left > 0; i-- {
					k := sm.at[i]
					t := min(left, sm.amt[k]-sm.slotLocal[k])
					if t > 0 {
						sm.re[int(k)/s] += t
						left -= t
					}
				}
			}
		}
	}
	for r := range n {
		nd := r / g
		sm.se[r] += max(0, sm.allSend[nd]) / float64(g)
		sm.si[r] = max(0, sm.nodeTotal/float64(g)-sm.local[r]-sm.se[r])
		sm.ri[r] = max(0, sm.load[r]-sm.local[r]-sm.re[r])
	}
	compute = sm.burstCompute(sm.cm.computeMs(sm.load))
	a2a = sm.cm.a2aMs(sm.si, sm.ri, sm.se, sm.re)
	return compute + a2a, compute, a2a
}

// burstGoal is how close to the mean the engine's burst replicas bring the
// busiest rank (engine/burst.py's goal).
const burstGoal = 1.005

// burstCompute is the compute of the loads in sm.load (compute without
// bursts) when the engine holds burst slots: past the burst threshold, it
// copies overloaded experts to the least-loaded ranks, a node's own first
// (a copy within a node costs little against the compute it moves), so the
// busiest rank comes down to about its node's mean, at the price of a copy
// within the node. The engine makes no burst that does not pay: the lower of
// the two.
func (sm *stepModel) burstCompute(compute float64) float64 {
	c := &sm.cm
	if c.burstSlots <= 0 || !c.pricesCompute() {
		return compute
	}
	var total, hi float64
	for _, l := range sm.load {
		total += l
		hi = max(hi, l)
	}
	mean := total / float64(sm.n)
	if mean <= 0 || hi <= max(1, c.burstThreshold)*mean {
		return compute
	}
	level := burstGoal * mean
	for nd := range sm.m {
		var node float64
		for _, l := range sm.load[nd*sm.g : (nd+1)*sm.g] {
			node += l
		}
		level = max(level, node/float64(sm.g))
	}
	after := c.computeMsOf(min(hi, level))
	if c.intraBW > 0 {
		after += 2 * 1e3 * c.expertBytes / c.intraBW
	}
	return min(compute, after)
}

// sendTail sends x tokens of expert e away from node nd, from its last ranks
// first, each up to its share of the demand less what it keeps locally; the
// node's slots of e are at[lo:hi].
func (sm *stepModel) sendTail(e, nd int, x float64, lo, hi int32) {
	g, s := sm.g, sm.s
	c := sm.demand(e) / float64(g)
	i := hi - 1
	for r := (nd+1)*g - 1; r >= nd*g && x > 0; r-- {
		kept := 0.0
		for ; i >= lo && int(sm.at[i])/s >= r; i-- {
			if int(sm.at[i])/s == r {
				kept += sm.slotLocal[sm.at[i]]
			}
		}
		t := min(x, c-kept)
		if t > 0 {
			sm.se[r] += t
			x -= t
		}
	}
}

// score is the estimated step time of dst.
func (sm *stepModel) score(dst []int) float64 {
	sm.index(dst)
	step, _, _ := sm.eval(dst, sm.evenWeights())
	return step
}
