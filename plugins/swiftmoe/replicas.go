package swiftmoe

// counter is the counts phase: it hands out a layer's slots as replica
// counts, one replica per expert, then every extra slot to the expert with
// the highest load per replica (EPLB's rule, which minimizes the largest
// load per replica). Ties go to the lower id. With zero total load the
// slots are spread uniformly.
type counter struct {
	heap []int32 // max-heap of experts while handing out replicas

	// The count in progress.
	loads []float64 // per expert; empty means all zero
	reps  []int32
}

// count sets reps (one entry per expert, summing to slots) from loads.
// curReps holds the current plan's counts, nil when there is no current
// plan; only a uniform count (zero total load) reads it.
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
func (c *counter) count(reps []int32, loads []float64, slots int, curReps []int32) {
	c.loads, c.reps = loads, reps
	e, ns := len(reps), slots
	var total float64
	for i := range e {
		total += loadOf(loads, i)
	}
	if total <= 0 {
		c.uniform(ns, curReps)
		return
	}
	extra := ns - e
	lo, hi := float64(extra)/total, float64(extra+e)/total
	fLo, fHi := c.floorSum(lo), c.floorSum(hi)
	for range countSteps {
		if fLo >= extra || fHi <= fLo {
			break
		}
		u := lo + (hi-lo)*float64(extra-fLo)/float64(fHi-fLo)
		if u <= lo || u >= hi {
			break
		}
		if f := c.floorSum(u); f <= extra {
			lo, fLo = u, f
		} else {
			hi, fHi = u, f
		}
	}
	if fLo > extra { // rounding: no lower rate
		lo, fLo = 0, 0
	}
	for i := range e {
		reps[i] = 1 + int32(loadOf(loads, i)*lo)
	}
	c.handOut(extra-fLo, lo, hi, fHi >= extra)
}

// countSteps bounds count's secant steps.
const countSteps = 4

// floorSum is f(u), the sum of floor(load*u). Only count calls it, with a
// positive total load, so there is one load per expert.
func (c *counter) floorSum(u float64) int {
	sum := 0
	for _, l := range c.loads[:len(c.reps)] {
		sum += int(l * u)
	}
	return sum
}

// handOut gives left more replicas, one at a time, to the expert with the
// highest load per replica. When bracketed, only experts with a value
// between rates lo and hi can take one, and only they enter the heap.
func (c *counter) handOut(left int, lo, hi float64, bracketed bool) {
	if left <= 0 {
		return
	}
	h := grow(c.heap, len(c.reps))[:0]
	for i := range c.reps {
		l := loadOf(c.loads, i)
		if !bracketed || int(l*hi) > int(l*lo) {
			h = append(h, int32(i))
		}
	}
	if len(h) == 0 {
		for i := range c.reps {
			h = append(h, int32(i))
		}
	}
	for i := len(h)/2 - 1; i >= 0; i-- {
		c.down(h, i)
	}
	for ; left > 0; left-- {
		top := h[0]
		c.reps[top]++
		c.down(h, 0)
	}
	c.heap = h
}

// uniform spreads the ns slots evenly: ns/E each, and one more for
// ns mod E experts: the current plan's choice (curReps) when it is already
// uniform, else the lowest ids (as the static layout does).
func (c *counter) uniform(ns int, curReps []int32) {
	e, n := int32(len(c.reps)), int32(ns)
	base, rem := n/e, n%e
	if curReps != nil {
		var ok, more int32 = 1, 0
		for i := range e {
			switch curReps[i] {
			case base:
			case base + 1:
				more++
			default:
				ok = 0
			}
		}
		if ok == 1 && more == rem {
			copy(c.reps, curReps)
			return
		}
	}
	for i := range e {
		c.reps[i] = base
		if i < rem {
			c.reps[i]++
		}
	}
}

// better orders the expert heap: higher load per replica first.
func (c *counter) better(a, b int32) bool {
	la, lb := loadOf(c.loads, int(a))*float64(c.reps[b]), loadOf(c.loads, int(b))*float64(c.reps[a])
	if la != lb {
		return la > lb
	}
	return a < b
}

func (c *counter) down(h []int32, i int) {
	n := len(h)
	for {
		l := 2*i + 1
		if l >= n {
			return
		}
		m := l
		if r := l + 1; r < n && c.better(h[r], h[l]) {
			m = r
		}
		if !c.better(h[m], h[i]) {
			return
		}
		h[i], h[m] = h[m], h[i]
		i = m
	}
}
