package swiftmoe

import (
	"errors"
	"math"
	"math/bits"
	"slices"
)

// Hybrid layouts: when tokens crossing nodes cost more than they save in
// compute balance, an expert's replicas belong in the nodes that route
// tokens to it. A hybrid layout of h gives the h most loaded experts
// (global) the same number of replicas in every node, and each other
// expert (single-homed) its replicas in one node. With tokens routed evenly
// from every rank, every node then processes its own tokens of a global
// expert, and only the tokens of single-homed experts cross nodes.
//
// Equal counts per node are what make the engine's split keep those tokens
// in their node: the split starts from each expert's load spread evenly
// over its replicas and moves tokens only to balance the ranks (engine/
// split/amounts.py), and with equal counts per node the even spread is
// every node's own demand. The layout is then a node layout like the
// spread policy's (nodes.go): each node's ranks are packed by balanced
// differencing and refined (noderanks.go).
//
// Counts: the single-homed experts get one replica each, as evenly over the
// nodes as they go (q or q+1 per node), onto the least-loaded node,
// heaviest first; the global experts share the slots every node has left
// by EPLB's rule (one replica each, then each extra replica to the highest
// load per replica); a node with one slot to spare gives it to its heaviest
// single-homed expert (or, with none, its heaviest global one). h = E (when
// every expert fits in one node) is the replicated layout; a larger h moves
// fewer tokens between nodes and leaves fewer slots for balancing compute,
// which the step-time estimate weighs (costplan.go).
//
// Homes: with more than two nodes, the other experts may each get k > 1
// replicas, one in each of k distinct nodes (k-homed), so that a node
// sends away only the tokens of the experts it does not hold, a fraction
// 1 - k/M of each, and takes in the other nodes' share on its own
// replica. When skew leaves too few slots for every expert in every node,
// this is what keeps the all-to-all near the layout that holds each expert
// in many nodes: the hot experts global, with equal counts per node (no
// node short of one, so no node's last ranks send for it), and the cold
// ones in two nodes rather than one.

// errNoLayout means a hybrid layout does not exist for the h asked: a node
// would hold no expert, or the slots do not hold the experts.
var errNoLayout = errors.New("no hybrid layout of this h")

// errOutbound means packing stopped because the nodes packed so far bound
// the layout's estimate above the best (see planLayerStep).
var errOutbound = errors.New("the nodes packed so far rule the layout out")

// hybridMax is the largest h whose layout fits: the global experts take
// one slot per node each, and the single-homed ones one slot somewhere:
// h <= slots per node and M*(F-h) >= E-h.
func hybridMax(e, nodes, perNode int) int { return max(0, hybridMaxHomes(e, nodes, perNode, 1)) }

// hybridMaxHomes is hybridMax with k-homed experts (1 <= k < nodes): h <=
// slots per node and M*(F-h) >= k*(E-h); -1 when no h fits.
func hybridMaxHomes(e, nodes, perNode, k int) int {
	if nodes < 2 || k < 1 || k >= nodes || nodes*perNode < k*e {
		return -1
	}
	h := (nodes*perNode - k*e) / (nodes - k)
	return max(0, min(h, e, perNode))
}

// hybridScratch is the hybrid planner's per-layer state.
type hybridScratch struct {
	order      []int32     // experts by load, heaviest first
	keys       []uint64    // rankExperts' sort keys
	queue      []int32     // homeSingles' eligible nodes
	deque      []homeEntry // homeSinglesOne's eligible nodes
	tmp        []uint64    // sortKeys scratch
	cnt        []int32
	home       []int32   // per expert: its first node, -1 for a global expert
	homes      []int32   // per expert: its k nodes, homes[x*k : x*k+k]
	k          int       // the layout's homes per expert that is not global
	nodeLoad   []float64 // per node
	nSingle    []int32   // per node: single-homed experts
	spare      []int32   // per node: the expert its spare slot goes to, -1 for none
	most       int32     // the single-homed experts of the nodes that hold the most
	extra      int       // the global experts' slots beyond one each, per node
	subLoads   []float64
	subReps    []int32
	runA, runB []int32 // packHybrid's experts that are not global, by count
	// boundHybridShape's bound, before its value, for the layout of shapeH
	// (-1: none), which boundHybridHomed raises.
	shape  stepBound
	shapeH int
	counts counter
	// The bound's per-node sums (see boundHybrid), and its two terms.
	bLoad, bMet, bRecv     []float64
	boundCompute, boundA2A float64
}

// rankExperts orders the layer's experts by load, heaviest first (ties by
// id), once per layer. It sorts one integer key per expert, as weights.set
// does (the load's bits with the id in place of the lowest), then an
// insertion pass orders the few experts whose loads differ only in those
// bits.
func (hs *hybridScratch) rankExperts(loads []float64, e int) {
	hs.order = grow(hs.order, e)
	idBits := bits.Len(uint(e - 1))
	keys := grow(hs.keys, e)[:0]
	for x := range e {
		k := ^math.Float64bits(loadOf(loads, x)) >> idBits
		keys = append(keys, k<<idBits|uint64(x))
	}
	hs.tmp = grow(hs.tmp, e)
	hs.cnt = grow(hs.cnt, 2*(e*sortBuckets+1))
	sortKeys(keys, hs.tmp, hs.cnt)
	idMask := uint64(1)<<idBits - 1
	order := hs.order
	for i, k := range keys {
		order[i] = int32(k & idMask)
	}
	before := func(a, b int32) bool {
		la, lb := loadOf(loads, int(a)), loadOf(loads, int(b))
		return la > lb || (la == lb && a < b)
	}
	for i := 1; i < len(order); i++ {
		for j := i; j > 0 && before(order[j], order[j-1]); j-- {
			order[j], order[j-1] = order[j-1], order[j]
		}
	}
	hs.keys = keys
}

// rankExpertsNear is rankExperts from a hint: hint, a permutation of the e
// experts, and reps, replica counts that grow with the load, as the
// compute-balanced plan's weights order and counts are (an expert with more
// replicas has at least the load of one with fewer, and among experts of
// one count the weights order is the load order but where rounding ties
// them). The experts by count, most first, each count's in the hint's
// order, are then nearly in load order, and an insertion pass by
// rankExperts' order (load, then id: a total order, so the result is
// rankExperts') finishes it. Past a budget of moves, or with counts out of
// range, it falls back to rankExperts' sort: the hint only makes it cheap.
// It reports whether the hint served (no fallback).
func (hs *hybridScratch) rankExpertsNear(loads []float64, e int, hint, reps []int32) bool {
	if !hs.rankNear(loads, e, hint, reps) {
		hs.rankExperts(loads, e)
		return false
	}
	return true
}

// rankNear is rankExpertsNear without its fallback: it reports false,
// leaving hs.order unfinished, where the hint does not serve.
func (hs *hybridScratch) rankNear(loads []float64, e int, hint, reps []int32) bool {
	if len(hint) != e || len(reps) < e || e == 0 {
		return false
	}
	most := int32(0)
	for _, r := range reps[:e] {
		if r < 0 {
			return false
		}
		most = max(most, r)
	}
	if int(most) > 4*e {
		return false
	}
	// By count, most first (bucket most-r), stable.
	cnt := grow(hs.cnt, int(most)+2)
	hs.cnt = cnt
	clear(cnt)
	for _, r := range reps[:e] {
		cnt[most-r+1]++
	}
	for b := 1; b < len(cnt); b++ {
		cnt[b] += cnt[b-1]
	}
	order := grow(hs.order, e)
	hs.order = order
	for _, x := range hint {
		b := most - reps[x]
		order[cnt[b]] = x
		cnt[b]++
	}
	budget := 4 * e
	prev := order[0]
	lp := loadOf(loads, int(prev)) // the load of order[i-1]
	for i := 1; i < e; i++ {
		v := order[i]
		lv := loadOf(loads, int(v))
		if lp > lv || (lp == lv && prev < v) {
			prev, lp = v, lv // in order: the common case
			continue
		}
		j := i
		for ; j > 0; j-- {
			u := order[j-1]
			if lu := loadOf(loads, int(u)); lu > lv || (lu == lv && u < v) {
				break
			}
			order[j] = u
			budget--
		}
		order[j] = v
		if budget < 0 {
			return false
		}
		prev = order[i]
		lp = loadOf(loads, int(prev))
	}
	return true
}

// planHybrid writes the hybrid layout of h into the plan being built
// (p.rk.dst) over nodes of r ranks, with its counts in p.reps and their
// weights in p.wt (rankExperts must have run for the layer).
func (p *planner) planHybrid(h, r int) error {
	if err := p.hybridCounts(h, r); err != nil {
		return err
	}
	return p.packHybrid(h, r, nil)
}

// hybridCounts sets the counts of the hybrid layout of h over nodes of r
// ranks: p.reps, each node's replicas of each expert (p.nodes.lay.cnt), the
// single-homed experts' nodes and the nodes' spare replicas.
func (p *planner) hybridCounts(h, r int) error { return p.hybridCountsHomes(h, 1, r) }

// hybridCountsHomes is hybridCounts with every expert that is not global
// k-homed (see Homes above): hybridHomes, then hybridCountsHomed.
func (p *planner) hybridCountsHomes(h, k, r int) error {
	if err := p.hybridHomes(h, k, r); err != nil {
		return err
	}
	p.hybridCountsHomed(h, r)
	return nil
}

// hybridHomes gives the hybrid layout of h over nodes of r ranks, with
// every expert that is not global k-homed, its homes (hs.home, hs.homes)
// and each node's single-homed experts (hs.nSingle), and each node with a
// slot to spare the expert that takes it (hs.spare); hybridCountsHomed then
// sets the counts.
func (p *planner) hybridHomes(h, k, r int) error {
	hs := &p.hybrid
	e, s := p.nExperts, p.rk.s
	m, per := p.rk.n/r, r*s
	if k < 1 || (k > 1 && k >= m) {
		return errNoLayout
	}
	hs.k = k
	singles := e - h
	q, rho := singles*k/m, singles*k%m
	most := q
	if rho > 0 {
		most++
	}
	extra := per - h - most // the global experts' slots beyond one each, per node
	// With no global expert, nothing takes the slots the single-homed ones
	// leave.
	if h > e || extra < 0 || (h == 0 && (q == 0 || extra > 0)) {
		return errNoLayout
	}
	hs.most, hs.extra = int32(most), extra
	hs.home = grow(hs.home, e)
	hs.homes = grow(hs.homes, e*k)
	hs.nodeLoad = grow(hs.nodeLoad, m)
	hs.nSingle = grow(hs.nSingle, m)
	hs.spare = grow(hs.spare, m)
	clear(hs.nodeLoad)
	clear(hs.nSingle)
	for nd := range m {
		hs.spare[nd] = -1
	}
	for _, x := range hs.order[:h] {
		hs.home[x] = -1
	}
	if err := hs.homeSingles(p.loads, h, k, q, rho, m); err != nil {
		return err
	}
	if rho == 0 {
		return nil
	}
	// A node with a slot to spare gives it to its heaviest single-homed
	// expert (the first in order; it needs a second rank), else to its
	// heaviest global one.
	switch {
	case r > 1 && k == 1:
		// The single-homed experts (hs.order[h:]), heaviest first,
		// until every node with a slot to spare has its expert: most
		// meet theirs among the first M.
		want := 0
		for _, c := range hs.nSingle[:m] {
			if c < int32(most) {
				want++
			}
		}
		home, nSingle, spare := hs.home, hs.nSingle, hs.spare
		for _, x := range hs.order[h:] {
			if want == 0 {
				break
			}
			if nd := home[x]; nSingle[nd] < int32(most) && spare[nd] < 0 {
				spare[nd] = x
				want--
			}
		}
	case r > 1:
		for _, x := range hs.order {
			if hs.home[x] < 0 {
				continue
			}
			for _, nd := range hs.homes[int(x)*k : int(x+1)*k] {
				if hs.nSingle[nd] < int32(most) && hs.spare[nd] < 0 {
					hs.spare[nd] = x
				}
			}
		}
	}
	for nd := range m {
		if hs.nSingle[nd] == int32(most) || hs.spare[nd] >= 0 {
			continue
		}
		if h == 0 {
			return errNoLayout
		}
		hs.spare[nd] = hs.order[0]
	}
	return nil
}

// hybridCountsHomed sets the counts of the hybrid layout of h over nodes
// of r ranks once hybridHomes has given its experts their homes: p.reps,
// and each node's replicas of each expert (p.nodes.lay.cnt).
func (p *planner) hybridCountsHomed(h, r int) {
	hs := &p.hybrid
	e, s, k := p.nExperts, p.rk.s, hs.k
	m := p.rk.n / r
	subReps := p.globalCounts(h, hs.extra)
	np := &p.nodes
	np.reset(e, r, m, s)
	lay := &np.lay
	for i, x := range hs.order[:h] {
		c := subReps[i]
		p.reps[x] = c * int32(m)
		row := lay.cnt[int(x)*m : int(x+1)*m]
		for nd := range row {
			row[nd] = c
		}
	}
	// (The slices in locals: through p, hs and lay, each store reloads
	// them.)
	reps, cnt, home := p.reps, lay.cnt, hs.home
	for _, x := range hs.order[h:] {
		reps[x] = int32(k)
		// k == 1, the path of every layer with nodes, reads home directly
		// here, for the spare and in boundHybrid: the homes slices cost 3%
		// of a plan for step time (99.5 M instructions against 96.7 M).
		if k == 1 {
			cnt[int(x)*m+int(home[x])] = 1
			continue
		}
		for _, nd := range hs.homes[int(x)*k : int(x+1)*k] {
			cnt[int(x)*m+int(nd)] = 1
		}
	}
	for nd := range m {
		if hs.nSingle[nd] == hs.most {
			continue
		}
		x := hs.spare[nd]
		p.reps[x]++
		lay.cnt[int(x)*m+nd]++
	}
}

// globalCounts sets hs.subReps, the counts per node of the hybrid layout's
// h global experts (hs.order[:h]): EPLB over the h+extra slots each node
// has for them. It returns hs.subReps.
func (p *planner) globalCounts(h, extra int) []int32 {
	hs := &p.hybrid
	sub := grow(hs.subLoads, h)
	subReps := grow(hs.subReps, h)
	for i, x := range hs.order[:h] {
		sub[i] = loadOf(p.loads, int(x))
	}
	hs.subLoads, hs.subReps = sub, subReps
	if h > 0 {
		hs.counts.count(subReps, sub, h+extra, nil)
	}
	return subReps
}

// boundHybridShape is a lower bound on boundHybrid's value for the hybrid
// layout of h with single-homed experts (k = 1) over nodes of r ranks,
// before any expert has a home: the value grows with the heaviest replica,
// the most a replica takes in, the most a node sends and the busiest node's
// load, and each has a bound that does not depend on where the single-homed
// experts go. A global expert's replicas each weigh its load over its
// replicas (for the heaviest, at most m more than its count per node times
// m where the spare slots may go to it); the heaviest single-homed
// expert's one or two replicas (a node's spare slot) take in all but its
// node's demand, and so do those of the heaviest of them with no spare; a
// node meets its demand for the global experts at most, and for
// the single-homed ones only for those it holds, so some node sends at
// least the mean of what the nodes send; and some node carries at least
// the mean node load. It returns 0 (no bound) where the layout of h does
// not exist, which hybridCounts reports. It sets hs.subReps (globalCounts),
// as hybridCounts does.
func (p *planner) boundHybridShape(h, r int, sm *stepModel) float64 {
	hs := &p.hybrid
	hs.shapeH = -1
	e, s := p.nExperts, p.rk.s
	m, per := p.rk.n/r, r*s
	singles := e - h
	q, rho := singles/m, singles%m
	most := q
	if rho > 0 {
		most++
	}
	extra := per - h - most
	if singles == 0 || h > e || extra < 0 || (h == 0 && (q == 0 || extra > 0)) {
		return 0
	}
	subReps := p.globalCounts(h, extra)
	// The spare slots (one in each node holding q single-homed experts,
	// where rho > 0) go to the node's heaviest single-homed expert where it
	// has one and a second rank, else to the heaviest global expert.
	singleSpares := rho > 0 && q > 0 && r > 1
	globalSpares := rho > 0 && !singleSpares
	b := stepBound{sm: sm}
	for i, x := range hs.order[:h] {
		c := subReps[i] * int32(m)
		if i == 0 && globalSpares {
			c += int32(m)
		}
		b.heavy = max(b.heavy, loadOf(sm.loads, int(x))/float64(c))
	}
	// The heaviest single-homed expert, on two replicas at the most; and
	// of the m-rho+1 heaviest, one at least has no spare.
	x0 := int(hs.order[h])
	cnt0 := int32(1)
	if singleSpares {
		cnt0 = 2
		if j := h + m - rho; j < e {
			x := int(hs.order[j])
			b.replicas(x, 1, loadOf(sm.loads, x))
		}
	}
	b.replicas(x0, cnt0, loadOf(sm.loads, x0)/float64(cnt0))
	var demand float64 // the single-homed experts' demand per node
	d := sm.d
	for _, x := range hs.order[h:] {
		demand += d[x]
	}
	b.sendRecv = demand - demand/float64(m)
	b.nodeLoad = sm.total / float64(m)
	hs.shape, hs.shapeH = b, h
	return b.value()
}

// boundHybridHomed is boundHybridShape's bound for the layout of h once
// hybridHomes has homed its single-homed experts (k = 1) and given the
// spare slots their experts. The most one replica takes in is then that of
// the heaviest single-homed expert left without a spare (its one replica
// takes in all but its node's demand), where the shape bound can assume no
// more than the M-rho+1-th heaviest; and the heavier ones, with a spare,
// take in theirs over two replicas, as boundHybrid sums them. A layout it
// rules out is spared its counts (hybridCountsHomed) and count bound: on
// the planner benchmark's layers planned for step time, the 15th
// single-homed expert of h = 24 has no spare, and the bound rises from 7.59
// to 9.29 ms against the compute-balanced plan's upper bound of 8.82. It
// returns 0 (no bound) unless boundHybridShape bounded h last.
func (p *planner) boundHybridHomed(h int) float64 {
	hs := &p.hybrid
	if hs.shapeH != h || hs.k != 1 {
		return 0
	}
	b := hs.shape
	home, spare, loads := hs.home, hs.spare, b.sm.loads
	for _, x := range hs.order[h:] {
		l := loadOf(loads, int(x))
		if spare[home[x]] != x {
			b.replicas(int(x), 1, l)
			break
		}
		b.replicas(int(x), 2, l/2)
	}
	return b.value()
}

// homeSingles gives the experts that are not global (hs.order[h:]) their
// k distinct nodes each, heaviest first, one replica at a time onto the
// least-loaded node (ties: the lower node) that is not yet one of the
// expert's and holds fewer than q of them, or q while fewer than rho nodes
// hold q+1 (counted in replicas), so that every node ends with q or q+1;
// errNoLayout when an expert finds no such node. The eligible nodes wait in
// a queue ordered by (load, node); a node's load grows by the expert's load
// over k.
func (hs *hybridScratch) homeSingles(loads []float64, h, k, q, rho, m int) error {
	if m <= maskedHomeNodes {
		return hs.homeSinglesMasked(loads, h, k, q, rho, m)
	}
	if k == 1 {
		return hs.homeSinglesOne(loads, h, q, rho, m)
	}
	return hs.homeSinglesQueued(loads, h, k, q, rho, m)
}

// homeEntry is a node waiting in homeSinglesOne's queue, with its load.
type homeEntry struct {
	load float64
	node int32
}

// homeSinglesOne is homeSinglesQueued for one home per expert (k = 1, the
// only homing on more than maskedHomeNodes nodes). Each expert goes to the
// queue's front, so the queue is a window of a buffer with room for every
// expert's re-entry: the front leaves by a step of the window's start,
// and the node, its load grown, re-enters from the back, past the nodes
// whose (load, node) is above its own. Experts come heaviest first, so it
// mostly re-enters near the back: on the planner benchmark's 32 nodes it
// moves 5.4 nodes on average (about 3.8 past the first round, which is
// written out without the queue), where the queue kept as one sorted
// slice moved the 25 nodes before its place and found the place by a
// binary search whose steps mispredict.
func (hs *hybridScratch) homeSinglesOne(loads []float64, h, q, rho, m int) error {
	full := 0 // nodes holding q+1
	nSingle, nodeLoad := hs.nSingle[:m], hs.nodeLoad[:m]
	q32 := int32(q)
	singles := hs.order[h:]
	buf := grow(hs.deque, m+len(singles))
	hs.deque = buf
	lo, hi := 0, 0 // the queue is buf[lo:hi]
	home, homes := hs.home, hs.homes
	if q > 0 && len(singles) >= m && loadOf(loads, int(singles[m-1])) > 0 {
		// The first round, written out: each of the first m experts
		// takes the front node, the lowest of those still at load 0, and
		// re-enters behind them all (its load is above 0), so expert i
		// goes to node i; the queue is then the nodes by (load, node),
		// which is their reverse but where loads tie. (Through the queue
		// the i-th re-entry passes the i nodes before it: 496 of about
		// 1,250 steps on the planner benchmark's 32 nodes.) Each holds
		// one expert, below q+1 as q >= 1; it stays eligible unless q is
		// 1 and no node is to hold 2.
		for nd, x := range singles[:m] {
			home[x] = int32(nd)
			homes[x] = int32(nd)
			nSingle[nd] = 1
			nodeLoad[nd] = loadOf(loads, int(x))
		}
		if q > 1 || rho > 0 {
			for nd := m - 1; nd >= 0; nd-- {
				l := nodeLoad[nd]
				j := hi
				for ; j > 0 && buf[j-1].load == l && buf[j-1].node > int32(nd); j-- {
					buf[j] = buf[j-1]
				}
				buf[j] = homeEntry{l, int32(nd)}
				hi++
			}
		}
		singles = singles[m:]
	} else if q > 0 || rho > 0 {
		for nd := range int32(m) { // all loads 0: in node order
			buf[hi] = homeEntry{0, nd}
			hi++
		}
	}
	for _, x := range singles {
		if lo == hi {
			return errNoLayout
		}
		front := buf[lo]
		lo++
		nd := front.node
		home[x] = nd
		homes[x] = nd
		c := nSingle[nd] + 1
		nSingle[nd] = c
		if c == q32+1 {
			if full++; full == rho {
				// No more nodes of q+1: those holding q are done.
				w := lo
				for _, o := range buf[lo:hi] {
					if nSingle[o.node] < q32 {
						buf[w] = o
						w++
					}
				}
				hi = w
			}
		}
		l := front.load + loadOf(loads, int(x))
		nodeLoad[nd] = l
		if c > q32 || (c == q32 && full >= rho) {
			continue // no longer eligible
		}
		// Back in, past the nodes above it in (load, node) order.
		hi++
		win := buf[lo:hi]
		j := len(win) - 1
		for ; j > 0; j-- {
			o := win[j-1]
			// (Most that it passes are heavier: one test each. No
			// other entry is node nd.)
			if !(o.load > l || (o.load == l && o.node > nd)) {
				break
			}
			win[j] = o
		}
		win[j] = homeEntry{l, nd}
	}
	return nil
}

// homeSinglesQueued is homeSingles with the eligible nodes in a queue.
func (hs *hybridScratch) homeSinglesQueued(loads []float64, h, k, q, rho, m int) error {
	full := 0 // nodes holding q+1
	nSingle, nodeLoad := hs.nSingle, hs.nodeLoad
	eligible := func(nd int32) bool {
		c := int(nSingle[nd])
		return c < q || (c == q && full < rho)
	}
	queue := grow(hs.queue, m)[:0]
	for nd := range int32(m) {
		if eligible(nd) {
			queue = append(queue, nd) // all loads 0: in node order
		}
	}
	for _, x := range hs.order[h:] {
		homes := hs.homes[int(x)*k : int(x+1)*k]
		share := loadOf(loads, int(x)) / float64(k)
		for j := range homes {
			// The first eligible node not yet one of x's homes.
			i := 0
			if j > 0 {
				for i < len(queue) && slices.Contains(homes[:j], queue[i]) {
					i++
				}
			}
			if i == len(queue) {
				return errNoLayout
			}
			nd := queue[i]
			homes[j] = nd
			if nSingle[nd]++; nSingle[nd] == int32(q)+1 {
				if full++; full == rho {
					// No more nodes of q+1: those holding q are done.
					queue = slices.DeleteFunc(queue, func(n int32) bool { return n != nd && nSingle[n] >= int32(q) })
					i = slices.Index(queue, nd)
				}
			}
			l := nodeLoad[nd] + share
			nodeLoad[nd] = l
			if !eligible(nd) {
				queue = slices.Delete(queue, i, i+1)
				continue
			}
			// Its load only grew: it moves back past the nodes after it in
			// (load, node) order, those shifting forward.
			lo, hi := i+1, len(queue)
			for lo < hi {
				mid := int(uint(lo+hi) >> 1)
				o := queue[mid]
				if lo2 := nodeLoad[o]; lo2 < l || (lo2 == l && o < nd) {
					lo = mid + 1
				} else {
					hi = mid
				}
			}
			copy(queue[i:], queue[i+1:lo])
			queue[lo-1] = nd
		}
		hs.home[x] = homes[0]
	}
	hs.queue = queue
	return nil
}

// maskedHomeNodes is the most nodes homeSingles walks as a mask: on a few
// nodes the walk is cheaper than keeping the queue in order (the issue's
// 32-GPU layout, 4 nodes: 331.6 -> 325.9 M instructions a plan), on 32 it
// costs more (the planner benchmark for step time, 67.0 -> 70.4 M).
const maskedHomeNodes = 8

// homeSinglesMasked is homeSingles on up to maskedHomeNodes nodes: the
// eligible nodes are a mask, and each replica goes to the least-loaded of
// those not yet the expert's (ties: the lower node), found by walking the
// mask.
func (hs *hybridScratch) homeSinglesMasked(loads []float64, h, k, q, rho, m int) error {
	full := 0 // nodes holding q+1
	nSingle, nodeLoad := hs.nSingle[:m], hs.nodeLoad[:m]
	var elig uint64
	if q > 0 || rho > 0 {
		elig = math.MaxUint64 >> (64 - m)
	}
	q32 := int32(q)
	for _, x := range hs.order[h:] {
		homes := hs.homes[int(x)*k : int(x+1)*k]
		share := loadOf(loads, int(x)) / float64(k)
		var mine uint64
		for j := range homes {
			cand := elig &^ mine
			if cand == 0 {
				return errNoLayout
			}
			nd := bits.TrailingZeros64(cand)
			best := nodeLoad[nd]
			for cand &= cand - 1; cand != 0; cand &= cand - 1 {
				if o := bits.TrailingZeros64(cand); nodeLoad[o] < best {
					nd, best = o, nodeLoad[o]
				}
			}
			homes[j] = int32(nd)
			mine |= 1 << nd
			c := nSingle[nd] + 1
			nSingle[nd] = c
			nodeLoad[nd] = best + share
			if c == q32+1 {
				if full++; full == rho {
					// No more nodes of q+1: those holding q are done.
					for o := range m {
						if nSingle[o] >= q32 {
							elig &^= 1 << o
						}
					}
				}
			}
			if c > q32 || (c == q32 && full >= rho) {
				elig &^= 1 << nd
			}
		}
		hs.home[x] = homes[0]
	}
	return nil
}

// packHybrid packs the hybrid layout of h whose counts hybridCounts set:
// weights, each node's load and experts, then each node's ranks (done as
// for packNodeRanks).
func (p *planner) packHybrid(h, r int, done func(node int) bool) error {
	hs := &p.hybrid
	m := p.rk.n / r
	lay := &p.nodes.lay
	// Weights: the global experts, then the others by their count (k, or
	// k+1 with a spare slot), each of the latter two in load order.
	hs.runA, hs.runB = hs.runA[:0], hs.runB[:0]
	for _, x := range hs.order[h:] {
		if p.reps[x] == int32(hs.k) {
			hs.runA = append(hs.runA, x)
		} else {
			hs.runB = append(hs.runB, x)
		}
	}
	p.wt.setRuns(p.reps, p.loads, p.rk.n, len(p.rk.dst), hs.order[:h], [2][]int32{hs.runA, hs.runB})
	// Node loads and expert lists: a global expert is on every node, a
	// k-homed one (or a spare replica) on its k, O(E*k + h*M) rather than
	// a pass over every (expert, node).
	var base float64
	for _, x := range hs.order[:h] {
		base += float64(p.reps[x]/int32(m)) * p.wt.w[x]
	}
	for nd := range m {
		lay.load[nd] = base
	}
	lay.resetLists()
	for _, x := range p.wt.order {
		if hs.home[x] < 0 {
			lay.listEverywhere(x)
			continue
		}
		for _, nd := range hs.homes[int(x)*hs.k : int(x+1)*hs.k] {
			lay.listExpert(x, int(nd))
			lay.load[nd] += float64(lay.cnt[int(x)*m+int(nd)]) * p.wt.w[x]
		}
	}
	for nd := range m {
		// A global expert's spare replica in this node.
		if x := hs.spare[nd]; x >= 0 && hs.home[x] < 0 {
			lay.load[nd] += p.wt.w[x]
		}
	}
	p.rk.empty()
	return p.packNodeRanks(lay, math.Inf(1), done)
}

// boundHybrid is the bound (bound.go) on the estimated step time of the
// hybrid layout of h whose counts hybridCounts set, in O(E + M): a global
// expert holds the same replicas on every node but where it has the spare.
// It prices the layout under sm's loads (those the counts came from, or
// another iteration's).
func (p *planner) boundHybrid(h int, sm *stepModel) float64 {
	hs := &p.hybrid
	m := sm.m
	b := stepBound{sm: sm}
	w := func(x int32) float64 { return loadOf(sm.loads, int(x)) / float64(p.reps[x]) }
	var load, met, recv float64
	for i, x := range hs.order[:h] {
		sup, mt, in := b.replicas(int(x), hs.subReps[i], w(x))
		load, met, recv = load+sup, met+mt, recv+in
	}
	hs.bLoad, hs.bMet, hs.bRecv = grow(hs.bLoad, m), grow(hs.bMet, m), grow(hs.bRecv, m)
	for nd := range m {
		hs.bLoad[nd], hs.bMet[nd], hs.bRecv[nd] = load, met, recv
		x := hs.spare[nd]
		if x < 0 || hs.home[x] >= 0 {
			continue
		}
		// The spare replica of global expert x: c+1 replicas here.
		c := p.reps[x] / int32(m)
		wx := w(x)
		sup0, mt0, in0 := b.replicas(int(x), c, wx)
		sup1, mt1, in1 := b.replicas(int(x), c+1, wx)
		hs.bLoad[nd] += sup1 - sup0
		hs.bMet[nd] += mt1 - mt0
		hs.bRecv[nd] += in1 - in0
	}
	k := hs.k
	lay := &p.nodes.lay
	if k == 1 {
		// Most have one replica (the spares give some a second):
		// b.replicas with cnt 1, whose products and quotients by 1 are
		// exact, in locals.
		bLoad, bMet, bRecv := hs.bLoad[:m], hs.bMet[:m], hs.bRecv[:m]
		home, d, reps := hs.home, sm.d, p.reps
		heavy, run := b.heavy, b.run
		for _, x := range hs.order[h:] {
			nd := home[x]
			if c := reps[x]; c != 1 {
				b.heavy, b.run = heavy, run
				sup, mt, in := b.replicas(int(x), c, w(x))
				bLoad[nd] += sup
				bMet[nd] += mt
				bRecv[nd] += in
				heavy, run = b.heavy, b.run
				continue
			}
			// (What takes in nothing adds +0 to the node's intake,
			// which leaves it as it is: its sums start at +0.)
			l, dx := loadOf(sm.loads, int(x)), d[x]
			heavy = max(heavy, l)
			bLoad[nd] += l
			if l > dx {
				in := l - dx
				run = max(run, in)
				bMet[nd] += dx
				bRecv[nd] += in
			} else {
				bMet[nd] += l
			}
		}
		b.heavy, b.run = heavy, run
	} else {
		for _, x := range hs.order[h:] {
			wx := w(x)
			for _, nd := range hs.homes[int(x)*k : int(x+1)*k] {
				sup, mt, in := b.replicas(int(x), lay.cnt[int(x)*m+int(nd)], wx)
				hs.bLoad[nd] += sup
				hs.bMet[nd] += mt
				hs.bRecv[nd] += in
			}
		}
	}
	for nd := range m {
		b.node(hs.bLoad[nd], hs.bMet[nd], hs.bRecv[nd])
	}
	hs.boundCompute, hs.boundA2A = b.parts()
	return hs.boundCompute + hs.boundA2A
}
