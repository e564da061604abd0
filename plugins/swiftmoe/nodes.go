package swiftmoe

import (
	"math/bits"
	"slices"
)

// packNodes is the node-aware packing of node_policy=pack, used when
// ranks_per_node splits the job into equal nodes of r ranks: experts (all
// their replicas as one chunk) are first packed onto nodes, most replicas
// first, each onto the least-loaded node with room for the whole chunk; a
// chunk that fits in no node is split over the nodes with the most room.
// Each node's replicas are then packed onto its ranks as in the flat case,
// and refined there. A node may hold at most r*capR[e] replicas of e, so
// that its ranks can hold them within the per-rank limit.
func (p *planner) packNodes(r int) error {
	nodes := p.nRanks / r
	e := p.nExperts
	p.resetNodes(r, nodes)
	for x := range e {
		p.nodeLo[x] = 0
		p.nodeHi[x] = int32(r) * p.capR[x]
	}
	p.nodeOrder = grow(p.nodeOrder, e)
	for i := range e {
		p.nodeOrder[i] = int32(i)
	}
	slices.SortFunc(p.nodeOrder, func(a, b int32) int {
		la, lb := p.loadOf(int(a)), p.loadOf(int(b))
		switch {
		case p.reps[a] != p.reps[b]:
			return int(p.reps[b] - p.reps[a])
		case la > lb:
			return -1
		case la < lb:
			return 1
		default:
			return int(a - b)
		}
	})

	for _, x := range p.nodeOrder {
		if err := p.placeChunk(x, nodes); err != nil {
			return err
		}
	}
	p.listNodes(nodes, r*p.nSlots)
	return p.packNodeRanks(r, nodes)
}

// resetNodes empties the nodes before a node-aware packing: no replicas,
// no load, r*S free slots each.
func (p *planner) resetNodes(r, nodes int) {
	e := p.nExperts
	p.nodeCnt = grow(p.nodeCnt, e*nodes)
	clear(p.nodeCnt)
	p.nodeLo = grow(p.nodeLo, e)
	p.nodeHi = grow(p.nodeHi, e)
	p.nodeLoad = grow(p.nodeLoad, nodes)
	p.nodeFree = grow(p.nodeFree, nodes)
	p.nodeMask = uint64(1)<<bits.Len(uint(nodes-1)) - 1
	for n := range nodes {
		p.nodeLoad[n] = 0
		p.nodeFree[n] = int32(r * p.nSlots)
	}
}

// packNodeRanks packs each node's replicas (nodeCnt, listed in nodeList)
// onto its ranks and refines them there.
//
// The busiest rank of the plan is at least the heaviest replica and at
// least the mean rank load of the busiest node, and at least the busiest
// rank of every node refined so far. Refining a node below that bound
// cannot lower the plan's busiest rank, so each node's refinement stops
// there (a node that cannot reach it refines exactly as it would alone, so
// the plan's busiest rank is never higher than with full refinement). The
// nodes go busiest first, which raises the bound soonest.
func (p *planner) packNodeRanks(r, nodes int) error {
	per := r * p.nSlots
	seq := grow(p.nodeSeq, nodes)[:0]
	for n := range nodes {
		seq = append(seq, p.nodeKey(n))
	}
	slices.Sort(seq)
	p.nodeSeq = seq
	floor := p.w[p.order[0]]
	floor = max(floor, p.nodeLoad[seq[len(seq)-1]&p.nodeMask]/float64(r))
	for i := len(seq) - 1; i >= 0; i-- {
		n := int(seq[i] & p.nodeMask)
		lo, hi := n*r, (n+1)*r
		list := p.nodeList[n*per : n*per+int(p.nodeLen[n])]
		if p.opts.nodes != nodesSpread || !p.packDifferencing(list, n, nodes, lo, hi) {
			p.buildFree(lo, hi)
			for _, x := range list {
				if err := p.placeExpert(x, p.nodeCnt[int(x)*nodes+n], lo, hi); err != nil {
					return err
				}
			}
		}
		floor = max(floor, p.refine(lo, hi, floor))
	}
	return nil
}

// resetNodeLists empties the per-node expert lists: node n's experts, in
// packing order, at nodeList[n*per : n*per+nodeLen[n]] (per = the node's
// slots, so a node's list never overflows its segment).
func (p *planner) resetNodeLists(nodes, per int) {
	p.nodeList = grow(p.nodeList, nodes*per)
	p.nodeLen = grow(p.nodeLen, nodes)
	clear(p.nodeLen)
}

// listExpert appends expert x to node n's list.
func (p *planner) listExpert(x int32, n, per int) {
	p.nodeList[n*per+int(p.nodeLen[n])] = x
	p.nodeLen[n]++
}

// listNodes fills the per-node lists from nodeCnt.
func (p *planner) listNodes(nodes, per int) {
	p.resetNodeLists(nodes, per)
	for _, x := range p.order {
		for n, c := range p.nodeCnt[int(x)*nodes : int(x+1)*nodes] {
			if c > 0 {
				p.listExpert(x, n, per)
			}
		}
	}
}

// placeChunk puts all reps[x] replicas of x onto nodes.
func (p *planner) placeChunk(x int32, nodes int) error {
	limit := p.nodeHi[x]
	row := p.nodeCnt[int(x)*nodes : int(x+1)*nodes]
	k := p.reps[x]
	for k > 0 {
		// The least-loaded node that takes the whole chunk.
		best := -1
		for n := range nodes {
			if min(p.nodeFree[n], limit-row[n]) < k {
				continue
			}
			if best < 0 || p.nodeLoad[n] < p.nodeLoad[best] {
				best = n
			}
		}
		take := k
		if best < 0 {
			// Split: the node with the most room takes what it can.
			var most int32
			for n := range nodes {
				room := min(p.nodeFree[n], limit-row[n])
				if room > most || (room == most && room > 0 && p.nodeLoad[n] < p.nodeLoad[best]) {
					best, most = n, room
				}
			}
			take = most
		}
		if best < 0 {
			if err := p.repairNode(x, nodes); err != nil {
				return err
			}
			k--
			continue
		}
		row[best] += take
		p.nodeFree[best] -= take
		p.nodeLoad[best] += float64(take) * p.w[x]
		k -= take
	}
	return nil
}

// repairNode places one replica of x when every node with room already
// holds its limit of x: a full node that may take x hands one replica of
// another expert to a node with room, keeping every count within nodeLo and
// nodeHi (the same counting argument as repairRank guarantees one exists).
func (p *planner) repairNode(x int32, nodes int) error {
	q := -1
	for n := range nodes {
		if p.nodeFree[n] > 0 && (q < 0 || p.nodeLoad[n] < p.nodeLoad[q]) {
			q = n
		}
	}
	if q < 0 {
		return errNoRepair
	}
	limitX := p.nodeHi[x]
	bestN, bestF := -1, int32(-1)
	var bestM float64
	for n := range nodes {
		if p.nodeFree[n] > 0 || p.nodeCnt[int(x)*nodes+n] >= limitX {
			continue
		}
		for f := range int32(p.nExperts) {
			if f == x || p.nodeCnt[int(f)*nodes+n] <= p.nodeLo[f] || p.nodeCnt[int(f)*nodes+q] >= p.nodeHi[f] {
				continue
			}
			m := max(p.nodeLoad[q]+p.w[f], p.nodeLoad[n]-p.w[f]+p.w[x])
			if bestN < 0 || m < bestM {
				bestN, bestF, bestM = n, f, m
			}
		}
	}
	if bestN < 0 {
		return errNoRepair
	}
	p.nodeCnt[int(bestF)*nodes+bestN]--
	p.nodeCnt[int(bestF)*nodes+q]++
	p.nodeCnt[int(x)*nodes+bestN]++
	p.nodeLoad[bestN] += p.w[x] - p.w[bestF]
	p.nodeLoad[q] += p.w[bestF]
	p.nodeFree[q]--
	return nil
}
