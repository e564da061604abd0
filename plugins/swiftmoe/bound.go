package swiftmoe

// A lower bound on the step model's estimate (traffic.go) that needs only a
// layout's replicas per (expert, node), not which rank holds them, so that
// a candidate whose bound is above the best estimate so far is dropped
// before its ranks are packed (costplan.go). With even weights w = load /
// replicas and a node's demand d = load / M for each expert:
//
//   - compute: the busiest rank holds at least its heaviest replica and at
//     least its node's mean, and bursts bring it no lower than the busiest
//     node's mean (or the burst goal) plus their copy (burstCompute);
//   - sent across nodes: a node sends its demand for every expert less what
//     its replicas process of it, sum_x d - min(d, cnt*w); its ranks share
//     that, so the busiest sends at least a G-th;
//   - received: a node takes in sum_x max(0, cnt*w - d), a G-th of it at
//     least on its busiest rank, and a replica takes in at least its share
//     of what its node takes in of its expert, (cnt*w - d) / cnt.
//
// The all-to-all is then at least the inter-node tier's time for the
// larger of those (the tier within nodes adds to none of them).

// stepBound accumulates the bound over a layout's nodes.
type stepBound struct {
	sm         *stepModel
	heavy, run float64 // heaviest replica; most a replica takes in
	sendRecv   float64 // max over nodes of max(sent, received)
	nodeLoad   float64 // busiest node's load
	// below: nodeLoad is only a lower bound on the busiest node's load, so
	// bursts are priced without their copy (which falls as the level they
	// land at rises).
	below bool
}

// replicas counts cnt > 0 replicas of expert x, of w tokens each, on one
// node: it returns what they process, what of that meets the node's own
// demand, and what they take in from other nodes.
func (b *stepBound) replicas(x int, cnt int32, w float64) (sup, met, in float64) {
	d := b.sm.d[x]
	sup = float64(cnt) * w
	b.heavy = max(b.heavy, w)
	if sup > d {
		in = sup - d
		b.run = max(b.run, in/float64(cnt))
	}
	return sup, min(d, sup), in
}

// node counts a node whose replicas process load, meet met of its demand
// and take in recv from other nodes.
func (b *stepBound) node(load, met, recv float64) {
	b.sendRecv = max(b.sendRecv, b.sm.nodeTotal-met, recv)
	b.nodeLoad = max(b.nodeLoad, load)
}

// value is the bound on the layout's estimated step time.
func (b *stepBound) value() float64 {
	compute, a2a := b.parts()
	return compute + a2a
}

// parts is the bound's two terms, each a bound on its part of the
// estimate: compute, and the all-to-all.
func (b *stepBound) parts() (compute, a2a float64) {
	sm := b.sm
	c := &sm.cm
	g := float64(sm.g)
	hi := max(b.heavy, b.nodeLoad/g)
	compute = c.computeMsOf(hi)
	if c.burstSlots > 0 && c.pricesCompute() {
		level := max(burstGoal*sm.total/float64(sm.n), b.nodeLoad/g)
		// The copy lands on a rank loaded at most level (its node's
		// lightest): priced at level, it is no dearer than the estimate's.
		if b.below {
			compute = min(compute, c.computeMsOf(min(hi, level)))
		} else {
			compute = min(compute, c.computeMsOf(min(hi, level))+sm.burstCopyMs(level))
		}
	}
	cross := max(b.sendRecv/g, b.run)
	return compute, 4 * 1e3 * cross * c.tokenBytes / c.interBW
}

// boundPlan is the bound for the plan dst (ids in range; a bound on the
// estimate when every expert is held).
func (sm *stepModel) boundPlan(dst []int) float64 {
	sm.weigh(dst)
	return sm.boundWeighed(dst)
}

// boundCounts is a bound no higher than boundPlan's for any plan with reps
// replicas of each expert, from those counts alone: the heaviest replica;
// a replica of x takes in at least w - d, what it takes in alone on its
// node (more replicas there take in more each); and the busiest node at
// least the mean. It rules out a plan far from the best (the plan in force
// once the load has moved) at a tenth of boundPlan's cost. Its terms are
// held a relative 1e-12 under the ones boundPlan sums otherwise.
func (sm *stepModel) boundCounts(reps []int32) float64 {
	const under = 1 - 1e-12
	b := stepBound{sm: sm, nodeLoad: sm.nodeTotal * under, below: true}
	for x, r := range reps[:sm.e] {
		if r == 0 {
			continue
		}
		w := loadOf(sm.loads, x) / float64(r)
		if w > b.heavy {
			b.heavy = w
		}
		if in := (w - sm.d[x]) * under; in > b.run {
			b.run = in
		}
	}
	return b.value()
}

// boundWeighed is boundPlan once dst is weighed.
func (sm *stepModel) boundWeighed(dst []int) float64 {
	ex := sm.ex[:sm.e]
	for x := range ex {
		ex[x].nodeOf = -1
	}
	b := stepBound{sm: sm}
	per := sm.g * sm.s
	for nd := range sm.m {
		held := sm.held[:0]
		for _, x := range dst[nd*per : (nd+1)*per] {
			if ex[x].nodeOf != int32(nd) {
				ex[x].nodeOf, ex[x].cnt = int32(nd), 0
				held = append(held, int32(x))
			}
			ex[x].cnt++
		}
		var load, met, recv float64
		for _, x := range held {
			sup, m, in := b.replicas(int(x), ex[x].cnt, sm.w[x])
			load, met, recv = load+sup, met+m, recv+in
		}
		b.node(load, met, recv)
		sm.held = held
	}
	return b.value()
}

// beats reports whether a candidate whose bound is lb may be estimated
// below best: bounds and estimates sum in different orders, so a bound is
// trusted only past a relative 1e-9.
func beats(lb, best float64) bool { return lb <= best*(1+1e-9) }
