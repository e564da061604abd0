package planner

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	pb "github.com/swiftmoe/swiftmoe/bridge/gen/swiftmoe/v1"
	"github.com/swiftmoe/swiftmoe/plugins/sdk"
)

func slotsOf(layers ...[]int) []*pb.LayerSlots {
	out := make([]*pb.LayerSlots, len(layers))
	for i, l := range layers {
		out[i] = &pb.LayerSlots{Slots: sdk.IntsToProto(l)}
	}
	return out
}

// A job re-registered with the placement in force starts from it: the
// initial plan is that placement and the next remap counts changes from it.
func TestRegisterWithCurrentSlots(t *testing.T) {
	s := New(&fakeStrategies{}, nil, nil)
	req := goodRegister() // 4 ranks x 2 slots; layers of 6 and 8 experts
	cur := [][]int{{0, 1, 2, 3, 4, 5, 0, 1}, {7, 6, 5, 4, 3, 2, 1, 0}}
	req.CurrentSlots = slotsOf(cur...)
	resp, err := s.RegisterJob(ctxT(t), req)
	if err != nil {
		t.Fatal(err)
	}
	for l, lp := range resp.GetInitialPlan().GetLayers() {
		if got := sdk.IntsFromProto(lp.GetSlots()); fmt.Sprint(got) != fmt.Sprint(cur[l]) {
			t.Errorf("layer %d: got %v, want the placement in force %v", l, got, cur[l])
		}
	}
	if got := resp.GetInitialPlan().GetRemap().GetChangedSlots(); got != 0 {
		t.Errorf("changed slots of the initial plan: got %d, want 0", got)
	}
}

func TestRegisterRejectsBadCurrentSlots(t *testing.T) {
	tests := []struct {
		name string
		cur  []*pb.LayerSlots
		want string
	}{
		{"wrong layer count", slotsOf([]int{0, 1, 2, 3, 4, 5, 0, 1}), "current_slots: 1 entries"},
		{"expert missing", slotsOf([]int{0, 1, 2, 3, 4, 0, 0, 1}, []int{7, 6, 5, 4, 3, 2, 1, 0}), "current_slots[0]"},
		{"id out of range", slotsOf([]int{0, 1, 2, 3, 4, 5, 0, 1}, []int{7, 6, 5, 4, 3, 2, 1, 9}), "current_slots[1]"},
		{"too short", slotsOf([]int{0, 1, 2, 3, 4, 5}, []int{7, 6, 5, 4, 3, 2, 1, 0}), "current_slots[0]"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := New(&fakeStrategies{}, nil, nil)
			req := goodRegister()
			req.CurrentSlots = tc.cur
			_, err := s.RegisterJob(ctxT(t), req)
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("got %v, want a ValidationError", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %q, want it to mention %q", err, tc.want)
			}
		})
	}
}
