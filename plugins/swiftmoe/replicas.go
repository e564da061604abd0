package swiftmoe

// replicaCounts sets reps: one replica per expert, then every extra slot to
// the expert with the highest load per replica (EPLB's rule, which minimizes
// the largest load per replica). Ties go to the lower id. With zero total
// load the slots are spread uniformly.
//
// Handing out the extra slots one by one is the greedy pick of the largest
// values among {load_e/k : k >= 1}. For a threshold t, expert e has
// floor(load_e/t) values >= t; when those number at most extra in all,
// every one of them is among the picks. So the counts start at
// 1 + floor(load_e/t) for the lowest such t found, and a heap hands out
// the few left. t = total/extra always qualifies but leaves about E/2
// slots for the heap (the floors drop half a slot each on average);
// shrinking t by those halves usually leaves only a handful.
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
	sum := e
	if extra > 0 {
		sum += p.floorCounts(total, extra)
	} else {
		for i := range e {
			p.reps[i] = 1
		}
	}
	p.handOut(ns - sum)
}

// floorCounts sets reps to 1 + floor(load/t), with t the lower of the two
// thresholds above whose floors sum to at most extra, and returns that sum.
func (p *planner) floorCounts(total float64, extra int) int {
	t := total / (float64(extra) + float64(p.nExperts)/2)
	if !p.floorsFit(t, extra) {
		t = total / float64(extra)
	}
	sum := 0
	inv := 1 / t
	for i := range p.nExperts {
		k := int32(p.loadOf(i) * inv)
		p.reps[i] = 1 + k
		sum += int(k)
	}
	if sum > extra { // rounding pushed the floors past the slots
		for i := range p.nExperts {
			p.reps[i] = 1
		}
		sum = 0
	}
	return sum
}

// floorsFit reports whether the floors of load/t sum to at most extra.
// (Both passes multiply by 1/t: the same rounding in both, and the sum is
// checked, so the counts never overshoot.)
func (p *planner) floorsFit(t float64, extra int) bool {
	sum, inv := 0, 1/t
	for i := range p.nExperts {
		if sum += int(p.loadOf(i) * inv); sum > extra {
			return false
		}
	}
	return true
}

// handOut gives left more replicas, one at a time, to the expert with the
// highest load per replica.
func (p *planner) handOut(left int) {
	if left <= 0 {
		return
	}
	h := p.eheap[:0]
	for i := range p.nExperts {
		h = append(h, int32(i))
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
