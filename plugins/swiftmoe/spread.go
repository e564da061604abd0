package swiftmoe

import (
	"math"
	"slices"
)

// packSpread is the node-aware packing of node_policy=spread, used when
// ranks_per_node splits the job into equal nodes of r ranks. Every node
// gets floor(reps/nodes) replicas of each expert, and the reps%nodes left
// over go to distinct nodes: LPT over nodes, experts heaviest per replica
// first, each extra replica onto the least-loaded node with a free slot.
// So an expert has min(reps, nodes) nodes and its per-node counts differ by
// at most one, the even share that uniform token sources ask for. Each
// node's replicas are then packed onto its ranks as in the flat case, and
// refined there.
//
// The counts per node stay within ceil(reps/nodes) <= r*capR, so a node's
// ranks can hold them.
func (p *planner) packSpread(r int) error {
	nodes := p.nRanks / r
	nd := int32(nodes)
	p.resetNodes(r, nodes)
	var baseLoad float64
	var baseSlots int32
	for x := range p.nExperts {
		b := p.reps[x] / nd
		p.nodeLo[x], p.nodeHi[x] = b, (p.reps[x]+nd-1)/nd
		if b > 0 {
			row := p.nodeCnt[x*nodes : (x+1)*nodes]
			for n := range row {
				row[n] = b
			}
			baseLoad += float64(b) * p.w[x]
			baseSlots += b
		}
	}
	for n := range nodes {
		p.nodeLoad[n] = baseLoad
		p.nodeFree[n] -= baseSlots
	}
	p.buildNodeQueue(nodes, int(nd*p.nodeFree[0]))
	per := r * p.nSlots
	p.resetNodeLists(nodes, per)
	p.nodeStale = false
	for _, x := range p.order {
		if k := p.reps[x] % nd; k > 0 {
			if err := p.spreadExtra(x, k, nodes, per); err != nil {
				return err
			}
		}
		if p.nodeLo[x] > 0 {
			for n := range nodes {
				p.listExpert(x, n, per)
			}
		}
	}
	if p.nodeStale {
		// A repair moved replicas of experts already listed.
		p.listNodes(nodes, per)
	}
	return p.packNodeRanks(r, nodes)
}

// buildNodeQueue fills the node queue with the nodes that have a free slot,
// in a buffer with room for extra more keys: the queue's window moves right
// by at most one key per extra replica placed (see rankqueue.go).
func (p *planner) buildNodeQueue(nodes, extra int) {
	p.nodeBuf = grow(p.nodeBuf, nodes+extra)
	q := p.nodeBuf[:0]
	for n := range nodes {
		if p.nodeFree[n] > 0 {
			q = append(q, p.nodeKey(n))
		}
	}
	slices.Sort(q)
	p.nodeQ = q
}

// nodeKey orders nodes by load, then index, as rank keys order ranks.
func (p *planner) nodeKey(n int) uint64 {
	return math.Float64bits(p.nodeLoad[n])&^p.nodeMask | uint64(n)
}

// spreadExtra places k < nodes extra replicas of x, one each on the k
// least-loaded nodes with a free slot. Every node in the queue holds the
// floor count of x, so any k of them may take one. When fewer than k nodes
// have room, the rest are placed by repairNode. A node that gets its first
// replica of x lists x (see resetNodeLists); a repair marks the lists stale.
func (p *planner) spreadExtra(x, k int32, nodes, per int) error {
	q := p.nodeQ
	take := min(int(k), len(q))
	row := p.nodeCnt[int(x)*nodes : int(x+1)*nodes]
	sel := p.nodeSel[:0]
	for _, key := range q[:take] {
		n := int(key & p.nodeMask)
		if row[n] == 0 {
			p.listExpert(x, n, per)
		}
		row[n]++
		p.nodeFree[n]--
		p.nodeLoad[n] += p.w[x]
		if p.nodeFree[n] > 0 {
			sel = append(sel, p.nodeKey(n))
		}
	}
	insertionSortKeys(sel)
	p.nodeQ = mergeKeys(q[take:], sel)
	p.nodeSel = sel
	if take == int(k) {
		return nil
	}
	p.nodeStale = true
	for range int(k) - take {
		if err := p.repairNode(x, nodes); err != nil {
			return err
		}
	}
	// Repairs are rare: rebuild the queue rather than track their changes.
	p.buildNodeQueue(nodes, len(p.nodeBuf)-nodes)
	return nil
}
