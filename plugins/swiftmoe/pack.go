package swiftmoe

// rankPacker is flat packing: it places replicas onto a range of ranks by
// LPT, experts heaviest per replica first, each replica onto the
// least-loaded rank with a free slot that holds fewer than capR[e]
// replicas of it, so that one expert's replicas land on distinct ranks
// unless its count forces doubling. Ties go to the lower rank. It finds the
// least-loaded ranks through a queue of rank keys (rankqueue.go).
type rankPacker struct {
	buf  []uint64 // the free queue's buffer
	free []uint64 // keys of the ranks with a free slot, ascending
	sel  []uint64 // keys of the ranks an expert just filled
}

// pack places need[e] replicas of every expert onto the ranks [lo, hi) of
// rk, in the packing order of wt.
func (pk *rankPacker) pack(rk *ranks, wt *weights, need []int32, lo, hi int) error {
	pk.start(rk, lo, hi)
	for _, e := range wt.order {
		if k := need[e]; k > 0 {
			if err := pk.place(rk, wt, e, k, lo, hi); err != nil {
				return err
			}
		}
	}
	return nil
}

// place places k replicas of e onto the ranks [lo, hi), which start
// queued, in rounds: each round puts one replica on each of the
// least-loaded eligible ranks.
func (pk *rankPacker) place(rk *ranks, wt *weights, e, k int32, lo, hi int) error {
	limit := wt.capR[e]
	for k > 0 {
		placed := pk.takeFree(rk, e, k, limit, wt.w[e])
		k -= placed
		if placed == 0 {
			if err := pk.repairRank(rk, wt, e, lo, hi); err != nil {
				return err
			}
			k--
		}
	}
	return nil
}

// repairRank places one replica of e when every rank with a free slot
// already holds capR[e] of it: a full rank p that may take e gives one of
// its replicas f to a free rank q that may take f, and takes e in its place.
//
// Such a swap always exists while e has replicas left (need <= ranks*capR):
// some full rank p holds fewer than capR[e]; if q held capR[f] of every f
// on p, q would hold at least S - count(p,e) + capR[e] > S replicas.
func (pk *rankPacker) repairRank(rk *ranks, wt *weights, e int32, lo, hi int) error {
	if len(pk.free) == 0 {
		return errNoRepair
	}
	q := rk.rank(pk.free[0])
	s := rk.s
	bestP, bestJ := -1, -1
	var bestM float64
	for r := lo; r < hi; r++ {
		rr := int32(r)
		if rk.fill[r] < int32(s) || rk.count(rr, e) >= wt.capR[e] {
			continue
		}
		for j := range s {
			f := int32(rk.dst[r*s+j])
			if f == e || rk.placed(q, f) >= wt.capR[f] {
				continue
			}
			m := max(rk.load[q]+wt.w[f], rk.load[r]-wt.w[f]+wt.w[e])
			if bestP < 0 || m < bestM {
				bestP, bestJ, bestM = r, j, m
			}
		}
	}
	if bestP < 0 {
		return errNoRepair
	}
	f := int32(rk.dst[bestP*s+bestJ])
	pp := int32(bestP)
	rk.dst[bestP*s+bestJ], rk.sw[bestP*s+bestJ] = int(e), wt.w[e]
	rk.load[pp] += wt.w[e] - wt.w[f]
	rk.bump(pp, e)
	rk.dst[int(q)*s+int(rk.fill[q])], rk.sw[int(q)*s+int(rk.fill[q])] = int(f), wt.w[f]
	rk.fill[q]++
	rk.load[q] += wt.w[f]
	pk.refixFront(rk)
	return nil
}
