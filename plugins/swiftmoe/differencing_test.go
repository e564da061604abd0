package swiftmoe

import (
	"math/rand/v2"
	"slices"
	"testing"
)

// diffNode is one node of r ranks and s slots whose experts have the given
// replica counts on it (and in all: one node) and loads per replica w,
// experts heaviest first, with the phases that pack its ranks.
type diffNode struct {
	rk     ranks
	wt     weights
	diff   differencer
	flat   rankPacker
	counts []int32
}

func newDiffNode(r, s int, counts []int32, w []float64) *diffNode {
	e := len(counts)
	f := &diffNode{counts: slices.Clone(counts)}
	f.rk.reset(make([]int, r*s), r, s)
	f.wt.w, f.wt.capR = slices.Clone(w), make([]int32, e)
	for x := range e {
		f.wt.capR[x] = (counts[x] + int32(r) - 1) / int32(r)
		f.wt.order = append(f.wt.order, int32(x))
	}
	slices.SortStableFunc(f.wt.order, func(a, b int32) int {
		switch {
		case w[a] > w[b]:
			return -1
		case w[a] < w[b]:
			return 1
		}
		return 0
	})
	return f
}

// randomDiffNode is a full node of r ranks and s slots with random replica
// counts (1 to most each) and loads per replica (1 to 101), and the counts.
func randomDiffNode(rng *rand.Rand, r, s, most int) (*diffNode, []int32) {
	total := r * s
	var counts []int32
	for n := 0; n < total; {
		k := min(total-n, 1+rng.IntN(most))
		counts = append(counts, int32(k))
		n += k
	}
	w := make([]float64, len(counts))
	for x := range w {
		w[x] = 1 + rng.Float64()*100
	}
	return newDiffNode(r, s, counts, w), counts
}

// demand is the whole node's demand: every expert, in packing order.
func (f *diffNode) demand() nodeDemand {
	return nodeDemand{node: 0, nodes: 1, lo: 0, hi: f.rk.n, experts: f.wt.order, cnt: f.counts}
}

// checkNode checks a packing of the node: every rank full, each expert's
// replicas all placed, no rank above an expert's limit, loads as summed.
func checkNode(t *testing.T, f *diffNode, counts []int32) {
	t.Helper()
	s := f.rk.s
	got := make([]int32, len(counts))
	for q := range f.rk.n {
		if f.rk.fill[q] != int32(s) {
			t.Fatalf("rank %d fill: got %d, want %d", q, f.rk.fill[q], s)
		}
		var l float64
		for _, x := range f.rk.dst[q*s : (q+1)*s] {
			got[x]++
			l += f.wt.w[x]
			if c := f.rk.placed(int32(q), int32(x)); c > f.wt.capR[x] {
				t.Fatalf("rank %d holds %d replicas of expert %d: want at most %d", q, c, x, f.wt.capR[x])
			}
		}
		if diff := l - f.rk.load[q]; diff > 1e-9*l || diff < -1e-9*l {
			t.Fatalf("rank %d load: got %v, want %v", q, f.rk.load[q], l)
		}
	}
	if !slices.Equal(got, counts) {
		t.Fatalf("replica counts: got %v, want %v", got, counts)
	}
}

func TestPackDifferencing(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 9))
	var wins, cases int
	for c := range 200 {
		r, s := 2+rng.IntN(10), 1+rng.IntN(6)
		p, counts := randomDiffNode(rng, r, s, 3)
		w := p.wt.w
		if !p.diff.pack(&p.rk, &p.wt, p.demand()) {
			t.Fatalf("case %d (r=%d s=%d counts %v): differencing declined a full node", c, r, s, counts)
		}
		checkNode(t, p, counts)
		diff := p.rk.maxLoad(0, r)

		// LPT on the same node, for comparison.
		q := newDiffNode(r, s, counts, w)
		q.rk.empty()
		if err := q.flat.pack(&q.rk, &q.wt, q.counts, 0, r); err != nil {
			t.Fatalf("case %d: flat packing: %v", c, err)
		}
		lpt := q.rk.maxLoad(0, r)
		if diff < lpt*(1-1e-12) {
			wins++
		}
		if diff <= lpt*(1+1e-12) {
			cases++
		}
	}
	t.Logf("as good %d better %d", cases, wins)
	// Differencing is a heuristic, not always better than LPT; it must be
	// at least as good on most nodes, or it is not worth its place.
	if cases < 150 || wins < 50 {
		t.Fatalf("differencing at least as good as LPT on %d of 200 nodes, better on %d: want >= 150 and >= 50", cases, wins)
	}
}

func TestPackDifferencingDeclines(t *testing.T) {
	// 3 replicas for 2 ranks x 2 slots: not a full node.
	p := newDiffNode(2, 2, []int32{2, 1}, []float64{3, 1})
	if p.diff.pack(&p.rk, &p.wt, p.demand()) {
		t.Fatalf("differencing packed 3 replicas into 4 slots: want declined")
	}
	for q := range 2 {
		if p.rk.load[q] != 0 || p.rk.fill[q] != 0 {
			t.Fatalf("rank %d after decline: load %v fill %d, want empty", q, p.rk.load[q], p.rk.fill[q])
		}
	}
}

func TestMendLimits(t *testing.T) {
	// Expert 0 has 2 replicas on 2 ranks (limit 1 each), both on rank 0.
	p := newDiffNode(2, 2, []int32{2, 1, 1}, []float64{5, 4, 1})
	copy(p.rk.dst, []int{0, 0, 1, 2})
	p.diff.multi = []int32{0}
	for q := range 2 {
		p.rk.fill[q] = 2
	}
	p.rk.load[0], p.rk.load[1] = 10, 5
	if !p.diff.mendLimits(&p.rk, &p.wt, 0, 2) {
		t.Fatalf("mendLimits found no swap for %v", p.rk.dst)
	}
	checkNode(t, p, []int32{2, 1, 1})
	// Either trade leaves loads 9 and 6.
	if got := p.rk.maxLoad(0, 2); got != 9 {
		t.Fatalf("busiest rank after mending: got %v, want 9 (dst %v)", got, p.rk.dst)
	}
}

// TestOverAgreesWithOverLimit: over, which checks the limits from each
// item's rank, finds a rank above an expert's limit exactly when
// overLimit's scan of the ranks' slots does, on random fillings of random
// nodes as differencing fills them (many with two replicas of an expert
// on one rank).
func TestOverAgreesWithOverLimit(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 11))
	var overs int
	for c := range 500 {
		r, s := 2+rng.IntN(8), 1+rng.IntN(5)
		total := r * s
		p, counts := randomDiffNode(rng, r, s, 2*r)
		if !p.diff.collect(p.demand(), p.wt.capR, total) {
			t.Fatalf("case %d: collect found %d slots not filled", c, total)
		}
		// As differencing fills a node: each rank takes one item of
		// each starting partial (r items in a row), here at random.
		p.diff.at = make([]int32, total)
		for t := range s {
			for i, q := range rng.Perm(r) {
				it := t*r + i
				p.rk.dst[q*s+t] = int(p.diff.items[it])
				p.diff.at[it] = int32(q)
			}
		}
		for q := range r {
			p.rk.fill[q] = int32(s)
		}
		got := p.diff.over(p.wt.capR, r)
		q, _ := p.diff.overLimit(&p.rk, &p.wt, 0, r)
		if got != (q >= 0) {
			t.Fatalf("case %d (r=%d s=%d counts %v, dst %v): over %v, overLimit's rank %d", c, r, s, counts, p.rk.dst, got, q)
		}
		if got {
			overs++
		}
	}
	if overs < 100 || overs > 400 {
		t.Fatalf("%d of 500 fillings over a limit: want both kinds often", overs)
	}
}
