package swiftmoe

// Plan digests: seeded random requests through the strategy's Plan, every
// option, cost model and input it takes, each answered by a digest of its
// plans. scripts/plans_vs.sh writes them from two builds (a commit and the
// working tree) and lists the requests whose plans differ: a change meant to
// leave plans as they were is held to that over many more requests than the
// plan quality golden's. This file is all that script copies into the other
// build, so it uses nothing of the package but New and the sdk.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/swiftmoe/swiftmoe/plugins/sdk"
)

// TestPlanDigests writes "case digest" lines (or "case ERR error") for
// $PLAN_DIGESTS cases from $PLAN_DIGESTS_FIRST (default 0), or for the
// cases listed in $PLAN_DIGESTS_CASES (comma-separated), to the file
// $PLAN_DIGESTS_OUT; it is skipped unless that is set. With
// PLAN_DIGESTS_SHOW=1 each line is followed by "case request" and the
// request as JSON; with PLAN_DIGESTS_PLANS=1 by "case plans" and the plans
// (TestPlanDigestsQuality reads those).
func TestPlanDigests(t *testing.T) {
	out := os.Getenv("PLAN_DIGESTS_OUT")
	if out == "" {
		t.Skip("PLAN_DIGESTS_OUT not set (scripts/plans_vs.sh sets it)")
	}
	cases, err := digestCases()
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	err = writeDigests(f, cases, os.Getenv("PLAN_DIGESTS_SHOW") == "1", os.Getenv("PLAN_DIGESTS_PLANS") == "1")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
}

// writeDigests plans the requests of cases and writes TestPlanDigests'
// lines for them to out: with show, each request; with plans, its plans.
func writeDigests(out io.Writer, cases []uint64, show, plans bool) error {
	w := bufio.NewWriter(out)
	s := New()
	for _, c := range cases {
		req := digestRequest(c)
		resp, err := planRequest(s, req)
		if err != nil {
			fmt.Fprintf(w, "%d ERR %v\n", c, err)
		} else {
			fmt.Fprintf(w, "%d %016x\n", c, digestPlans(resp.Layers))
		}
		if show {
			if err := writeJSONLine(w, c, "request", req); err != nil {
				return err
			}
		}
		if plans && err == nil {
			if err := writeJSONLine(w, c, "plans", resp.Layers); err != nil {
				return err
			}
		}
	}
	return w.Flush()
}

// writeJSONLine writes "case what" and v as JSON, on one line.
func writeJSONLine(w io.Writer, c uint64, what string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%d %s %s\n", c, what, b)
	return err
}

// digestCases are the cases TestPlanDigests plans: $PLAN_DIGESTS_CASES,
// else $PLAN_DIGESTS from $PLAN_DIGESTS_FIRST.
func digestCases() ([]uint64, error) {
	var out []uint64
	if list := os.Getenv("PLAN_DIGESTS_CASES"); list != "" {
		for _, f := range strings.Split(list, ",") {
			c, err := strconv.ParseUint(f, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("PLAN_DIGESTS_CASES: want case numbers separated by commas, got %q", f)
			}
			out = append(out, c)
		}
		return out, nil
	}
	n, err := strconv.Atoi(os.Getenv("PLAN_DIGESTS"))
	if err != nil || n < 1 {
		return nil, fmt.Errorf("PLAN_DIGESTS: want a positive number of cases, got %q", os.Getenv("PLAN_DIGESTS"))
	}
	first := 0
	if v := os.Getenv("PLAN_DIGESTS_FIRST"); v != "" {
		if first, err = strconv.Atoi(v); err != nil || first < 0 {
			return nil, fmt.Errorf("PLAN_DIGESTS_FIRST: want a case number >= 0, got %q", v)
		}
	}
	for c := first; c < first+n; c++ {
		out = append(out, uint64(c))
	}
	return out, nil
}

// planRequest plans req, within a timeout.
func planRequest(s sdk.Strategy, req *sdk.Request) (*sdk.Response, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return s.Plan(ctx, req)
}

// planDigest plans req and digests its plans.
func planDigest(s sdk.Strategy, req *sdk.Request) (uint64, error) {
	resp, err := planRequest(s, req)
	if err != nil {
		return 0, err
	}
	return digestPlans(resp.Layers), nil
}

// digestPlans digests plans, layer by layer.
func digestPlans(layers [][]int) uint64 {
	h := fnv.New64a()
	for _, l := range layers {
		for _, x := range l {
			fmt.Fprintf(h, "%d,", x)
		}
		h.Write([]byte{';'})
	}
	return h.Sum64()
}

func digestPick[T any](r *rand.Rand, v ...T) T { return v[r.IntN(len(v))] }

// digestRequest draws request c: one to three layers on one node or on up
// to 32 nodes of 1 to 8 ranks with 1 to 8 slots, up to 300 experts, loads
// of several shapes (ties and zeros among them), no plan in force, the
// static one or a random one, for compute or (most) for step time with
// bursts and a window of earlier loads, and some of the strategy's options.
func digestRequest(c uint64) *sdk.Request {
	r := rand.New(rand.NewPCG(c, 0x9e3779b97f4a7c15))
	s := digestPick(r, 1, 2, 3, 4, 4, 4, 4, 5, 6, 8)
	g := digestPick(r, 0, 0, 1, 2, 3, 4, 8, 8, 8)
	world := 1 + r.IntN(64)
	if g > 0 {
		world = g * digestPick(r, 1, 2, 2, 3, 4, 4, 5, 8, 16, 32)
	}
	topo := sdk.Topology{WorldSize: world, SlotsPerRank: s, RanksPerNode: g}
	req := &sdk.Request{Topology: topo, Options: map[string]string{}}
	if r.IntN(10) < 6 {
		req.Topology.IntraNodeBandwidth = digestPick(r, 300e9, 450e9, 0)
		req.Topology.InterNodeBandwidth = digestPick(r, 12.5e9, 50e9, 3e9, 100e9)
		params := digestPick(r, 4718592.0, 3*4096*1024, 1<<20)
		req.CostModel = sdk.CostModel{
			TokenBytes:        digestPick(r, 1536.0, 8192.0, 4096.0),
			FlopsPerToken:     []float64{6 * params},
			FlopsPerSecond:    digestPick(r, 6.5e14, 9e14),
			BurstSlotsPerRank: digestPick(r, 0, 0, 1, 2),
		}
		if r.IntN(3) == 0 {
			req.CostModel.BurstThreshold = digestPick(r, 1.02, 1.1, 1.3)
		}
		req.ExpertWeightBytes = []uint64{uint64(2 * params)}
	}
	for _, o := range []struct {
		name   string
		values []string
	}{
		{"node_policy", []string{"spread", "pack"}},
		{"objective", []string{"step", "compute"}},
		{"load_window", []string{"0", "2", "4", "8"}},
		{"two_home_margin", []string{"0", "0.02", "0.1"}},
		{"intake_deal_nodes", []string{"0", "2", "8", "64"}},
	} {
		if r.IntN(4) == 0 {
			req.Options[o.name] = digestPick(r, o.values...)
		}
	}
	total := topo.TotalSlots()
	for l := range 1 + r.IntN(3) {
		e := 1 + r.IntN(min(total, 300))
		if r.IntN(3) == 0 {
			e = max(1, total/digestPick(r, 1, 2, 4, 8))
		}
		in := sdk.LayerInput{Layer: l, NumExperts: e, Predicted: digestLoads(r, e)}
		switch r.IntN(4) {
		case 0:
		case 1:
			in.Current = sdk.StaticSlots(e, topo)
		default:
			in.Current = digestPlacement(r, e, total)
		}
		if r.IntN(3) == 0 {
			in.LastLoad = digestCounts(in.Predicted)
			for range r.IntN(8) {
				in.Earlier = append(in.Earlier, digestCounts(digestLoads(r, e)))
			}
		}
		req.Layers = append(req.Layers, in)
	}
	return req
}

// digestLoads draws e loads: Zipf over a random order, uniform, equal, a
// few hot, half idle, four levels (ties) or all zero.
func digestLoads(r *rand.Rand, e int) []float64 {
	v := make([]float64, e)
	scale := digestPick(r, 1e3, 1e5, 1e6, 4e6)
	switch r.IntN(7) {
	case 0:
		a, order := 0.5+1.5*r.Float64(), r.Perm(e)
		for x := range v {
			v[x] = math.Floor(scale / math.Pow(float64(order[x]+1), a))
		}
	case 1:
		for x := range v {
			v[x] = float64(r.IntN(int(scale)))
		}
	case 2:
		for x := range v {
			v[x] = scale
		}
	case 3:
		for x := range v {
			v[x] = float64(r.IntN(100))
		}
		for range 1 + r.IntN(4) {
			v[r.IntN(e)] = scale
		}
	case 4:
		for x := range v {
			if r.IntN(2) == 0 {
				v[x] = float64(r.IntN(int(scale)))
			}
		}
	case 5:
		for x := range v {
			v[x] = float64(1+r.IntN(4)) * scale / 4
		}
	}
	return v
}

// digestCounts is loads as token counts.
func digestCounts(loads []float64) []uint64 {
	out := make([]uint64, len(loads))
	for x, v := range loads {
		out[x] = uint64(v)
	}
	return out
}

// digestPlacement is a random placement of e experts in total slots: every
// expert at least once, in a random order (so not always within the
// per-rank limits).
func digestPlacement(r *rand.Rand, e, total int) []int {
	reps := make([]int, e)
	for x := range reps {
		reps[x] = 1
	}
	for range total - e {
		reps[r.IntN(e)]++
	}
	out := make([]int, 0, total)
	for x, c := range reps {
		for range c {
			out = append(out, x)
		}
	}
	r.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out
}
