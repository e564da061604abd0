package swiftmoe

import (
	"math"
	"testing"
)

type costVector struct {
	Name         string             `json:"name"`
	Ranks        int                `json:"ranks"`
	RanksPerNode int                `json:"ranks_per_node"`
	Params       map[string]float64 `json:"params"`
	Load         []float64          `json:"load"`
	SI           []float64          `json:"si"`
	RI           []float64          `json:"ri"`
	SE           []float64          `json:"se"`
	RE           []float64          `json:"re"`
	CopySrc      []int              `json:"copy_src"`
	CopyDst      []int              `json:"copy_dst"`
	ComputeMs    float64            `json:"compute_ms"`
	A2AMs        float64            `json:"a2a_ms"`
	CopyMs       float64            `json:"copy_ms"`
	StepMs       float64            `json:"step_ms"`
}

// copyCounts counts expert copies src -> dst per rank and tier, as the
// engine's copy_traffic does: a copy onto its own rank moves nothing.
func copyCounts(v *costVector) (csi, cri, cse, cre []float64) {
	n := v.Ranks
	csi, cri, cse, cre = make([]float64, n), make([]float64, n), make([]float64, n), make([]float64, n)
	node := func(r int) int {
		if v.RanksPerNode <= 0 || v.RanksPerNode >= n {
			return 0
		}
		return r / v.RanksPerNode
	}
	for i, s := range v.CopySrc {
		d := v.CopyDst[i]
		switch {
		case s == d:
		case node(s) == node(d):
			csi[s]++
			cri[d]++
		default:
			cse[s]++
			cre[d]++
		}
	}
	return csi, cri, cse, cre
}

// TestCostModelVectors checks the Go cost model against the cases the
// engine's Python implementation wrote (scripts/gen_cost_vectors.py).
func TestCostModelVectors(t *testing.T) {
	cases := readVectors[costVector](t, "costmodel.json", 10)
	for _, v := range cases {
		t.Run(v.Name, func(t *testing.T) {
			p := v.Params
			c := costModel{
				tokenBytes: p["token_bytes"], expertBytes: p["expert_bytes"],
				flopsPerToken: p["flops_per_token"], flopsPerS: p["flops_per_s"],
				intraBW: p["intra_bw"], interBW: p["inter_bw"],
			}
			csi, cri, cse, cre := copyCounts(&v)
			compute, a2a, cp := c.computeMs(v.Load), c.a2aMs(v.SI, v.RI, v.SE, v.RE), c.copyMs(csi, cri, cse, cre)
			for _, f := range []struct {
				name      string
				got, want float64
			}{
				{"compute_ms", compute, v.ComputeMs}, {"a2a_ms", a2a, v.A2AMs},
				{"copy_ms", cp, v.CopyMs}, {"step_ms", compute + a2a + cp, v.StepMs},
			} {
				if math.Abs(f.got-f.want) > 1e-12*max(1, math.Abs(f.want)) {
					t.Errorf("%s: got %.17g, want %.17g", f.name, f.got, f.want)
				}
			}
		})
	}
}
