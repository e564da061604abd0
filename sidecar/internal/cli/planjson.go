package cli

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	pb "github.com/swiftmoe/swiftmoe/bridge/gen/swiftmoe/v1"
)

// planJSON is the plan JSON of DESIGN.md ("Data formats").
type planJSON struct {
	Strategy     string      `json:"strategy"`
	WorldSize    uint32      `json:"world_size"`
	SlotsPerRank uint32      `json:"slots_per_rank"`
	Layers       []layerJSON `json:"layers"`
	MaxOverMean  float64     `json:"max_over_mean"`
}

type layerJSON struct {
	Slots       []uint32  `json:"slots"`
	Replicas    []uint32  `json:"replicas"`
	RankLoad    []float64 `json:"rank_load"`
	MaxOverMean float64   `json:"max_over_mean"`
}

func planToJSON(p *pb.Plan) planJSON {
	out := planJSON{Strategy: p.GetStrategy(), WorldSize: p.GetWorldSize(), SlotsPerRank: p.GetSlotsPerRank(),
		MaxOverMean: p.GetMaxOverMean(), Layers: make([]layerJSON, len(p.GetLayers()))}
	for l, lp := range p.GetLayers() {
		out.Layers[l] = layerJSON{Slots: lp.GetSlots(), Replicas: lp.GetReplicas(), RankLoad: lp.GetRankLoad(), MaxOverMean: lp.GetMaxOverMean()}
	}
	return out
}

// writePlanTable prints a plan for people: per layer, its balance and
// replica counts, then each rank's experts and load.
func writePlanTable(w io.Writer, p *pb.Plan, file string, rec traceRecord) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "strategy %s, world size %d, %d slots per rank, loads of iteration %d (%s line %d)\n",
		p.GetStrategy(), p.GetWorldSize(), p.GetSlotsPerRank(), rec.Iteration, file, rec.Line)
	fmt.Fprintf(tw, "max_over_mean %.4f (worst layer)\n", p.GetMaxOverMean())
	if n := p.GetNote(); n != "" {
		fmt.Fprintf(tw, "note: %s\n", n)
	}
	s := int(p.GetSlotsPerRank())
	for l, lp := range p.GetLayers() {
		fmt.Fprintf(tw, "\nlayer %d\tmax_over_mean %.4f\n", l, lp.GetMaxOverMean())
		reps := make([]string, len(lp.GetReplicas()))
		for e, r := range lp.GetReplicas() {
			reps[e] = fmt.Sprintf("%d:%d", e, r)
		}
		fmt.Fprintf(tw, "replicas (expert:count)\t%s\n", strings.Join(reps, " "))
		fmt.Fprintf(tw, "rank\texperts\tload\n")
		for r, load := range lp.GetRankLoad() {
			fmt.Fprintf(tw, "%d\t%s\t%.1f\n", r, joinIDs(lp.GetSlots()[r*s:(r+1)*s]), load)
		}
	}
	return tw.Flush()
}

func joinIDs(v []uint32) string {
	parts := make([]string, len(v))
	for i, x := range v {
		parts[i] = fmt.Sprint(x)
	}
	return strings.Join(parts, ",")
}
