package swiftmoe

// replicaCounts sets reps: one replica per expert, then every extra slot to
// the expert with the highest load per replica (EPLB's rule, which minimizes
// the largest load per replica). Ties go to the lower id. With zero total
// load the slots are spread uniformly.
//
// Handing out the extra slots one by one is the greedy pick of the largest
// values among {load_e/k : k >= 1}. For a rate u, expert e has
// f_e(u) = floor(load_e*u) values >= 1/u, f(u) in all. When f(u) <= extra,
// every one of them is among the picks; when f(u) >= extra, every pick is
// one of them. So a few secant steps on u bracket the count: the counts
// start at 1 + f_e(lo) for the best lower rate found, and a heap hands the
// few slots left to the experts that have values between the two rates.
// u = extra/total and u = (extra+E)/total bracket it to begin with, since
// the floors lose less than one value per expert.
func (p *planner) replicaCounts() {
	e, ns := p.nExperts, p.nRanks*p.nSlots
	var total float64
	for i := range e {
		total += p.loadOf(i)
	}
	if total <= 0 {
		p.uniformCounts()
		return
	}
	extra := ns - e
	lo, hi := float64(extra)/total, float64(extra+e)/total
	fLo, fHi := p.floorSum(lo), p.floorSum(hi)
	for range countSteps {
		if fLo >= extra || fHi <= fLo {
			break
		}
		u := lo + (hi-lo)*float64(extra-fLo)/float64(fHi-fLo)
		if u <= lo || u >= hi {
			break
		}
		if f := p.floorSum(u); f <= extra {
			lo, fLo = u, f
		} else {
			hi, fHi = u, f
		}
	}
	if fLo > extra { // rounding: no lower rate
		lo, fLo = 0, 0
	}
	for i := range e {
		p.reps[i] = 1 + int32(p.loadOf(i)*lo)
	}
	p.handOut(extra-fLo, lo, hi, fHi >= extra)
}

// countSteps bounds replicaCounts' secant steps.
const countSteps = 4

// floorSum is f(u), the sum of floor(load*u).
func (p *planner) floorSum(u float64) int {
	sum := 0
	for i := range p.nExperts {
		sum += int(p.loadOf(i) * u)
	}
	return sum
}

// handOut gives left more replicas, one at a time, to the expert with the
// highest load per replica. When bracketed, only experts with a value
// between rates lo and hi can take one, and only they enter the heap.
func (p *planner) handOut(left int, lo, hi float64, bracketed bool) {
	if left <= 0 {
		return
	}
	h := p.eheap[:0]
	for i := range p.nExperts {
		l := p.loadOf(i)
		if !bracketed || int(l*hi) > int(l*lo) {
			h = append(h, int32(i))
		}
	}
	if len(h) == 0 {
		for i := range p.nExperts {
			h = append(h, int32(i))
		}
	}
	for i := len(h)/2 - 1; i >= 0; i-- {
		p.edown(h, i)
	}
	for ; left > 0; left-- {
		top := h[0]
		p.reps[top]++
		p.edown(h, 0)
	}
	p.eheap = h
}

// uniformCounts spreads the slots evenly: ns/E each, and one more for
// ns mod E experts: the current plan's choice when it is already uniform,
// else the lowest ids (as the static layout does).
func (p *planner) uniformCounts() {
	e, ns := int32(p.nExperts), int32(p.nRanks*p.nSlots)
	base, rem := ns/e, ns%e
	if p.cur != nil {
		var ok, more int32 = 1, 0
		for i := range e {
			switch p.curReps[i] {
			case base:
			case base + 1:
				more++
			default:
				ok = 0
			}
		}
		if ok == 1 && more == rem {
			copy(p.reps, p.curReps)
			return
		}
	}
	for i := range e {
		p.reps[i] = base
		if i < rem {
			p.reps[i]++
		}
	}
}

// ebetter orders the expert heap: higher load per replica first.
func (p *planner) ebetter(a, b int32) bool {
	la, lb := p.loadOf(int(a))*float64(p.reps[b]), p.loadOf(int(b))*float64(p.reps[a])
	if la != lb {
		return la > lb
	}
	return a < b
}

func (p *planner) edown(h []int32, i int) {
	n := len(h)
	for {
		l := 2*i + 1
		if l >= n {
			return
		}
		c := l
		if r := l + 1; r < n && p.ebetter(h[r], h[l]) {
			c = r
		}
		if !p.ebetter(h[c], h[i]) {
			return
		}
		h[i], h[c] = h[c], h[i]
		i = c
	}
}
