package swiftmoe

import (
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

// pack packs the current counts: weights, then node-aware (by the node
// policy) or flat packing with local refinement.
func (p *planner) pack(t sdk.Topology) error {
	p.sortByWeight()
	p.resetRanks()
	if r := hierarchical(t); r > 0 {
		if p.opts.nodes == nodesPack {
			return p.packNodes(r)
		}
		return p.packSpread(r)
	}
	copy(p.need, p.reps)
	if err := p.packRanks(0, p.nRanks); err != nil {
		return err
	}
	p.refine(0, p.nRanks, 0)
	return nil
}

func (p *planner) searchable() bool {
	return p.nExperts > 1 && p.nExperts < len(p.dst) && p.nExperts*len(p.dst) <= searchMaxSize
}

// score ranks plans: a lighter busiest rank first, then a smaller sum of
// squared rank loads (a flatter plan), which lets the search cross plateaus.
type score struct{ hi, sq float64 }

func (a score) better(b score) bool {
	return a.hi < b.hi*(1-1e-12) || (a.hi <= b.hi && a.sq < b.sq*(1-1e-12))
}

// searchCounts is an iterated local search over replica counts. A climb
// moves one replica from one expert to another, repacks, and keeps the
// first change that scores better, until none does. After the first climb
// (from the proportional counts), each round kicks the best counts with two
// random moves and climbs again. The kicks come from a fixed seed, so the
// result is deterministic. The best plan found replaces dst.
func (p *planner) searchCounts(t sdk.Topology) {
	best := p.score(p.dst)
	if best.hi <= 0 {
		return
	}
	copy(p.bestDst, p.dst)
	copy(p.bestReps, p.reps)
	evals := searchBudget / len(p.dst)
	rng := rand.New(rand.NewPCG(searchSeed, uint64(len(p.dst))))
	start := best
	for first := true; evals > 0; first = false {
		if !first {
			copy(p.reps, p.bestReps)
			if !p.kick(rng) || !p.tryPack(t, &evals) {
				continue
			}
			start = p.score(p.dst)
		}
		got := p.climb(t, start, &evals)
		if got.better(best) {
			best = got
			copy(p.bestDst, p.dst)
			copy(p.bestReps, p.reps)
		}
	}
	copy(p.reps, p.bestReps)
	copy(p.dst, p.bestDst)
	p.sortByWeight()
}

// climb improves the counts in reps (packed into dst, scoring cur) by
// single-replica moves and returns the final score, with reps and dst
// holding that plan.
func (p *planner) climb(t sdk.Topology, cur score, evals *int) score {
	e := p.nExperts
	base := p.curScratch()
	copy(base, p.reps)
	copy(p.climbDst, p.dst)
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
				if !p.tryPack(t, evals) {
					continue
				}
				if s := p.score(p.dst); s.better(cur) {
					cur = s
					copy(base, p.reps)
					copy(p.climbDst, p.dst)
					improved = true
					break
				}
			}
		}
	}
	copy(p.reps, base)
	copy(p.dst, p.climbDst)
	p.sortByWeight()
	return cur
}

func (p *planner) curScratch() []int32 {
	p.climbReps = grow(p.climbReps, p.nExperts)
	p.climbDst = grow(p.climbDst, len(p.dst))
	return p.climbReps
}

// kick moves two random replicas between random experts.
func (p *planner) kick(rng *rand.Rand) bool {
	e := p.nExperts
	moved := 0
	for range 8 {
		from, to := rng.IntN(e), rng.IntN(e)
		if from == to || p.reps[from] <= 1 {
			continue
		}
		p.reps[from]--
		p.reps[to]++
		if moved++; moved == 2 {
			break
		}
	}
	return moved > 0
}

// tryPack packs reps, counting one evaluation.
func (p *planner) tryPack(t sdk.Topology, evals *int) bool {
	*evals--
	return p.pack(t) == nil
}

// score scores a plan under the weights of the current counts.
func (p *planner) score(slots []int) score {
	s := p.nSlots
	var out score
	for r := range p.nRanks {
		var l float64
		for _, e := range slots[r*s : (r+1)*s] {
			l += p.w[e]
		}
		out.hi = max(out.hi, l)
		out.sq += l * l
	}
	return out
}
