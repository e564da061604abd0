package discover

import (
	"strings"
	"testing"
)

func TestSuggestSlots(t *testing.T) {
	const gib = 1 << 30
	withGPUs := func(free ...uint64) *Report {
		r := &Report{}
		for i, f := range free {
			r.GPUs = append(r.GPUs, GPU{Index: i, MemoryFreeBytes: f})
		}
		return r
	}
	cases := []struct {
		name        string
		r           *Report
		expertBytes uint64
		experts     int
		layers      int
		frac        float64
		want        int
		reason      string
	}{
		{"no gpu default", &Report{}, 1 << 20, 16, 4, 0.5, 4, "no GPU found"},
		{"no gpu fewer experts", &Report{}, 1 << 20, 2, 4, 0.5, 2, "no GPU found"},
		// 40 GiB * 0.5 = 20 GiB; one slot = 4 layers * 1 GiB = 4 GiB -> 5.
		{"fits five", withGPUs(40 * gib), gib, 16, 4, 0.5, 5, "fits 5 slots"},
		// The smallest GPU decides: 10 GiB * 0.5 / 4 GiB = 1.
		{"smallest gpu decides", withGPUs(40*gib, 10*gib), gib, 16, 4, 0.5, 1, "GPU 1"},
		{"capped at experts", withGPUs(80 * gib), 1 << 20, 8, 2, 0.9, 8, "capped at the 8 experts"},
		{"too little memory", withGPUs(gib), 2 * gib, 8, 2, 0.5, 1, "using 1 slot"},
		{"zero expert bytes", &Report{}, 0, 8, 2, 0.5, 0, "expertBytes is 0"},
		{"zero experts", &Report{}, 1, 0, 2, 0.5, 0, "numExperts is 0"},
		{"zero layers", &Report{}, 1, 8, 0, 0.5, 0, "layers is 0"},
		{"fraction above one", &Report{}, 1, 8, 2, 1.5, 0, "memFraction is 1.5"},
		{"fraction zero", &Report{}, 1, 8, 2, 0, 0, "memFraction is 0"},
		{"nil report", nil, 1, 8, 2, 0.5, 0, "no discovery report"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, reason := SuggestSlots(tc.r, tc.expertBytes, tc.experts, tc.layers, tc.frac)
			if got != tc.want || !strings.Contains(reason, tc.reason) {
				t.Errorf("got %d (%q), want %d with a reason containing %q", got, reason, tc.want, tc.reason)
			}
		})
	}
}
