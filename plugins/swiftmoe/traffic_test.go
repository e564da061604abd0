package swiftmoe

import (
	"math"
	"testing"
)

// trafficVector is one case of testdata/vectors/traffic.json: a placement
// and the per-rank traffic the engine's split routes for it when every rank
// routes the same share of each expert and replicas split their expert's
// load evenly (scripts/gen_traffic_vectors.py).
type trafficVector struct {
	Name         string    `json:"name"`
	Ranks        int       `json:"ranks"`
	RanksPerNode int       `json:"ranks_per_node"`
	SlotsPerRank int       `json:"slots_per_rank"`
	Loads        []float64 `json:"loads"`
	Slots        []int     `json:"slots"`
	SI           []float64 `json:"si"`
	RI           []float64 `json:"ri"`
	SE           []float64 `json:"se"`
	RE           []float64 `json:"re"`
}

// TestStepModelRoutesAsTheEngine checks the step model's traffic, rank by
// rank and tier by tier, against the engine's split on the same placement
// (local tier, the node tier in proportion, the rest across nodes). The
// engine routes whole tokens and the model reals, so each rank may differ
// by a token per slot and per expert of its node.
func TestStepModelRoutesAsTheEngine(t *testing.T) {
	cases := readVectors[trafficVector](t, "traffic.json", 8)
	var crossed float64
	for _, v := range cases {
		t.Run(v.Name, func(t *testing.T) {
			var sm stepModel
			sm.reset(h200(12.5), v.Loads, len(v.Loads), v.Ranks, v.RanksPerNode, v.SlotsPerRank)
			sm.eval(v.Slots)
			tol := float64(v.SlotsPerRank + len(v.Loads))
			for _, f := range []struct {
				name      string
				got, want []float64
			}{{"si", sm.si, v.SI}, {"ri", sm.ri, v.RI}, {"se", sm.se, v.SE}, {"re", sm.re, v.RE}} {
				for r := range v.Ranks {
					if math.Abs(f.got[r]-f.want[r]) > tol {
						t.Errorf("rank %d: %s %.3f tokens, the engine's %.0f (tolerance %.0f)", r, f.name, f.got[r], f.want[r], tol)
					}
					if f.name == "se" {
						crossed += f.want[r]
					}
				}
			}
		})
	}
	if crossed == 0 {
		t.Fatal("no case sends tokens across nodes: the vectors test nothing of the node tier")
	}
}
