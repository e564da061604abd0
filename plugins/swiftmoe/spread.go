package swiftmoe

import (
	"math"
	"slices"
)

// spread is node_policy=spread. Every node gets floor(reps/nodes) replicas
// of each expert, and the reps%nodes left over go to distinct nodes: LPT
// over nodes, experts heaviest per replica first, each extra replica onto
// the least-loaded node with a free slot. So an expert has min(reps, nodes)
// nodes and its per-node counts differ by at most one, the even share that
// uniform token sources ask for.
//
// The counts per node stay within ceil(reps/nodes) <= r*capR, so a node's
// ranks can hold them.
func (np *nodePacker) spread(reps []int32, wt *weights, r, nodes, s int) error {
	e := len(reps)
	nd := int32(nodes)
	np.reset(e, r, nodes, s)
	l := &np.lay
	var baseLoad float64
	var baseSlots int32
	lo, hi := np.lo[:e], np.hi[:e]
	for x, c := range reps {
		if c < nd { // most experts: no replica on every node
			lo[x], hi[x] = 0, min(c, 1)
			continue
		}
		b := c / nd
		lo[x], hi[x] = b, b
		if c > b*nd {
			hi[x]++
		}
		row := l.cnt[x*nodes : (x+1)*nodes]
		for n := range row {
			row[n] = b
		}
		baseLoad += float64(b) * wt.w[x]
		baseSlots += b
	}
	for n := range nodes {
		l.load[n] = baseLoad
		np.free[n] -= baseSlots
	}
	np.buildQueue(int(nd * np.free[0]))
	np.sel = grow(np.sel, nodes)
	l.resetLists()
	np.stale = false
	// The k extra replicas of x go one each to the k least-loaded nodes
	// with a free slot (every node in the queue holds the floor count of
	// x, so any k of them may take one); a node that gets its first
	// replica of x lists x. Two loops, with and without the listing,
	// which the hot path pays for in branches otherwise. When fewer nodes
	// have room than x has extra replicas, repairExtra places the rest.
	mask := l.mask
	cnt, load, free, list, end := l.cnt, l.load, np.free, l.list, l.end
	w := wt.w
	for _, x := range wt.order {
		b := lo[x]
		if k := reps[x] - b*nd; k > 0 {
			q := np.q
			take := min(int(k), len(q))
			wx := w[x]
			row := int(x) * nodes // x's counts: cnt[row+n]
			sel := np.sel[:take]
			m := 0
			if k == 1 && take == 1 && b == 0 {
				// An expert with a single replica (a third of a
				// skewed layer's), placed without the loops, whose
				// exits would mispredict.
				n := int(q[0] & mask) // l.node(q[0])
				ln, f := placeFirst(list, end, cnt, load, free, x, n, row, wx)
				if f > 0 {
					sel[0] = math.Float64bits(ln)&^mask | uint64(n) // l.key(n)
					np.q = requeueTaken(q, 1, sel)
				} else {
					np.q = q[1:]
				}
				continue
			}
			if b == 0 {
				for _, key := range q[:take] {
					n := int(key & mask) // l.node(key)
					if ln, f := placeFirst(list, end, cnt, load, free, x, n, row, wx); f > 0 {
						sel[m] = math.Float64bits(ln)&^mask | uint64(n) // l.key(n)
						m++
					}
				}
			} else {
				for _, key := range q[:take] {
					n := int(key & mask)
					cnt[row+n]++
					ln := load[n] + wx
					load[n] = ln
					if f := free[n] - 1; f > 0 {
						free[n] = f
						sel[m] = math.Float64bits(ln)&^mask | uint64(n)
						m++
					} else {
						free[n] = f
					}
				}
			}
			sel = sel[:m]
			insertionSortKeys(sel)
			np.q = requeueTaken(q, take, sel)
			np.sel = sel
			if take < int(k) {
				if err := np.repairExtra(wt, x, int(k)-take, e); err != nil {
					return err
				}
			}
		}
		if b > 0 {
			l.listEverywhere(x)
		}
	}
	if np.stale {
		// A repair moved replicas of experts already listed.
		l.listAll(wt.order)
	}
	return nil
}

// placeFirst puts the first replica of x (of weight wx) on node n: it lists
// x there (l.listExpert, the count 1 already final) and counts it in cnt
// (x's counts per node start at row), load and free; it returns the node's
// new load and free slots. (The slices are spread's locals, which stay in
// registers; x's row as an offset, since slicing it cost more than the
// index.)
func placeFirst(list, end, cnt []int32, load []float64, free []int32, x int32, n, row int, wx float64) (float64, int32) {
	z := end[n]
	list[z] = x
	end[n] = z + 1
	cnt[row+n] = 1
	ln := load[n] + wx
	load[n] = ln
	f := free[n] - 1
	free[n] = f
	return ln, f
}

// buildQueue fills the node queue with the nodes that have a free slot, in
// a buffer with room for extra more keys: the queue's window moves right by
// at most one key per extra replica placed (see rankqueue.go).
func (np *nodePacker) buildQueue(extra int) {
	l := &np.lay
	np.buf = grow(np.buf, l.nodes+extra)
	q := np.buf[:0]
	for n := range l.nodes {
		if np.free[n] > 0 {
			q = append(q, l.key(n))
		}
	}
	slices.Sort(q)
	np.q = q
}

// repairExtra places the left extra replicas of x (of e experts) that
// found no node with a free slot, by repairNode, and marks the lists stale.
func (np *nodePacker) repairExtra(wt *weights, x int32, left, e int) error {
	np.stale = true
	for range left {
		if err := np.repairNode(wt, x, e); err != nil {
			return err
		}
	}
	// Repairs are rare: rebuild the queue rather than track their changes.
	np.buildQueue(len(np.buf) - np.lay.nodes)
	return nil
}
