package swiftmoe

import (
	"errors"
	"math"
	"math/bits"
	"slices"

	"github.com/swiftmoe/swiftmoe/plugins/sdk"
)

// errNoRepair means packing found no legal swap to finish a placement. The
// counting argument in repairRank rules it out for valid counts; it is an
// error rather than a panic so that a bug costs one plan, not the plugin.
var errNoRepair = errors.New("no legal swap completes the placement")

// planner holds one layer's working state. A planner is reused across layers
// and calls (through a sync.Pool), so its slices grow once and planning a
// layer allocates nothing.
type planner struct {
	// The layer being planned.
	nRanks, nSlots, nExperts int
	opts                     options
	loads                    []float64 // per expert; nil means all zero
	cur                      []int     // placement in force; nil when none
	dst                      []int     // the plan being built

	// Per expert.
	reps     []int32   // replica count
	curReps  []int32   // replica count in cur
	curW     []float64 // load per replica in cur
	w        []float64 // load per replica
	capR     []int32   // most replicas one rank may hold: ceil(reps/nRanks)
	order    []int32   // experts by w descending (rank packing order)
	byWeight []uint64  // sort keys for order
	sortTmp  []uint64  // sortKeys scratch
	sortCnt  []int32
	eheap    []int32 // max-heap of experts while handing out replicas

	// Per rank.
	load     []float64
	fill     []int32  // slots used
	fbuf     []uint64 // the free queue's buffer (see rankqueue.go)
	free     []uint64 // keys of the ranks with a free slot, ascending
	sel      []uint64 // keys of the ranks an expert just filled
	rankMask uint64   // the rank field of a rank key
	stampE   []int32  // expert whose replica count on the rank stampC holds
	stampC   []int32
	sorted   []uint64 // rank keys sorted by load (see refine.go)

	// Node-aware packing (see nodes.go and spread.go).
	nodeOrder []int32
	nodeCnt   []int32 // [expert*nodes + node]
	nodeLo    []int32 // per expert: fewest replicas a node may hold
	nodeHi    []int32 // per expert: most replicas a node may hold
	nodeLoad  []float64
	nodeFree  []int32
	nodeBuf   []uint64 // the node queue's buffer (see spread.go)
	nodeQ     []uint64 // keys of the nodes with a free slot, ascending
	nodeSel   []uint64
	nodeMask  uint64   // the node field of a node key
	nodeSeq   []uint64 // node keys, the order nodes are packed in
	nodeList  []int32  // per node: its experts (see resetNodeLists)
	nodeLen   []int32
	nodeStale bool // a repair changed counts the lists were built from

	// Balanced differencing scratch (see differencing.go).
	dItems []int32
	dSum   []float64
	dNext  []int32
	dTail  []int32
	dPart  []int32
	dLive  []int32
	dMulti []int32 // experts the node holds more of than one rank may
	need   []int32

	// Replica-count search scratch (see search.go).
	bestDst   []int
	bestReps  []int32
	climbDst  []int
	climbReps []int32

	// The spread plan while the replicated one is tried (see replicate.go).
	spreadDst  []int
	spreadReps []int32

	// Slot ordering scratch.
	tmp  []int
	used []bool
}

// grow returns s resized to n, reusing its array when it is large enough.
func grow[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n)
	}
	return s[:n]
}

// planLayer writes one layer's plan into dst (len WorldSize*SlotsPerRank).
// loads is empty or one value >= 0 per expert; cur is empty or a placement
// with ids in range. Inputs are validated by the caller.
func (p *planner) planLayer(dst []int, loads []float64, cur []int, numExperts int, t sdk.Topology, o options) error {
	p.nRanks, p.nSlots, p.nExperts = t.WorldSize, t.SlotsPerRank, numExperts
	p.opts = o
	p.loads, p.cur, p.dst = loads, nil, dst
	if len(cur) == len(dst) {
		p.cur = cur
	}
	p.reset()
	p.setRankBits()
	p.indexCurrent()
	p.replicaCounts()
	if err := p.pack(t); err != nil {
		return err
	}
	if p.searchable() {
		p.searchCounts(t)
	}
	if r := p.replicable(t); r > 0 {
		if err := p.tryReplicated(t, r); err != nil {
			return err
		}
	}
	p.orderSlots()
	p.keepCurrentIfAsGood(t)
	return nil
}

func (p *planner) reset() {
	e, n := p.nExperts, p.nRanks
	p.reps = grow(p.reps, e)
	p.curReps = grow(p.curReps, e)
	p.w = grow(p.w, e)
	p.curW = grow(p.curW, e)
	p.capR = grow(p.capR, e)
	p.order = grow(p.order, e)
	p.byWeight = grow(p.byWeight, e)
	p.sortTmp = grow(p.sortTmp, max(e, n))
	p.sortCnt = grow(p.sortCnt, max(e, n)*sortBuckets+1)
	p.eheap = grow(p.eheap, e)[:0]
	p.need = grow(p.need, e)

	p.load = grow(p.load, n)
	p.fill = grow(p.fill, n)
	p.stampE = grow(p.stampE, n)
	p.stampC = grow(p.stampC, n)
	p.sorted = grow(p.sorted, n)[:0]
	p.sel = grow(p.sel, n)[:0]
	p.bestDst = grow(p.bestDst, len(p.dst))
	p.bestReps = grow(p.bestReps, e)
	p.tmp = grow(p.tmp, p.nSlots)
	p.used = grow(p.used, p.nSlots)
}

// resetRanks empties every rank before a packing.
func (p *planner) resetRanks() {
	for r := range p.nRanks {
		p.load[r] = 0
		p.fill[r] = 0
		p.stampE[r] = -1
		p.stampC[r] = 0
	}
}

// load of expert e, with no prediction meaning zero.
func (p *planner) loadOf(e int) float64 {
	if len(p.loads) == 0 {
		return 0
	}
	return p.loads[e]
}

// indexCurrent counts the replicas of each expert in cur.
func (p *planner) indexCurrent() {
	clear(p.curReps)
	for _, e := range p.cur {
		p.curReps[e]++
	}
}

// sortByWeight sets w, capR and order: experts by load per replica
// descending, then more replicas first, then lower id.
//
// The sort runs on one integer key per expert, which sorts several times
// faster than a comparison function: from the top, the complemented IEEE
// bits of w (heavier first; w >= 0), then the complemented replica count
// (more first), then the id. The low bits of w give way to the other two
// fields, so weights within a relative 2^(fields-52) of each other count as
// equal; a layout too large for that to stay below 2^-28 sorts with a
// comparison function instead.
func (p *planner) sortByWeight() {
	nr := int32(p.nRanks)
	for e := range p.nExperts {
		r := p.reps[e]
		p.w[e] = p.loadOf(e) / float64(r)
		p.capR[e] = (r + nr - 1) / nr
	}
	idBits := bits.Len(uint(p.nExperts - 1))
	repsBits := bits.Len(uint(len(p.dst)))
	if idBits+repsBits > 24 {
		p.sortByWeightFunc()
		return
	}
	keys := p.byWeight[:0]
	top := uint64(len(p.dst))
	for e := range p.nExperts {
		k := ^math.Float64bits(p.w[e]) >> (idBits + repsBits)
		k = k<<repsBits | (top - uint64(p.reps[e]))
		keys = append(keys, k<<idBits|uint64(e))
	}
	sortKeys(keys, p.sortTmp, p.sortCnt)
	idMask := uint64(1)<<idBits - 1
	for i, k := range keys {
		p.order[i] = int32(k & idMask)
	}
	p.byWeight = keys
}

// sortByWeightFunc sorts order as sortByWeight does, with a comparison
// function, for layouts too large for its keys.
func (p *planner) sortByWeightFunc() {
	for e := range p.nExperts {
		p.order[e] = int32(e)
	}
	slices.SortFunc(p.order, func(a, b int32) int {
		switch {
		case p.w[a] > p.w[b]:
			return -1
		case p.w[a] < p.w[b]:
			return 1
		case p.reps[a] != p.reps[b]:
			return int(p.reps[b] - p.reps[a])
		default:
			return int(a - b)
		}
	})
}
