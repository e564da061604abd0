package swiftmoe

import (
	"testing"
)

// refineCase is one node's ranks as differencing leaves them, with the
// layer's weights and the level the nodes packed before it set.
type refineCase struct {
	wt     *weights
	lo, hi int
	floor  float64
	dst    []int
	sw     []float64
	load   []float64
}

// refineCases packs the layers of the planner benchmark with nodes of 8
// (spread, differencing) as packNodeRanks does, and records each node's
// ranks just before their refinement.
func refineCases(tb testing.TB) (cases []refineCase, n, s int) {
	req := benchRequest(8)
	t := req.Topology
	for _, l := range req.Layers {
		p := new(planner)
		dst := make([]int, t.TotalSlots())
		p.nExperts, p.opts, p.loads = l.NumExperts, options{}, l.Predicted
		p.rk.reset(dst, t.WorldSize, t.SlotsPerRank)
		p.reps = grow(p.reps, l.NumExperts)
		p.count()
		p.weigh()
		p.rk.empty()
		r := hierarchical(t)
		if err := p.nodes.spread(p.reps, &p.wt, r, p.rk.n/r, p.rk.s); err != nil {
			tb.Fatal(err)
		}
		lay := &p.nodes.lay
		seq := lay.byLoad()
		floor := p.wt.w[p.wt.order[0]]
		floor = max(floor, lay.load[lay.node(seq[len(seq)-1])]/float64(lay.r))
		s = p.rk.s
		for i := len(seq) - 1; i >= 0; i-- {
			d := lay.demand(lay.node(seq[i]))
			if !p.diff.pack(&p.rk, &p.wt, d) {
				tb.Fatal("differencing declined a node of the benchmark")
			}
			c := refineCase{wt: &p.wt, lo: d.lo, hi: d.hi, floor: floor}
			c.dst = append(c.dst, p.rk.dst[d.lo*s:d.hi*s]...)
			c.sw = append(c.sw, p.rk.sw[d.lo*s:d.hi*s]...)
			c.load = append(c.load, p.rk.load[d.lo:d.hi]...)
			cases = append(cases, c)
			floor = max(floor, p.refine.refine(&p.rk, &p.wt, d.lo, d.hi, floor))
		}
	}
	return cases, t.WorldSize, t.SlotsPerRank
}

// BenchmarkRefineNodes8 refines the 2,048 nodes of one plan of the planner
// benchmark with nodes of 8 from the ranks differencing leaves them (and
// the level the nodes before set), each from a fresh copy: the refinement's
// share of BenchmarkSwiftMoEPlanSequentialNodes8, alone.
func BenchmarkRefineNodes8(b *testing.B) {
	cases, n, s := refineCases(b)
	var rk ranks
	rk.reset(make([]int, n*s), n, s)
	var rf refiner
	cpu0 := cpuTime()
	for b.Loop() {
		for i := range cases {
			c := &cases[i]
			copy(rk.dst[c.lo*s:c.hi*s], c.dst)
			copy(rk.sw[c.lo*s:c.hi*s], c.sw)
			copy(rk.load[c.lo:c.hi], c.load)
			rf.refine(&rk, c.wt, c.lo, c.hi, c.floor)
		}
	}
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
}
