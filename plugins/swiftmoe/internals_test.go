package swiftmoe

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/swiftmoe/swiftmoe/plugins/sdk"
)

// TestOrderSlotsKeepsCurrent checks orderSlots on random rows: the row is a
// permutation of the packed one, and as many slots keep their current
// expert as possible (for every expert, the smaller of its counts in the
// two rows).
//
// Expert ids are small, or spread so that many share a bit of keepSlots'
// mask of ids mod 64 (k*64: all; k*65: some), or large and distinct.
func TestOrderSlotsKeepsCurrent(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 5))
	ids := []func(int) int{
		func(k int) int { return k },
		func(k int) int { return k * 64 },
		func(k int) int { return k * 65 },
		func(k int) int { return 1000 + k*7 },
	}
	for trial := range 20000 {
		s, e := 1+rng.IntN(6), 1+rng.IntN(5)
		id := ids[trial%len(ids)]
		row, cur := make([]int, s), make([]int, s)
		for i := range s {
			row[i], cur[i] = id(rng.IntN(e)), id(rng.IntN(e))
		}
		got := slices.Clone(row)
		orderSlots(got, cur, 1, s)
		// Ranks of four slots take unrolled code: the same order as
		// the general loops give.
		if general := slices.Clone(row); s == 4 {
			if mayShare(general, cur) {
				keepSlots(general, cur)
			}
			if !slices.Equal(got, general) {
				t.Fatalf("trial %d: orderSlots(%v, current %v) = %v, the general loops %v", trial, row, cur, got, general)
			}
		}
		a, b := slices.Clone(got), slices.Clone(row)
		slices.Sort(a)
		slices.Sort(b)
		if !slices.Equal(a, b) {
			t.Fatalf("trial %d: orderSlots(%v, current %v) = %v, not a permutation", trial, row, cur, got)
		}
		want := 0
		for k := range e {
			want += min(countOf(row, id(k)), countOf(cur, id(k)))
		}
		kept := 0
		for i := range s {
			if got[i] == cur[i] {
				kept++
			}
		}
		if kept != want {
			t.Fatalf("trial %d: orderSlots(%v, current %v) = %v keeps %d slots, want %d", trial, row, cur, got, kept, want)
		}
		// Ordered once is ordered: planning for step time does not order
		// the compute-balanced plan again.
		again := slices.Clone(got)
		orderSlots(again, cur, 1, s)
		if !slices.Equal(again, got) {
			t.Fatalf("trial %d: orderSlots(%v, current %v) = %v, then %v", trial, row, cur, got, again)
		}
	}
}

func countOf(v []int, x int) int {
	n := 0
	for _, y := range v {
		if y == x {
			n++
		}
	}
	return n
}

// TestWeightsSortKeys checks that the integer-key sort orders experts as
// the comparison sort does (weights far enough apart that the keys' cut
// does not tie them, plus exact ties broken by replicas and id).
func TestWeightsSortKeys(t *testing.T) {
	rng := rand.New(rand.NewPCG(8, 1))
	for trial := range 200 {
		e := 1 + rng.IntN(300)
		n := 1 + rng.IntN(64)
		slots := n * ((e + n - 1) / n * (1 + rng.IntN(3)))
		loads := make([]float64, e)
		for i := range loads {
			loads[i] = float64(rng.IntN(50)) // many exact ties
		}
		reps := randomCounts(rng, e, slots)
		var wt weights
		wt.set(reps, loads, n, slots)
		got := slices.Clone(wt.order)
		wt.sortFunc(reps)
		if !slices.Equal(got, wt.order) {
			t.Fatalf("trial %d (E=%d): key sort %v, comparison sort %v", trial, e, got, wt.order)
		}
	}
}

// TestReplicaCountsGreedy checks the bracketed replica counts against
// handing out the extra slots one at a time to the highest load per
// replica (ties to the lower id).
func TestReplicaCountsGreedy(t *testing.T) {
	rng := rand.New(rand.NewPCG(77, 1))
	for trial := range 3000 {
		topo, loads := randomCase(rng)
		got := make([]int32, len(loads))
		var c counter
		c.count(got, loads, topo.TotalSlots(), nil)
		var total float64
		for _, l := range loads {
			total += l
		}
		if total <= 0 {
			continue
		}
		want := make([]int32, len(loads))
		for i := range want {
			want[i] = 1
		}
		for range topo.TotalSlots() - len(loads) {
			best := 0
			for i := range want {
				if loads[i]*float64(want[best]) > loads[best]*float64(want[i]) {
					best = i
				}
			}
			want[best]++
		}
		if !slices.Equal(got, want) {
			t.Fatalf("trial %d: N*S=%d loads %v: counts %v, greedy %v", trial, topo.TotalSlots(), loads, got, want)
		}
	}
}

// TestSortKeys checks sortKeys against slices.Sort on spread, bunched,
// clustered (several keys a bucket: the pass by the lower bits) and tiny
// inputs.
func TestSortKeys(t *testing.T) {
	rng := rand.New(rand.NewPCG(4, 4))
	for trial := range 2000 {
		n := rng.IntN(600)
		keys := make([]uint64, n)
		for i := range keys {
			switch trial % 4 {
			case 0:
				keys[i] = rng.Uint64()
			case 1: // bunched, with an outlier
				keys[i] = 1<<40 + rng.Uint64N(1000)
			case 2:
				keys[i] = rng.Uint64N(uint64(n) + 1)
			default: // clustered, as weights near the replication rate
				keys[i] = 1<<50 + rng.Uint64N(uint64(n+1)<<30)
				if rng.IntN(4) == 0 {
					keys[i] = rng.Uint64N(1 << 56)
				}
			}
		}
		if trial%4 == 1 && n > 0 {
			keys[0] = 1 << 62
		}
		want := slices.Clone(keys)
		slices.Sort(want)
		sortKeys(keys, make([]uint64, n), make([]int32, 2*(n*sortBuckets+1)))
		if !slices.Equal(keys, want) {
			t.Fatalf("trial %d (n=%d): sortKeys result not sorted like slices.Sort", trial, n)
		}
	}
}

// TestMergeKeys merges random sorted runs of distinct keys into random
// queues, in place, with blocks of the queue shorter and longer than
// mergeKeys moves key by key: the result is the sorted union.
func TestMergeKeys(t *testing.T) {
	rng := rand.New(rand.NewPCG(12, 64))
	for trial := range 5000 {
		nb, na := rng.IntN(40), rng.IntN(12)
		seen := map[uint64]bool{}
		draw := func(n int) []uint64 {
			var v []uint64
			for len(v) < n {
				k := uint64(rng.IntN(200))
				if !seen[k] {
					seen[k] = true
					v = append(v, k)
				}
			}
			slices.Sort(v)
			return v
		}
		b, a := draw(nb), draw(na)
		want := slices.Sorted(slices.Values(append(slices.Clone(b), a...)))
		buf := make([]uint64, nb+na)
		copy(buf, b)
		got := mergeKeys(buf[:nb], a)
		if !slices.Equal(got, want) {
			t.Fatalf("trial %d: mergeKeys(%v, %v) = %v, want %v", trial, b, a, got, want)
		}
	}
}

// TestRequeueTaken takes the first keys of random queues and brings some
// of them back grown, as node packing does, in a buffer with room for as
// many keys again after the queue: the result is the sorted union of the
// keys left and those brought back, within the buffer, and both of
// requeueTaken's ways (forward into the room taken keys left, backward into
// the room after the queue) are taken.
func TestRequeueTaken(t *testing.T) {
	rng := rand.New(rand.NewPCG(20, 26))
	ways := map[bool]int{}
	for trial := range 5000 {
		n := 1 + rng.IntN(40)
		take := 1 + rng.IntN(n)
		seen := map[uint64]bool{}
		var q []uint64
		for len(q) < n {
			if k := uint64(rng.IntN(300)); !seen[k] {
				seen[k] = true
				q = append(q, k)
			}
		}
		slices.Sort(q)
		// Some taken keys come back, each grown to a key not yet in use.
		var sel []uint64
		for _, k := range q[:take] {
			if rng.IntN(4) == 0 {
				continue
			}
			for k += uint64(1 + rng.IntN(200)); seen[k]; k++ {
			}
			seen[k] = true
			sel = append(sel, k)
		}
		slices.Sort(sel)
		want := slices.Sorted(slices.Values(append(slices.Clone(q[take:]), sel...)))
		buf := make([]uint64, n+len(sel))
		copy(buf, q)
		backward := len(sel) > 0 && sel[len(sel)-1] > q[n/2]
		ways[backward]++
		got := requeueTaken(buf[:n], take, sel)
		if !slices.Equal(got, want) {
			t.Fatalf("trial %d: requeueTaken(%v, %d, %v) = %v, want %v", trial, q, take, sel, got, want)
		}
	}
	if ways[false] < 100 || ways[true] < 100 {
		t.Fatalf("forward %d times, backward %d: want both ways tried", ways[false], ways[true])
	}
}

// TestRekeySwap moves load from the busiest rank to another, as the
// refinement's swaps do (the busiest falls, the other rises, both to below
// the busiest's old load, either of them now the busier): after rekeySwap
// the keys are those of every rank under its load, sorted.
func TestRekeySwap(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	overtook := 0
	for trial := range 2000 {
		n := 2 + rng.IntN(40)
		var rk ranks
		rk.reset(make([]int, n), n, 1)
		for q := range n {
			rk.load[q] = float64(rng.IntN(20))
		}
		keys := make([]uint64, n)
		for q := range n {
			keys[q] = rk.key(int32(q))
		}
		slices.Sort(keys)
		for range 20 {
			a := rk.rank(keys[n-1])
			bk := rng.IntN(n - 1)
			b := rk.rank(keys[bk])
			// A move of d from a to b that leaves b below a's old
			// load: in halves, so that often b ends the busier.
			gap := rk.load[a] - rk.load[b]
			if gap <= 0 {
				continue
			}
			d := float64(rng.IntN(int(math.Ceil(2*gap)))) / 2 // < gap
			if rng.IntN(5) == 0 {
				d = 0 // no move: the keys stay
			}
			if rk.load[b]+d > rk.load[a]-d {
				overtook++
			}
			rk.load[a] -= d
			rk.load[b] += d
			rekeySwap(keys, rk.key(a), rk.key(b), bk)
			want := make([]uint64, n)
			for r := range n {
				want[r] = rk.key(int32(r))
			}
			slices.Sort(want)
			if !slices.Equal(keys, want) {
				t.Fatalf("trial %d: ranks %d and %d to loads %g and %g: keys %v, want %v", trial, a, b, rk.load[a], rk.load[b], keys, want)
			}
		}
	}
	if overtook < 1000 {
		t.Fatalf("the other rank ended the busier in %d moves: the test no longer reaches that", overtook)
	}
}

// TestSlotWeightsFollowThePlan: after packing (flat or in nodes, by either
// node policy, refinement included), every slot's weight in the ranks'
// table is its replica's weight, and every rank's kept load is its slots'
// sum up to rounding: the packers, the repairs and the swaps all keep the
// table the refinement reads and the loads planLayer bounds the plan by.
func TestSlotWeightsFollowThePlan(t *testing.T) {
	rng := rand.New(rand.NewPCG(17, 4))
	for c := range 2000 {
		topo, n, s, e := randomLayout(rng)
		loads := make([]float64, e)
		for x := range loads {
			loads[x] = float64(1 + rng.IntN(20))
		}
		if c%2 == 0 {
			// One expert with most of the load: more replicas than
			// ranks, which the packers repair around.
			loads[rng.IntN(e)] += 500
		}
		o := options{}
		if rng.IntN(2) == 0 {
			o.nodes = nodesPack
		}
		p := new(planner)
		dst := make([]int, topo.TotalSlots())
		p.nExperts, p.opts, p.loads = e, o, loads
		p.rk.reset(dst, n, s)
		p.reps = grow(p.reps, e)
		p.count()
		if c%3 != 0 {
			// Counts as the count search tries them: replicas moved
			// between experts, which the packers repair around.
			kick(rng, p.reps)
		}
		if err := p.pack(topo); err != nil {
			t.Fatalf("case %d: %v", c, err)
		}
		for i, x := range dst {
			if p.rk.sw[i] != p.wt.w[x] {
				t.Fatalf("case %d (%+v, loads %v): slot %d holds expert %d of weight %v, the table says %v",
					c, topo, loads, i, x, p.wt.w[x], p.rk.sw[i])
			}
		}
		for q := range n {
			var sum float64
			for _, x := range dst[q*s : (q+1)*s] {
				sum += p.wt.w[x]
			}
			if math.Abs(p.rk.load[q]-sum) > 1e-12*sum {
				t.Fatalf("case %d (%+v, loads %v): rank %d keeps load %v, its slots sum to %v", c, topo, loads, q, p.rk.load[q], sum)
			}
		}
	}
}

// randomLayout is a small random layout: 1 to 4 nodes of 1 to 4 ranks (or
// no nodes), 1 to 5 slots a rank, and 1 expert to one per slot; its ranks,
// slots a rank and experts.
func randomLayout(rng *rand.Rand) (sdk.Topology, int, int, int) {
	rpn, nodes := rng.IntN(5), 1+rng.IntN(4)
	n := max(1, rpn) * nodes
	s := 1 + rng.IntN(5)
	e := 1 + rng.IntN(n*s)
	return sdk.Topology{WorldSize: n, SlotsPerRank: s, RanksPerNode: rpn}, n, s, e
}

// TestKeepCurrentBoundDecidesAlike: keepCurrentIfAsGood decides the same
// with the bound planLayer gives it (the kept loads' busiest rank) as
// without one, over current plans made for other loads, for the same ones
// (kept) and for loads changed slightly.
func TestKeepCurrentBoundDecidesAlike(t *testing.T) {
	rng := rand.New(rand.NewPCG(23, 5))
	kept := 0
	for c := range 1000 {
		topo, n, _, e := randomLayout(rng)
		loadsFor := func() []float64 {
			l := make([]float64, e)
			for x := range l {
				l[x] = float64(1 + rng.IntN(20))
			}
			return l
		}
		loads := loadsFor()
		cur := make([]int, topo.TotalSlots())
		var p planner
		prev := loadsFor()
		switch c % 3 {
		case 0:
			prev = loads
		case 1:
			copy(prev, loads)
			prev[rng.IntN(e)]++
		}
		if err := p.planLayer(cur, prev, nil, e, topo, options{}); err != nil {
			t.Fatal(err)
		}
		decide := func(bound bool) []int {
			var p planner
			dst := make([]int, len(cur))
			p.begin(dst, loads, cur, e, topo, options{})
			if err := p.pack(topo); err != nil {
				t.Fatal(err)
			}
			above := math.Inf(1)
			if bound {
				above = p.rk.maxLoad(0, n) * (1 + 1e-9)
			}
			p.keepCurrentIfAsGood(topo, above)
			return dst
		}
		a, b := decide(false), decide(true)
		if !slices.Equal(a, b) {
			t.Fatalf("case %d (%+v): without the bound %v, with it %v", c, topo, a, b)
		}
		if slices.Equal(a, cur) {
			kept++
		}
	}
	if kept < 100 {
		t.Fatalf("the current plan was kept %d times of 1000: the test no longer reaches the keeping", kept)
	}
}

// TestBestSwap4AgreesWithBestSwap: the unrolled scan for ranks of four
// slots finds the swap the general scan finds, over random rows with
// repeated weights and experts (so that ties and the limits decide), and
// bounds from none to most pairs.
func TestBestSwap4AgreesWithBestSwap(t *testing.T) {
	rng := rand.New(rand.NewPCG(29, 6))
	found, limited := 0, 0
	for trial := range 20000 {
		e := 2 + rng.IntN(6)
		w := make([]float64, e)
		capR := make([]int32, e)
		for x := range w {
			w[x] = float64(1 + rng.IntN(9))
			capR[x] = int32(1 + rng.IntN(2))
		}
		var rowA, rowB [4]int
		var wa, wb, va [4]float64
		var la, lb float64
		for i := range 4 {
			rowA[i], rowB[i] = rng.IntN(e), rng.IntN(e)
			wa[i], wb[i] = w[rowA[i]], w[rowB[i]]
			la += wa[i]
			lb += wb[i]
		}
		if lb > la {
			rowA, rowB, wa, wb, la, lb = rowB, rowA, wb, wa, lb, la
		}
		for i := range 4 {
			va[i] = la - wa[i]
		}
		bestM := la - la*1e-12
		if rng.IntN(3) == 0 {
			bestM = (la+lb)/2 + rng.Float64()*(la-lb)/2
		}
		i, j, m := bestSwap(wa[:], va[:], wb[:], rowA[:], rowB[:], capR, lb, bestM)
		i4, j4, m4 := bestSwap4(&wa, &wb, &rowA, &rowB, capR, la, lb, bestM)
		if i != i4 || j != j4 || m != m4 {
			t.Fatalf("trial %d: rows %v (%v) and %v (%v), limits %v, below %v: bestSwap (%d, %d, %v), bestSwap4 (%d, %d, %v)",
				trial, rowA, wa, rowB, wb, capR, bestM, i, j, m, i4, j4, m4)
		}
		if i >= 0 {
			found++
		}
		// A pair that passes the weights but not the limits.
		for a := range 4 {
			for b := range 4 {
				x, y := rowA[a], rowB[b]
				if wb[b] < wa[a] && lb-wb[b]+wa[a] < bestM && va[a]+wb[b] < bestM &&
					(holds(rowB[:], int32(x)) >= capR[x] || holds(rowA[:], int32(y)) >= capR[y]) {
					limited++
				}
			}
		}
	}
	if found < 5000 || limited < 1000 {
		t.Fatalf("%d trials found a swap and %d pairs were held by the limits: the trials no longer reach both", found, limited)
	}
}

// TestMaxLoad: the busiest load as float max from 0 finds it, over loads
// with negatives, zeros of both signs, infinities and ties.
func TestMaxLoad(t *testing.T) {
	rng := rand.New(rand.NewPCG(31, 7))
	pick := []float64{0, math.Copysign(0, -1), 1, -1, 1e-300, -1e-300, 3.5, math.Inf(1), math.Inf(-1), 1e300}
	for trial := range 5000 {
		n := rng.IntN(9)
		var rk ranks
		rk.reset(make([]int, n+1), n+1, 1)
		for q := range n {
			if rng.IntN(2) == 0 {
				rk.load[q] = pick[rng.IntN(len(pick))]
			} else {
				rk.load[q] = (rng.Float64() - 0.3) * 100
			}
		}
		lo := rng.IntN(n + 1)
		hi := lo + rng.IntN(n-lo+1)
		want := 0.0
		for _, l := range rk.load[lo:hi] {
			want = max(want, l)
		}
		if got := rk.maxLoad(lo, hi); got != want || math.Signbit(got) != math.Signbit(want) {
			t.Fatalf("trial %d: maxLoad of %v = %v, want %v", trial, rk.load[lo:hi], got, want)
		}
	}
}
