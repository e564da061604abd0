package swiftmoe

import "slices"

// stepModel estimates the step time of a layer's placement with the cost
// model: the busiest rank's compute plus the token all-to-all, its traffic
// routed as the engine's split routes it (pyshim/swiftmoe/engine/split/
// tiers.py): every source rank's tokens for an expert go to its own slots of
// the expert first, then to the slots of the expert on its node, then to
// the rest. The node tier takes from every rank and gives every slot in
// proportion to what the local tier left them, so the tokens a node sends
// away for an expert leave its ranks in proportion to what each has left of
// it, and those a node takes in land on its slots of the expert in
// proportion to the room each has left.
//
// Each slot processes its expert's load split evenly over the expert's
// replicas: where the engine's split starts (engine/split/amounts.py) and
// what it keeps when that leaves the ranks balanced, as a plan packed for
// those weights does. Every rank routes an equal share of each expert's
// load (so a node's demand for an expert is its share of the ranks).
//
// An evaluation costs O(N*S + E): it goes node by node, over the node's
// slots forward (loads, the local tier, each expert's replicas and local
// tokens on the node), then over them again for what the node takes in and
// sends away. What every rank sends away of the experts the node holds too
// little of is its share of each less what it keeps locally, both scaled by
// the fraction that leaves: one sum for the node, less each slot's part. A
// node that holds none of an expert sends its whole demand for it away,
// spread over its ranks, which the node's total demand less that of what
// it holds gives at once.
//
// Shape legend: N ranks, G ranks per node, M nodes, S slots per rank, E
// experts.
type stepModel struct {
	cm         costModel
	n, g, m, s int
	e          int
	loads      []float64 // [E]
	total      float64   // all experts' load
	nodeTotal  float64   // a node's demand for all experts
	d          []float64 // [E]: a node's demand for x (a rank's: ex[x].c)
	cSet       bool      // ex[x].c is set for the layer (weighReps)

	// The plan being evaluated: replicas and load per replica of each
	// expert, and the per-rank tier volumes (see costModel.a2aMs).
	reps                        []int32   // [E]
	w                           []float64 // [E]
	load, local, si, ri, se, re []float64 // [N]

	// Scratch of eval, per node: what each slot keeps of its own rank's
	// tokens, the experts the node holds (first slot first) and those it
	// holds.
	slotLocal []float64 // [G*S]
	held      []int32
	// [E]: eval's state of each expert (one record, rather than a slice
	// per field: evalNode's loops then hold one slice where they held
	// seven, and spill fewer registers).
	ex []evalExpert
	// [N*S]: what each slot takes in from other nodes (intake.go reads it).
	slotIn []float64
	// [G]: burstTraffic's receiving ranks, and each shedding rank's
	// expert and tokens not yet taken.
	recv    []int32
	shedX   []int32
	shedAmt []float64
	// evals counts evaluations (eval), for tests of what planning spares.
	evals int
}

// evalExpert is eval's state of one expert, stamped with the rank or node
// it is for.
type evalExpert struct {
	rankOf, nodeOf int32
	cnt            int32   // replicas on the node
	left           float64 // the rank's tokens not yet kept
	nodeLocal      float64 // what the node's local tier keeps
	recvFrac       float64 // the fraction of a slot's room filled from other nodes
	sendFrac       float64 // the fraction of a rank's tokens left that leaves the node
	// The expert's load per replica in the plan (w, a copy of the
	// model's), which evalNode's slot loops read from the record they
	// update, and a rank's share of its demand (c, set on the layer's
	// first weighing: weighReps).
	w, c float64
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
	sm.d = grow(sm.d, e)
	sm.ex = grow(sm.ex, e)
	var total float64
	d := sm.d[:e] // (through sm, each store reloads it)
	// For a power of two m, 1/m is exact, and a product by it rounds as
	// the quotient does, bit for bit, for a multiply's cost.
	fm := float64(m)
	pow2, inv := m&(m-1) == 0, 1/fm
	for x := range d {
		l := loadOf(loads, x)
		total += l
		if pow2 {
			d[x] = l * inv
		} else {
			d[x] = l / fm
		}
	}
	sm.cSet = false // a rank's share (ex[x].c), set by the first weighing
	sm.total = total
	sm.nodeTotal = total / float64(m)
	for _, v := range []*[]float64{&sm.load, &sm.local, &sm.si, &sm.ri, &sm.se, &sm.re} {
		*v = grow(*v, n)
	}
	sm.w = grow(sm.w, e)
	sm.reps = grow(sm.reps, e)
	sm.slotLocal = grow(sm.slotLocal, g*s)
	sm.held = grow(sm.held, g*s)
	sm.slotIn = grow(sm.slotIn, n*s)
}

// weigh sets reps and w, the load per replica, from dst.
func (sm *stepModel) weigh(dst []int) {
	reps := sm.reps
	clear(reps)
	for _, x := range dst {
		reps[x]++
	}
	sm.weighReps()
}

// weighReps sets w from reps, and on a layer's first weighing each expert's
// share of a rank (ex[x].c): only an evaluation reads it, and most layers
// planned for step time rule every candidate out by its bounds first.
func (sm *stepModel) weighReps() {
	w, ex := sm.w, sm.ex
	if !sm.cSet {
		fg := float64(sm.g)
		for x, dx := range sm.d[:sm.e] {
			ex[x].c = dx / fg
		}
		sm.cSet = true
	}
	for x, r := range sm.reps {
		w[x] = 0
		if r > 0 {
			w[x] = loadOf(sm.loads, x) / float64(r)
		}
		ex[x].w = w[x]
	}
}

// eval returns the estimated step time of dst and its compute and
// all-to-all parts, leaving the per-rank volumes in load, local, si, ri, se
// and re.
func (sm *stepModel) eval(dst []int) (step, compute, a2a float64) {
	sm.weigh(dst)
	sm.begin()
	for nd := range sm.m {
		sm.evalNode(dst, nd)
	}
	return sm.finish(dst)
}

// An evaluation can also be made node by node while a plan is being packed
// (packNodeRanks): evalCounts, for a plan that will hold reps replicas of
// each expert, then evalNode for each node once its ranks are final, in any
// order, then finish. Each node's volumes depend on its slots alone, so the
// estimate is eval's, bit for bit; and the nodes evaluated so far bound it
// (crossMs).

// evalCounts starts an evaluation of a plan that will hold reps replicas of
// each expert.
func (sm *stepModel) evalCounts(reps []int32) {
	copy(sm.reps, reps[:sm.e])
	sm.weighReps()
	sm.begin()
}

// begin resets what evalNode reads of earlier nodes.
func (sm *stepModel) begin() {
	sm.evals++
	for x := range sm.ex[:sm.e] {
		sm.ex[x].rankOf, sm.ex[x].nodeOf = -1, -1
	}
	clear(sm.re)
	clear(sm.se)
}

// finish returns eval's figures once every node of dst is evaluated.
func (sm *stepModel) finish(dst []int) (step, compute, a2a float64) {
	compute = sm.burstCompute(dst, sm.cm.computeMs(sm.load))
	a2a = sm.cm.a2aMs(sm.si, sm.ri, sm.se, sm.re)
	return compute + a2a, compute, a2a
}

// crossMs is the all-to-all time of node nd's ranks across nodes, once
// evaluated (evalNode): the estimate's all-to-all is at least the largest of
// these, summed as a2aMs sums it (bursts move tokens within nodes only).
func (sm *stepModel) crossMs(nd int) float64 {
	c := &sm.cm
	if c.interBW <= 0 {
		return 0
	}
	var t float64
	for q := nd * sm.g; q < (nd+1)*sm.g; q++ {
		t = max(t, max(sm.se[q], sm.re[q])*c.tokenBytes/c.interBW)
	}
	return 4 * 1e3 * t
}

// evalNode sets the tier volumes of node nd's ranks. (The model's slices
// are held in locals, which spares the reloads and bounds checks of
// fields in its inner loops.)
func (sm *stepModel) evalNode(dst []int, nd int) {
	g, s := sm.g, sm.s
	per := g * s
	base := nd * per
	node := dst[base : base+per]
	d, ex := sm.d, sm.ex
	load, local := sm.load[nd*g:(nd+1)*g], sm.local[nd*g:(nd+1)*g]
	si, ri := sm.si[nd*g:(nd+1)*g], sm.ri[nd*g:(nd+1)*g]
	se, re := sm.se[nd*g:(nd+1)*g], sm.re[nd*g:(nd+1)*g]
	slotLocal := sm.slotLocal[:per]
	// (held has room for every slot: an append's growth path in the loop
	// below made the compiler spill its values on every pass.)
	held, nh := sm.held[:per], 0
	nd32 := int32(nd)
	// Forward: loads, and the local tier (a rank's share of the node's
	// demand for x goes to its own slots of x first, earlier slots first).
	// (The node's slots are walked in one pass, rank by rank, rather than
	// through a slice per rank: a rank's few slots cost less than its
	// slices.)
	for q, j := 0, 0; q < g; q++ {
		r := int32(nd*g + q)
		var lr, loc float64
		for end := j + s; j < end; j++ {
			xe := &ex[node[j]]
			wx := xe.w
			lr += wx
			if xe.rankOf != r {
				xe.rankOf, xe.left = r, xe.c
			}
			t := min(xe.left, wx)
			slotLocal[j] = t
			loc += t
			xe.left -= t
			if xe.nodeOf != nd32 {
				xe.nodeOf, xe.cnt, xe.nodeLocal = nd32, 0, 0
				held[nh] = int32(node[j])
				nh++
			}
			xe.cnt++
			xe.nodeLocal += t
		}
		load[q], local[q] = lr, loc
	}
	// What the node processes of each expert it holds against its demand:
	// the node tier matches what the local tier left of both, and the
	// excess of one side crosses nodes, each rank's or slot's part in
	// proportion to what it has left. Every rank has the same share c[x]
	// of x, so a rank that holds no slot of x sends c[x] * sendFrac[x].
	allSend := sm.nodeTotal
	var shortSend float64 // what a rank holding none of the short experts sends of them
	for _, x := range held[:nh] {
		dx := d[x]
		allSend -= dx
		xe := &ex[x]
		sup := xe.w * float64(xe.cnt)
		xe.recvFrac, xe.sendFrac = 0, 0
		// (The local tier keeps at most min(dx, sup); rounding can leave
		// the room it did not fill at zero, so the fractions are guarded.)
		switch {
		case dx > sup:
			if room := dx - xe.nodeLocal; room > 0 {
				xe.sendFrac = min(1, (dx-sup)/room)
				shortSend += xe.c * xe.sendFrac
			}
		case sup > dx:
			if room := sup - xe.nodeLocal; room > 0 {
				xe.recvFrac = min(1, (sup-dx)/room)
			}
		}
	}
	slotIn := sm.slotIn[base : base+per]
	for q, j := 0, 0; q < g; q++ {
		var in, out float64
		for end := j + s; j < end; j++ {
			xe := &ex[node[j]]
			slotIn[j] = 0
			if f := xe.recvFrac; f > 0 {
				v := (xe.w - slotLocal[j]) * f
				slotIn[j] = v
				in += v
			}
			out += slotLocal[j] * xe.sendFrac
		}
		re[q] = in
		se[q] = shortSend - out
	}
	// A node holding none of an expert sends all its demand for it, from
	// every rank.
	even := max(0, allSend) / float64(g)
	share := sm.nodeTotal / float64(g)
	for q := range g {
		se[q] += even
		si[q] = max(0, share-local[q]-se[q])
		ri[q] = max(0, load[q]-local[q]-re[q])
	}
}

// burstGoal is how close to the mean the engine's burst replicas bring the
// busiest rank (engine/burst.py's goal).
const burstGoal = 1.005

// burstResidual is the share of the busiest rank's excess over that goal
// which the estimate leaves after bursts. A few burst slots per rank do not
// bring every placement down to the goal alike: one whose busiest rank is
// far over the mean needs more of them, and a plan that leans on bursts
// ran 0.7-0.9% over the bound where a plan packed for the loads ran 0.1-0.3%
// (burst E=32 top-2 on 16 GPUs). Without it the estimate cannot tell the
// two apart. Measured in the simulator over the README's table (0, 0.02,
// 0.05 and 0.1; plugins/swiftmoe/README.md): 0.02 gains the most in all
// and is the only value that leaves no row behind a baseline.
const burstResidual = 0.02

// burstCompute is the compute of the loads in sm.load (compute without
// bursts) when the engine holds burst slots: past the burst threshold, it
// copies overloaded experts to the least-loaded ranks, a node's own first
// (a copy within a node costs little against the compute it moves), so the
// busiest rank comes down to about its node's mean, at the price of a copy
// within the node onto that node's least-loaded rank; burstResidual of the
// busiest rank's excess over that level stays. The engine makes no burst
// that does not pay: the lower of the two. When the bursts are made, their
// tokens move within the nodes too (burstTraffic).
func (sm *stepModel) burstCompute(dst []int, compute float64) float64 {
	c := &sm.cm
	if c.burstSlots <= 0 || !c.pricesCompute() {
		return compute
	}
	var total, hi float64
	busiest := 0
	for r, l := range sm.load {
		total += l
		if l > hi {
			hi, busiest = l, r
		}
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
	home := busiest / sm.g * sm.g
	lightest := slices.Min(sm.load[home : home+sm.g])
	bursted := c.computeMsOf(min(hi, level+burstResidual*(hi-level))) + sm.burstCopyMs(lightest)
	if bursted >= compute {
		return compute
	}
	sm.burstTraffic(dst, level)
	return bursted
}

// burstTraffic moves the tokens of bursts within each node, as the engine's
// split sends them to the burst replicas. Every rank above level (tokens)
// sheds its excess of its heaviest expert (the one the engine's greedy list
// bursts first), which it no longer takes in from the node's other ranks
// (or, past what it took in, now sends them of its own). The node's ranks
// below level take the shed tokens in, the least loaded first, up to a
// common load (water-filling, as the engine's list puts each burst on the
// rank that ends up least loaded). A rank that takes in a burst of x keeps
// its own tokens for x (a rank's share of x) rather than sending them away,
// as the split's local tier does, unless the node already holds x on
// another rank: the split then evens x out over those replicas first (on
// the recorded E=32 trace at 50 GB/s, 143 layer calls in which the engine
// made no burst were estimated with bursts, and that credit put their
// all-to-all 30% under the simulator's). Without it a layout that counts on
// bursts would be priced as if its hot expert's rank still took in all of
// that expert's tokens. The excess a node cannot take below level stays
// where it is.
func (sm *stepModel) burstTraffic(dst []int, level float64) {
	g, s := sm.g, sm.s
	sm.recv = grow(sm.recv, g)
	sm.shedX = grow(sm.shedX, g)
	sm.shedAmt = grow(sm.shedAmt, g)
	for nd := range sm.m {
		load := sm.load[nd*g : (nd+1)*g]
		si, ri := sm.si[nd*g:(nd+1)*g], sm.ri[nd*g:(nd+1)*g]
		node := dst[nd*g*s : (nd+1)*g*s]
		var shed, sum float64
		recv := sm.recv[:0]
		for q, l := range load {
			sm.shedAmt[q] = 0
			switch {
			case l > level:
				ex := l - level
				shed += ex
				si[q] += max(0, ex-ri[q])
				ri[q] = max(0, ri[q]-ex)
				hx := -1
				for _, x := range node[q*s : (q+1)*s] {
					if hx < 0 || sm.w[x] > sm.w[hx] {
						hx = x
					}
				}
				sm.shedX[q], sm.shedAmt[q] = int32(hx), ex
				// Where the node holds hx on another rank too, the split
				// evens hx out over those replicas before any burst: the
				// ranks that take the excess in keep none of their own.
				if slices.Index(node[q*s+s:], hx) >= 0 || slices.Index(node[:q*s], hx) >= 0 {
					sm.shedX[q] = -1
				}
			case l < level:
				recv = append(recv, int32(q))
				sum += l
			}
		}
		if shed <= 0 || len(recv) == 0 {
			continue
		}
		// The receivers by load, then the common load w they rise to:
		// the lowest with sum over them of max(0, w - l) = shed, at most
		// level.
		for i := 1; i < len(recv); i++ {
			for j := i; j > 0 && load[recv[j]] < load[recv[j-1]]; j-- {
				recv[j], recv[j-1] = recv[j-1], recv[j]
			}
		}
		w := min(level, (shed+sum)/float64(len(recv)))
		var part float64
		for i, q := range recv[:len(recv)-1] {
			part += load[q]
			if float64(i+1)*load[recv[i+1]]-part >= shed {
				w = (shed + part) / float64(i+1)
				break
			}
		}
		// Each receiver takes its part of the shedders' experts in turn.
		from := 0
		for _, q := range recv {
			take := w - load[q]
			lastX, own := int32(-1), 0.0 // own: what q still has of lastX
			for take > 0 && from < g {
				if sm.shedAmt[from] <= 0 {
					from++
					continue
				}
				a := min(take, sm.shedAmt[from])
				if x := sm.shedX[from]; x != lastX {
					lastX, own = x, 0
					if x >= 0 {
						own = sm.ex[x].c
					}
				}
				kept := min(a, own)
				own -= kept
				ri[q] += a - kept
				si[q] = max(0, si[q]-kept)
				take -= a
				sm.shedAmt[from] -= a
			}
		}
	}
}

// forwardShare is the forward pass's share of a slot's compute, which hides
// a burst's copy (the backward's hides its gradient's return):
// engine/costmodel.py's FORWARD_SHARE.
const forwardShare = 1.0 / 3.0

// burstCopyMs is the price burstCompute puts on the bursts: what one copy
// within a node leaves exposed beside the planned compute of the rank it
// lands on (planned tokens), as the engine prices it
// (costmodel.copy_exposed_ms): the forward hides the copy behind a third of
// that compute, the backward its gradient's return behind two thirds. It
// falls as planned grows.
func (sm *stepModel) burstCopyMs(planned float64) float64 {
	if sm.cm.intraBW <= 0 {
		return 0
	}
	c := 1e3 * sm.cm.expertBytes / sm.cm.intraBW
	p := sm.cm.computeMsOf(planned)
	return max(0, c-forwardShare*p) + max(0, c-(1-forwardShare)*p)
}

// score is the estimated step time of dst.
func (sm *stepModel) score(dst []int) float64 {
	step, _, _ := sm.eval(dst)
	return step
}

// upper is an upper bound on score(dst), at the cost of the ranks' loads
// alone: the busiest rank's compute (bursts only lower it), and an
// all-to-all in which the busiest of the ranks' volumes (h: the busiest
// rank's load, or a rank's share of the node's demand if larger) crosses
// nodes, and twice that moves within a node. A rank sends at most its share
// and takes in at most its load; bursts (burstTraffic) add to a rank within
// its node at most the level it rises to, or the excess it sheds, each at
// most h. Sums in other orders are covered by a relative 1e-9.
func (sm *stepModel) upper(dst []int) float64 {
	sm.weigh(dst)
	return sm.upperOf(maxRankLoad(dst, sm.w, sm.n, sm.s)) // summed as eval sums them
}

// upperOf is upper for a plan whose busiest rank carries hi, summed in any
// order: planLayer's packers keep it (planHi), which spares weighing the
// plan and summing its slots.
func (sm *stepModel) upperOf(hi float64) float64 {
	c := &sm.cm
	h := max(hi, sm.nodeTotal/float64(sm.g))
	var ti, te float64
	if c.intraBW > 0 {
		ti = 2 * h * c.tokenBytes / c.intraBW
	}
	if c.interBW > 0 {
		te = h * c.tokenBytes / c.interBW
	}
	return (c.computeMsOf(hi) + 4*1e3*max(ti, te)) * (1 + 1e-9)
}
