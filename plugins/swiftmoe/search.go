package swiftmoe

import (
	"errors"
	"math"
	"math/rand/v2"

	"github.com/swiftmoe/swiftmoe/plugins/sdk"
)

// Small layers are coarse: with few slots per expert, the replica counts
// that minimize the largest load per replica need not give the best-packed
// ranks (with two slots per rank, say, every rank wants one heavy replica
// and one light one, which may mean more replicas of a light expert). For
// them the planner also searches the counts.
const (
	// searchMaxSize bounds experts*slots of a layer that gets the search.
	searchMaxSize = 4096
	// searchBudget bounds evaluations*slots per layer.
	searchBudget = 1 << 12
	// searchSeed seeds the search's kicks; fixed, so plans are deterministic.
	searchSeed = 0x5eed
)

func (p *planner) searchable() bool {
	n := len(p.rk.dst)
	return p.nExperts > 1 && p.nExperts < n && p.nExperts*n <= searchMaxSize
}

// score ranks plans: a lighter busiest rank first, then a smaller sum of
// squared rank loads (a flatter plan), which lets the search cross plateaus.
type score struct{ hi, sq float64 }

func (a score) better(b score) bool {
	return a.hi < b.hi*(1-1e-12) || (a.hi <= b.hi && a.sq < b.sq*(1-1e-12))
}

// countSearch is an iterated local search over replica counts, repacking
// the planner's layer for each counts it tries.
type countSearch struct {
	bestDst   []int
	bestReps  []int32
	climbDst  []int
	climbReps []int32
	climbWt   weights // the weights of climbReps
	skipped   int     // counts not packed (errAbove), for tests
}

// run searches: a climb moves one replica from one expert to another,
// repacks, and keeps the first change that scores better, until none does.
// After the first climb (from the proportional counts), each round kicks
// the best counts with two random moves and climbs again. The kicks come
// from a fixed seed, so the result is deterministic. The best plan found
// replaces p's plan and counts.
func (cs *countSearch) run(p *planner, t sdk.Topology) {
	dst := p.rk.dst
	best := p.score(dst)
	if best.hi <= 0 {
		return
	}
	cs.bestDst = grow(cs.bestDst, len(dst))
	cs.bestReps = grow(cs.bestReps, p.nExperts)
	copy(cs.bestDst, dst)
	copy(cs.bestReps, p.reps)
	evals := searchBudget / len(dst)
	rng := rand.New(rand.NewPCG(searchSeed, uint64(len(dst))))
	start := best
	for first := true; evals > 0; first = false {
		if !first {
			copy(p.reps, cs.bestReps)
			if !kick(rng, p.reps) || !p.tryPack(t, &evals) {
				continue
			}
			start = p.score(dst)
		}
		got := cs.climb(p, t, start, &evals)
		if got.better(best) {
			best = got
			copy(cs.bestDst, dst)
			copy(cs.bestReps, p.reps)
		}
	}
	copy(p.reps, cs.bestReps)
	copy(dst, cs.bestDst)
	p.weigh()
}

// climb improves the counts in p.reps (packed into p's plan, scoring cur)
// by single-replica moves and returns the final score, with p's counts and
// plan holding that plan.
func (cs *countSearch) climb(p *planner, t sdk.Topology, cur score, evals *int) score {
	e, dst := p.nExperts, p.rk.dst
	cs.climbReps = grow(cs.climbReps, e)
	cs.climbDst = grow(cs.climbDst, len(dst))
	base := cs.climbReps
	copy(base, p.reps)
	copy(cs.climbDst, dst)
	n, slots := p.rk.n, len(dst)
	cs.climbWt.set(base, p.loads, n, slots)
	for improved := true; improved && *evals > 0; {
		improved = false
		for from := 0; from < e && !improved && *evals > 0; from++ {
			if base[from] <= 1 {
				continue
			}
			for to := 0; to < e && *evals > 0; to++ {
				if to == from {
					continue
				}
				copy(p.reps, base)
				p.reps[from]--
				p.reps[to]++
				// Counts that cannot pack below the plan to beat are
				// not packed (counted as tried all the same).
				hi := cur.hi
				if p.opts.searchWhole {
					hi = math.Inf(1)
				}
				// Their weights are base's with two experts moved.
				p.wt.setMoved(&cs.climbWt, p.reps, p.loads, n, slots, from, to)
				if !p.tryPackWeighed(t, evals, hi) {
					continue
				}
				if s := p.score(dst); s.better(cur) {
					cur = s
					copy(base, p.reps)
					copy(cs.climbDst, dst)
					cs.climbWt.set(base, p.loads, n, slots)
					improved = true
					break
				}
			}
		}
	}
	copy(p.reps, base)
	copy(dst, cs.climbDst)
	p.weigh()
	return cur
}

// kick moves two random replicas between random experts of reps.
func kick(rng *rand.Rand, reps []int32) bool {
	e := len(reps)
	moved := 0
	for range 8 {
		from, to := rng.IntN(e), rng.IntN(e)
		if from == to || reps[from] <= 1 {
			continue
		}
		reps[from]--
		reps[to]++
		if moved++; moved == 2 {
			break
		}
	}
	return moved > 0
}

// tryPack packs reps, counting one evaluation.
func (p *planner) tryPack(t sdk.Topology, evals *int) bool {
	return p.tryPackBelow(t, evals, math.Inf(1))
}

// tryPackBelow packs reps unless they cannot pack below hi (packBelow),
// counting one evaluation either way, and reports whether it packed.
func (p *planner) tryPackBelow(t sdk.Topology, evals *int, hi float64) bool {
	p.weigh()
	return p.tryPackWeighed(t, evals, hi)
}

// tryPackWeighed is tryPackBelow for counts already weighed (p.wt).
func (p *planner) tryPackWeighed(t sdk.Topology, evals *int, hi float64) bool {
	*evals--
	err := p.packWeighed(t, hi)
	if errors.Is(err, errAbove) {
		p.search.skipped++
	}
	return err == nil
}

// score scores a plan under the weights of the current counts.
func (p *planner) score(slots []int) score {
	s := p.rk.s
	var out score
	for r := range p.rk.n {
		var l float64
		for _, e := range slots[r*s : (r+1)*s] {
			l += p.wt.w[e]
		}
		out.hi = max(out.hi, l)
		out.sq += l * l
	}
	return out
}
