package swiftmoe

// replicaCounts sets reps: one replica per expert, then every extra slot to
// the expert with the highest load per replica (EPLB's rule, which minimizes
// the largest load per replica). Ties go to the lower id. With zero total
// load the slots are spread uniformly.
//
// Handing out the extra slots one by one is the greedy pick of the largest
// values among {load_e/k : k >= 1}. Every value >= total/extra is among the
// picks (there are at most extra of them), so the counts start at
// 1 + floor(load_e*extra/total) and a heap hands out the few left (< E).
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
	for i := range e {
		p.reps[i] = 1
	}
	extra := ns - e
	if extra == 0 {
		return
	}
	step := total / float64(extra)
	sum := e
	for i := range e {
		k := int32(p.loadOf(i) / step)
		p.reps[i] += k
		sum += int(k)
	}
	if sum > ns { // rounding pushed the floor past the slot count
		for i := range e {
			p.reps[i] = 1
		}
		sum = e
	}
	left := ns - sum
	if left == 0 {
		return
	}
	h := p.eheap[:0]
	for i := range e {
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
