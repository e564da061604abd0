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
	// spreadExtra's common case, inline: every extra replica finds a
	// node with a free slot.
	mask, per := l.mask, l.per
	cnt, load, free, list, size := l.cnt, l.load, np.free, l.list, l.size
	for _, x := range wt.order {
		b := np.lo[x]
		if k := reps[x] - b*nd; k > 0 {
			if q := np.q; int(k) <= len(q) {
				wx := wt.w[x]
				row := cnt[int(x)*nodes : int(x+1)*nodes]
				sel := np.sel[:k]
				m := 0
				if b == 0 {
					// Each node that takes one lists x.
					for _, key := range q[:k] {
						n := int(key & mask) // l.node(key)
						z := size[n]
						list[n*per+int(z)] = x // l.listExpert(x, n)
						size[n] = z + 1
						row[n] = 1
						ln := load[n] + wx
						load[n] = ln
						if f := free[n] - 1; f > 0 {
							free[n] = f
							sel[m] = math.Float64bits(ln)&^mask | uint64(n) // l.key(n)
							m++
						} else {
							free[n] = f
						}
					}
				} else {
					for _, key := range q[:k] {
						n := int(key & mask)
						row[n]++
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
				np.q = mergeKeys(q[k:], sel)
				np.sel = sel
			} else if err := np.spreadExtra(wt, x, k, e); err != nil {
				return err
			}
		}
		if b > 0 {
			for n := range nodes {
				l.listExpert(x, n)
			}
		}
	}
	if np.stale {
		// A repair moved replicas of experts already listed.
		l.listAll(wt.order)
	}
	return nil
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

// spreadExtra places k < nodes extra replicas of x (of e experts), one each
// on the k least-loaded nodes with a free slot. Every node in the queue
// holds the floor count of x, so any k of them may take one. When fewer
// than k nodes have room, the rest are placed by repairNode. A node that
// gets its first replica of x lists x; a repair marks the lists stale.
func (np *nodePacker) spreadExtra(wt *weights, x, k int32, e int) error {
	l := &np.lay
	nodes, mask := l.nodes, l.mask
	free, load, wx := np.free, l.load, wt.w[x]
	q := np.q
	take := min(int(k), len(q))
	row := l.cnt[int(x)*nodes : int(x+1)*nodes]
	sel := np.sel[:0]
	for _, key := range q[:take] {
		n := int(key & mask) // l.node(key)
		if row[n] == 0 {
			l.listExpert(x, n)
		}
		row[n]++
		free[n]--
		load[n] += wx
		if free[n] > 0 {
			sel = append(sel, l.key(n))
		}
	}
	insertionSortKeys(sel)
	np.q = mergeKeys(q[take:], sel)
	np.sel = sel
	if take == int(k) {
		return nil
	}
	np.stale = true
	for range int(k) - take {
		if err := np.repairNode(wt, x, e); err != nil {
			return err
		}
	}
	// Repairs are rare: rebuild the queue rather than track their changes.
	np.buildQueue(len(np.buf) - nodes)
	return nil
}
