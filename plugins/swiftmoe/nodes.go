package swiftmoe

import (
	"math"
	"math/bits"
	"slices"
)

// nodeLayout is node packing's output: how many replicas of each expert
// every node holds, each node's load (the summed weights of its replicas),
// and each node's experts in packing order. Node n's ranks then take
// demand(n).
type nodeLayout struct {
	nodes int       // nodes
	r     int       // ranks per node
	per   int       // slots per node
	cnt   []int32   // [expert*nodes + node]
	load  []float64 // per node
	list  []int32   // node n's experts: list[n*per : end[n]]
	end   []int32
	mask  uint64   // the node field of a node key
	seq   []uint64 // node keys by load (see byLoad)
}

// nodeDemand is what the ranks [lo, hi) of one node must hold: the replicas
// of each of its experts, listed in packing order. It is all a node's rank
// packing and refinement know of node packing.
type nodeDemand struct {
	node, nodes int
	lo, hi      int     // the node's ranks
	experts     []int32 // in packing order
	cnt         []int32 // [expert*nodes + node], as nodeLayout.cnt
}

// replicas is the node's count of expert x.
func (d *nodeDemand) replicas(x int32) int32 { return d.cnt[int(x)*d.nodes+d.node] }

// demand is node n's demand.
func (l *nodeLayout) demand(n int) nodeDemand {
	return nodeDemand{
		node: n, nodes: l.nodes, lo: n * l.r, hi: (n + 1) * l.r,
		experts: l.list[n*l.per : l.end[n]], cnt: l.cnt,
	}
}

// key orders nodes by load, then index, as rank keys order ranks.
func (l *nodeLayout) key(n int) uint64 {
	return math.Float64bits(l.load[n])&^l.mask | uint64(n)
}

// node is the node a key stands for.
func (l *nodeLayout) node(k uint64) int { return int(k & l.mask) }

// byLoad returns the node keys, lightest node first.
func (l *nodeLayout) byLoad() []uint64 {
	seq := grow(l.seq, l.nodes)[:0]
	for n := range l.nodes {
		seq = append(seq, l.key(n))
	}
	slices.Sort(seq)
	l.seq = seq
	return seq
}

// resetLists empties the per-node expert lists (per slots a node, so a
// node's list never overflows its segment).
func (l *nodeLayout) resetLists() {
	l.list = grow(l.list, l.nodes*l.per)
	l.end = grow(l.end, l.nodes)
	for n := range l.end {
		l.end[n] = int32(n * l.per)
	}
}

// listExpert appends expert x to node n's list.
func (l *nodeLayout) listExpert(x int32, n int) {
	l.list[l.end[n]] = x
	l.end[n]++
}

// listEverywhere appends expert x to every node's list. (The lists in
// locals: through listExpert, each append reloads them, since its store
// may have changed them.)
func (l *nodeLayout) listEverywhere(x int32) {
	list, end := l.list, l.end[:l.nodes]
	for n, z := range end {
		list[z] = x
		end[n] = z + 1
	}
}

// listAll fills the per-node lists from cnt, experts in order.
func (l *nodeLayout) listAll(order []int32) {
	l.resetLists()
	nodes := l.nodes
	for _, x := range order {
		for n, c := range l.cnt[int(x)*nodes : int(x+1)*nodes] {
			if c > 0 {
				l.listExpert(x, n)
			}
		}
	}
}

// nodePacker is node packing: when ranks_per_node splits the job into
// equal nodes, it decides how many replicas of each expert every node
// holds, by the node policy (pack below, spread in spread.go), and leaves
// the result in lay. The nodes' ranks are packed from it afterwards
// (noderanks.go).
type nodePacker struct {
	lay   nodeLayout
	order []int32  // experts in pack's order
	lo    []int32  // per expert: fewest replicas a node may hold
	hi    []int32  // per expert: most replicas a node may hold
	free  []int32  // per node: free slots
	buf   []uint64 // the node queue's buffer (see spread.go)
	q     []uint64 // keys of the nodes with a free slot, ascending
	sel   []uint64
	stale bool // a repair changed counts the lists were built from
}

// reset empties the nodes before a node-aware packing of e experts onto
// nodes nodes of r ranks and s slots: no replicas, no load, r*s free slots
// each.
func (np *nodePacker) reset(e, r, nodes, s int) {
	l := &np.lay
	l.nodes, l.r, l.per = nodes, r, r*s
	l.cnt = grow(l.cnt, e*nodes)
	clear(l.cnt)
	np.lo = grow(np.lo, e)
	np.hi = grow(np.hi, e)
	l.load = grow(l.load, nodes)
	np.free = grow(np.free, nodes)
	l.mask = uint64(1)<<bits.Len(uint(nodes-1)) - 1
	for n := range nodes {
		l.load[n] = 0
		np.free[n] = int32(r * s)
	}
}

// pack is node_policy=pack: experts (all their replicas as one chunk) are
// packed onto nodes, most replicas first, each onto the least-loaded node
// with room for the whole chunk; a chunk that fits in no node is split over
// the nodes with the most room. A node may hold at most r*capR[e] replicas
// of e, so that its ranks can hold them within the per-rank limit.
func (np *nodePacker) pack(reps []int32, loads []float64, wt *weights, r, nodes, s int) error {
	e := len(reps)
	np.reset(e, r, nodes, s)
	for x := range e {
		np.lo[x] = 0
		np.hi[x] = int32(r) * wt.capR[x]
	}
	np.order = grow(np.order, e)
	for i := range e {
		np.order[i] = int32(i)
	}
	slices.SortFunc(np.order, func(a, b int32) int {
		la, lb := loadOf(loads, int(a)), loadOf(loads, int(b))
		switch {
		case reps[a] != reps[b]:
			return int(reps[b] - reps[a])
		case la > lb:
			return -1
		case la < lb:
			return 1
		default:
			return int(a - b)
		}
	})

	for _, x := range np.order {
		if err := np.placeChunk(reps, wt, x); err != nil {
			return err
		}
	}
	np.lay.listAll(wt.order)
	return nil
}

// placeChunk puts all reps[x] replicas of x onto nodes.
func (np *nodePacker) placeChunk(reps []int32, wt *weights, x int32) error {
	l := &np.lay
	nodes := l.nodes
	limit := np.hi[x]
	row := l.cnt[int(x)*nodes : int(x+1)*nodes]
	k := reps[x]
	for k > 0 {
		// The least-loaded node that takes the whole chunk.
		best := -1
		for n := range nodes {
			if min(np.free[n], limit-row[n]) < k {
				continue
			}
			if best < 0 || l.load[n] < l.load[best] {
				best = n
			}
		}
		take := k
		if best < 0 {
			// Split: the node with the most room takes what it can.
			var most int32
			for n := range nodes {
				room := min(np.free[n], limit-row[n])
				if room > most || (room == most && room > 0 && l.load[n] < l.load[best]) {
					best, most = n, room
				}
			}
			take = most
		}
		if best < 0 {
			if err := np.repairNode(wt, x, len(reps)); err != nil {
				return err
			}
			k--
			continue
		}
		row[best] += take
		np.free[best] -= take
		l.load[best] += float64(take) * wt.w[x]
		k -= take
	}
	return nil
}

// repairNode places one replica of x (of e experts) when every node with
// room already holds its limit of x: a full node that may take x hands one
// replica of another expert to a node with room, keeping every count within
// lo and hi (the same counting argument as repairRank guarantees one
// exists).
func (np *nodePacker) repairNode(wt *weights, x int32, e int) error {
	l := &np.lay
	nodes := l.nodes
	q := -1
	for n := range nodes {
		if np.free[n] > 0 && (q < 0 || l.load[n] < l.load[q]) {
			q = n
		}
	}
	if q < 0 {
		return errNoRepair
	}
	limitX := np.hi[x]
	bestN, bestF := -1, int32(-1)
	var bestM float64
	for n := range nodes {
		if np.free[n] > 0 || l.cnt[int(x)*nodes+n] >= limitX {
			continue
		}
		for f := range int32(e) {
			if f == x || l.cnt[int(f)*nodes+n] <= np.lo[f] || l.cnt[int(f)*nodes+q] >= np.hi[f] {
				continue
			}
			m := max(l.load[q]+wt.w[f], l.load[n]-wt.w[f]+wt.w[x])
			if bestN < 0 || m < bestM {
				bestN, bestF, bestM = n, f, m
			}
		}
	}
	if bestN < 0 {
		return errNoRepair
	}
	l.cnt[int(bestF)*nodes+bestN]--
	l.cnt[int(bestF)*nodes+q]++
	l.cnt[int(x)*nodes+bestN]++
	l.load[bestN] += wt.w[x] - wt.w[bestF]
	l.load[q] += wt.w[bestF]
	np.free[q]--
	return nil
}
