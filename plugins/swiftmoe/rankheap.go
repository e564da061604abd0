package swiftmoe

// The rank heap holds the ranks that have a free slot, least loaded first,
// ties to the lower rank. Entries carry their key, so that sifting touches
// only the heap array; pos tracks each rank's index so that a rank can be
// removed or re-keyed in O(log n).

type hent struct {
	load float64
	rank int32
}

func hless(a, b hent) bool {
	return a.load < b.load || (a.load == b.load && a.rank < b.rank)
}

func (p *planner) hup(i int) {
	h := p.heap
	x := h[i]
	for i > 0 {
		parent := (i - 1) / 2
		if !hless(x, h[parent]) {
			break
		}
		h[i] = h[parent]
		p.pos[h[i].rank] = int32(i)
		i = parent
	}
	h[i] = x
	p.pos[x.rank] = int32(i)
}

func (p *planner) hdown(i int) {
	h := p.heap
	n := len(h)
	x := h[i]
	for {
		l := 2*i + 1
		if l >= n {
			break
		}
		c := l
		if r := l + 1; r < n && hless(h[r], h[l]) {
			c = r
		}
		if !hless(h[c], x) {
			break
		}
		h[i] = h[c]
		p.pos[h[i].rank] = int32(i)
		i = c
	}
	h[i] = x
	p.pos[x.rank] = int32(i)
}

func (p *planner) hpush(q int32) {
	p.heap = append(p.heap, hent{p.load[q], q})
	p.hup(len(p.heap) - 1)
}

// hremove takes rank q out of the heap.
func (p *planner) hremove(q int32) {
	i := int(p.pos[q])
	last := len(p.heap) - 1
	p.pos[q] = -1
	if i == last {
		p.heap = p.heap[:last]
		return
	}
	x := p.heap[last]
	p.heap[i] = x
	p.heap = p.heap[:last]
	p.hdown(i)
	p.hup(int(p.pos[x.rank]))
}

// hpop removes and returns the least-loaded rank.
func (p *planner) hpop() int32 {
	q := p.heap[0].rank
	p.hremove(q)
	return q
}

// hfix restores heap order after rank q's load changed, or drops q when its
// slots are full.
func (p *planner) hfix(q int32) {
	if p.pos[q] < 0 {
		return
	}
	if p.fill[q] >= int32(p.nSlots) {
		p.hremove(q)
		return
	}
	i := int(p.pos[q])
	p.heap[i].load = p.load[q]
	p.hdown(i)
	p.hup(int(p.pos[q]))
}

// hbuild makes a heap of the ranks in [lo, hi) that have a free slot.
func (p *planner) hbuild(lo, hi int) {
	p.heap = p.heap[:0]
	for q := lo; q < hi; q++ {
		p.pos[q] = -1
		if p.fill[q] < int32(p.nSlots) {
			p.heap = append(p.heap, hent{p.load[q], int32(q)})
		}
	}
	p.heapify()
}

// heapify re-keys every entry from load and restores heap order.
func (p *planner) heapify() {
	for i := range p.heap {
		q := p.heap[i].rank
		p.heap[i].load = p.load[q]
		p.pos[q] = int32(i)
	}
	for i := len(p.heap)/2 - 1; i >= 0; i-- {
		p.hdown(i)
	}
}
