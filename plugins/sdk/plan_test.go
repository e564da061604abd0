package sdk

import (
	"errors"
	"strings"
	"testing"
)

func TestValidateSlots(t *testing.T) {
	t4x2 := Topology{WorldSize: 4, SlotsPerRank: 2}
	cases := []struct {
		name    string
		slots   []int
		experts int
		topo    Topology
		wantSub string // "" means valid
	}{
		{"static", []int{0, 1, 2, 3, 0, 1, 2, 3}, 4, t4x2, ""},
		{"one per slot", []int{0, 1, 2, 3, 4, 5, 6, 7}, 8, t4x2, ""},
		{"forced doubling", []int{0, 0, 1, 0}, 2, Topology{WorldSize: 2, SlotsPerRank: 2}, ""},
		{"single rank repeats", []int{0, 1, 0, 1}, 2, Topology{WorldSize: 1, SlotsPerRank: 4}, ""},
		{"bad topology", []int{0}, 1, Topology{WorldSize: 0, SlotsPerRank: 1}, "world_size >= 1"},
		{"no experts", []int{0}, 0, Topology{WorldSize: 1, SlotsPerRank: 1}, "num_experts must be >= 1"},
		{"short", []int{0, 1}, 2, t4x2, "2 slots, want"},
		{"too few slots", []int{0, 1}, 3, Topology{WorldSize: 1, SlotsPerRank: 2}, "cannot hold 3 experts"},
		{"negative id", []int{0, 1, 2, 3, 0, 1, 2, -1}, 4, t4x2, "holds expert -1"},
		{"id too large", []int{0, 1, 2, 3, 0, 1, 2, 4}, 4, t4x2, "holds expert 4"},
		{"missing expert", []int{0, 1, 2, 0, 1, 2, 0, 1}, 4, t4x2, "expert 3 has no slot"},
		{"unforced doubling", []int{0, 0, 1, 2, 3, 1, 2, 3}, 4, t4x2, "rank 0 holds 2 replicas of expert 0"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := ValidateSlots(tc.slots, tc.experts, tc.topo)
			if tc.wantSub == "" {
				if err != nil {
					t.Errorf("got %v, want valid", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidPlan) || !strings.Contains(err.Error(), tc.wantSub) {
				t.Errorf("got %v, want ErrInvalidPlan containing %q", err, tc.wantSub)
			}
		})
	}
}

// checkInvariants verifies a plan independently of ValidateSlots.
func checkInvariants(slots []int, e int, topo Topology) string {
	if topo.WorldSize < 1 || topo.SlotsPerRank < 1 || e < 1 || len(slots) != topo.WorldSize*topo.SlotsPerRank {
		return "shape"
	}
	reps := make([]int, e)
	for _, x := range slots {
		if x < 0 || x >= e {
			return "range"
		}
		reps[x]++
	}
	for _, r := range reps {
		if r == 0 {
			return "coverage"
		}
	}
	for r := range topo.WorldSize {
		for _, x := range slots[r*topo.SlotsPerRank : (r+1)*topo.SlotsPerRank] {
			n := 0
			for _, y := range slots[r*topo.SlotsPerRank : (r+1)*topo.SlotsPerRank] {
				if y == x {
					n++
				}
			}
			if n > (reps[x]+topo.WorldSize-1)/topo.WorldSize {
				return "doubling"
			}
		}
	}
	return ""
}

func FuzzValidateSlots(f *testing.F) {
	f.Add([]byte{0, 1, 2, 3, 0, 1, 2, 3}, uint8(4), uint8(2), uint8(4))
	f.Add([]byte{0, 0, 1, 0}, uint8(2), uint8(2), uint8(2))
	f.Add([]byte{}, uint8(0), uint8(0), uint8(0))
	f.Fuzz(func(t *testing.T, raw []byte, n, s, e uint8) {
		topo := Topology{WorldSize: int(n % 9), SlotsPerRank: int(s % 9)}
		slots := make([]int, len(raw))
		for i, b := range raw {
			slots[i] = int(int8(b)) % 12
		}
		err := ValidateSlots(slots, int(e%12), topo)
		problem := checkInvariants(slots, int(e%12), topo)
		if err == nil && problem != "" {
			t.Fatalf("accepted %v (E=%d %+v) that breaks %s", slots, e%12, topo, problem)
		}
		if err != nil && problem == "" {
			t.Fatalf("rejected a plan that holds every invariant: %v (E=%d %+v): %v", slots, e%12, topo, err)
		}
		if err == nil {
			loads := make([]float64, e%12)
			for i := range loads {
				loads[i] = float64(i + 1)
			}
			var sum, want float64
			for _, x := range RankLoads(slots, loads, topo) {
				sum += x
			}
			for _, x := range loads {
				want += x
			}
			if d := sum - want; d > 1e-9*want || d < -1e-9*want {
				t.Fatalf("rank loads sum to %v, want the total load %v", sum, want)
			}
		}
	})
}

func TestMaxOverMean(t *testing.T) {
	for _, tc := range []struct {
		v    []float64
		want float64
	}{{nil, 1}, {[]float64{0, 0}, 1}, {[]float64{1, 1}, 1}, {[]float64{3, 1}, 1.5}} {
		if got := MaxOverMean(tc.v); got != tc.want {
			t.Errorf("MaxOverMean(%v) = %v, want %v", tc.v, got, tc.want)
		}
	}
}

// BenchmarkValidateSlots checks the plan of the largest target job's 64
// layers (256 experts on 256 ranks x 4 slots), as the sidecar does with
// every plugin answer.
//
//	go test ./plugins/sdk -run '^$' -bench ValidateSlots
func BenchmarkValidateSlots(b *testing.B) {
	t := Topology{WorldSize: 256, SlotsPerRank: 4, RanksPerNode: 8}
	slots := StaticSlots(256, t)
	for b.Loop() {
		for range 64 {
			if err := ValidateSlots(slots, 256, t); err != nil {
				b.Fatal(err)
			}
		}
	}
}
