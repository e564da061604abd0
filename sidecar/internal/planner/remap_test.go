package planner

import (
	"slices"
	"testing"
)

// TestRemapTrafficSummariesOwnTheirCounts checks that a job's precomputed
// traffic matches a per-layer sum and that each summary gets its own copy.
func TestRemapTrafficSummariesOwnTheirCounts(t *testing.T) {
	numel := []uint64{10, 7}
	tr := newRemapTraffic(numel, 2, 3, 2)
	// Per layer, rank r owns ShardBounds(n, r, 3); it receives 2 slots x
	// (n - own) and sends own to the 4 slots on other ranks.
	wantSend, wantRecv := make([]uint64, 3), make([]uint64, 3)
	for _, n := range numel {
		for r := 0; r < 3; r++ {
			_, own := ShardBounds(n, r, 3)
			wantRecv[r] += 2 * (n - own) * 2
			wantSend[r] += 4 * own * 2
		}
	}
	next := [][]int{{0, 1, 0, 1, 0, 1}, {1, 0, 1, 0, 1, 0}}
	a := tr.summary(nil, next)
	b := tr.summary(next, [][]int{{0, 1, 0, 1, 1, 0}, {1, 0, 1, 0, 1, 0}})
	if !slices.Equal(a.GetSendBytes(), wantSend) || !slices.Equal(a.GetRecvBytes(), wantRecv) {
		t.Fatalf("got send %v recv %v, want %v %v", a.GetSendBytes(), a.GetRecvBytes(), wantSend, wantRecv)
	}
	if got, want := a.GetTotalBytes(), wantSend[0]+wantSend[1]+wantSend[2]; got != want {
		t.Errorf("got total %d, want %d", got, want)
	}
	if got := a.GetChangedSlots(); got != 12 {
		t.Errorf("got %d changed slots from no plan, want 12", got)
	}
	if got := b.GetChangedSlots(); got != 2 {
		t.Errorf("got %d changed slots, want 2", got)
	}
	a.SendBytes[0]++
	a.RecvBytes[2]++
	if !slices.Equal(b.GetSendBytes(), wantSend) || !slices.Equal(b.GetRecvBytes(), wantRecv) {
		t.Errorf("changing one summary changed another: got send %v recv %v, want %v %v", b.GetSendBytes(), b.GetRecvBytes(), wantSend, wantRecv)
	}
}
