package swiftmoe

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/swiftmoe/swiftmoe/plugins/sdk"
)

// TestPlanDigestsQuality weighs the plans another build made for some of
// the plan digests' requests (the "case plans" lines of TestPlanDigests in
// $PLAN_DIGESTS_REF_PLANS) against this build's, by this build's figures of
// quality, as the plan quality golden weighs its cases: a layer planned for
// step time by its estimated step time, any other by its max_over_mean
// (each expert's load split evenly over its replicas). It writes one line a
// request and a summary to $PLAN_DIGESTS_QUALITY_OUT; scripts/plans_vs.sh
// runs it on the requests whose plans differ. It is skipped unless both
// are set. (Not copied to the other build: it reads this package's step
// model.)
func TestPlanDigestsQuality(t *testing.T) {
	in, out := os.Getenv("PLAN_DIGESTS_REF_PLANS"), os.Getenv("PLAN_DIGESTS_QUALITY_OUT")
	if in == "" || out == "" {
		t.Skip("PLAN_DIGESTS_REF_PLANS and PLAN_DIGESTS_QUALITY_OUT not set (scripts/plans_vs.sh sets them)")
	}
	b, err := os.ReadFile(in)
	if err != nil {
		t.Fatal(err)
	}
	refPlans, err := parseDigestPlans(string(b))
	if err != nil {
		t.Fatalf("%s: %v", in, err)
	}
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	w := bufio.NewWriter(f)
	weighDigestPlans(t, w, refPlans)
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// digestWeighing is what weighDigestPlans found.
type digestWeighing struct {
	better, worse, beyond int
	worst                 float64 // the worst request's worst layer, new/ref
}

// weighDigestPlans plans the requests of refPlans with this build and
// writes, to w, how each request's plans weigh against refPlans' (new/ref
// of its worst layer, or of its best where none is worse) and a summary.
func weighDigestPlans(t *testing.T, w io.Writer, refPlans []digestRefPlans) digestWeighing {
	t.Helper()
	s := New()
	var dw digestWeighing
	var stepRef, stepNew float64
	dw.worst = 1
	worstCase := uint64(0)
	for _, rp := range refPlans {
		req := digestRequest(rp.c)
		resp, err := planRequest(s, req)
		if err != nil {
			t.Fatalf("request %d: %v", rp.c, err)
		}
		if len(rp.layers) != len(resp.Layers) {
			t.Fatalf("request %d: the other build planned %d layers, this one %d", rp.c, len(rp.layers), len(resp.Layers))
		}
		o, err := parseOptions(req.Options)
		if err != nil {
			t.Fatalf("request %d: %v", rp.c, err)
		}
		// The request's worst layer (new over ref), and its best.
		hi, lo := 1.0, 1.0
		for i := range req.Layers {
			l := &req.Layers[i]
			if err := sdk.ValidateSlots(rp.layers[i], l.NumExperts, req.Topology); err != nil {
				t.Fatalf("request %d layer %d: the other build's plan: %v", rp.c, i, err)
			}
			lc, step, err := layerCostOf(req, l, o)
			if err != nil {
				t.Fatalf("request %d layer %d: %v", rp.c, i, err)
			}
			quality := func(slots []int) float64 {
				if step {
					v, _, _ := estimate(lc.cm, slots, l.Predicted, req.Topology)
					return v
				}
				return balance(slots, l.Predicted, req.Topology)
			}
			ref, got := quality(rp.layers[i]), quality(resp.Layers[i])
			if step {
				stepRef += ref
				stepNew += got
			}
			r := 1.0
			switch {
			case ref > 0:
				r = got / ref
			case got > 0:
				r = math.Inf(1)
			}
			hi, lo = max(hi, r), min(lo, r)
		}
		ratio := hi
		switch {
		case hi > 1+qualityTolerance:
			dw.beyond++
			dw.worse++
		case hi > 1+1e-9:
			dw.worse++
		case lo < 1-1e-9:
			dw.better++
			ratio = lo
		}
		if hi > dw.worst {
			dw.worst, worstCase = hi, rp.c
		}
		fmt.Fprintf(w, "request %d: new/ref %.6f (its worst layer %.6f)\n", rp.c, ratio, hi)
	}
	fmt.Fprintf(w, "%d requests weighed: %d better, %d worse (%d beyond the golden's tolerance of %g)",
		len(refPlans), dw.better, dw.worse, dw.beyond, qualityTolerance)
	if dw.worst > 1 {
		fmt.Fprintf(w, ", the worst request %d at %.6f", worstCase, dw.worst)
	}
	if stepRef > 0 {
		fmt.Fprintf(w, "; step time summed over the layers planned for it %.6g ms, before %.6g", stepNew, stepRef)
	}
	fmt.Fprintln(w)
	return dw
}

type digestRefPlans struct {
	c      uint64
	layers [][]int
}

// parseDigestPlans reads the "case plans" lines of TestPlanDigests' output.
func parseDigestPlans(text string) ([]digestRefPlans, error) {
	var out []digestRefPlans
	for n, line := range strings.Split(text, "\n") {
		f := strings.SplitN(line, " ", 3)
		if len(f) < 3 || f[1] != "plans" {
			continue
		}
		c, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("line %d: want a case number first, got %q", n+1, f[0])
		}
		var layers [][]int
		if err := json.Unmarshal([]byte(f[2]), &layers); err != nil {
			return nil, fmt.Errorf("line %d: %v", n+1, err)
		}
		out = append(out, digestRefPlans{c, layers})
	}
	if len(out) == 0 {
		return nil, errors.New("no \"case plans\" lines (TestPlanDigests writes them with PLAN_DIGESTS_PLANS=1)")
	}
	return out, nil
}

// TestDigestPlansWeighed: the plans this build writes for the digests'
// requests weigh the same as its own (nothing better, nothing worse), one
// line a request and a summary; and where a first layer planned for
// compute is made worse (the busiest rank's lightest replica traded for a
// heavier one of another rank), this build's plans weigh better.
func TestDigestPlansWeighed(t *testing.T) {
	cases := make([]uint64, 80)
	for i := range cases {
		cases[i] = uint64(i)
	}
	var out strings.Builder
	if err := writeDigests(&out, cases, false, true); err != nil {
		t.Fatal(err)
	}
	refPlans, err := parseDigestPlans(out.String())
	if err != nil {
		t.Fatal(err)
	}
	if len(refPlans) != len(cases) {
		t.Fatalf("%d requests' plans written, want %d", len(refPlans), len(cases))
	}
	var report strings.Builder
	if dw := weighDigestPlans(t, &report, refPlans); dw.better != 0 || dw.worse != 0 || dw.worst != 1 {
		t.Fatalf("this build's own plans weighed %+v, want nothing better or worse:\n%s", dw, report.String())
	}
	if n := strings.Count(report.String(), "\n"); n != len(cases)+1 {
		t.Errorf("the weighing wrote %d lines, want one a request and a summary:\n%s", n, report.String())
	}
	var worse []digestRefPlans
	for _, rp := range refPlans {
		req := digestRequest(rp.c)
		l := &req.Layers[0]
		o, err := parseOptions(req.Options)
		if err != nil {
			t.Fatal(err)
		}
		if _, step, _ := layerCostOf(req, l, o); step {
			continue
		}
		if worsenPlan(rp.layers[0], l.Predicted, l.NumExperts, req.Topology) {
			worse = append(worse, rp)
		}
	}
	t.Logf("%d plans made worse", len(worse))
	if len(worse) < 5 {
		t.Fatalf("only %d plans made worse; want at least 5", len(worse))
	}
	report.Reset()
	if dw := weighDigestPlans(t, &report, worse); dw.better != len(worse) || dw.worse != 0 {
		t.Fatalf("against %d plans made worse this build's weighed %+v, want all better:\n%s", len(worse), dw, report.String())
	}
}

// worsenPlan trades the busiest rank's lightest replica for a heavier one of
// another rank where the plan stays valid, which raises the busiest rank,
// and reports whether it did.
func worsenPlan(slots []int, loads []float64, e int, topo sdk.Topology) bool {
	s := topo.SlotsPerRank
	rl := sdk.RankLoads(slots, loads, topo)
	a := 0
	for r, v := range rl {
		if v > rl[a] {
			a = r
		}
	}
	w := func(x int) float64 { return loads[x] / float64(sdk.Replicas(slots, e)[x]) }
	ia := a * s
	for j := a*s + 1; j < (a+1)*s; j++ {
		if w(slots[j]) < w(slots[ia]) {
			ia = j
		}
	}
	before := balance(slots, loads, topo)
	for ib := range slots {
		if ib/s == a || w(slots[ib]) <= w(slots[ia])*(1+1e-6) {
			continue
		}
		slots[ia], slots[ib] = slots[ib], slots[ia]
		if sdk.ValidateSlots(slots, e, topo) == nil && balance(slots, loads, topo) > before*(1+1e-6) {
			return true
		}
		slots[ia], slots[ib] = slots[ib], slots[ia]
	}
	return false
}
