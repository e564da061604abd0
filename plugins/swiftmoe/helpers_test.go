package swiftmoe

import (
	"bufio"
	"context"
	"encoding/json"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/swiftmoe/swiftmoe/plugins/sdk"
)

// zipfLoads returns loads proportional to 1/k^s for k = 1..e, scaled to
// total tokens, assigned to experts in a seeded random order.
func zipfLoads(e int, s, total float64, seed uint64) []float64 {
	raw := make([]float64, e)
	var sum float64
	for k := range e {
		raw[k] = 1 / math.Pow(float64(k+1), s)
		sum += raw[k]
	}
	out := make([]float64, e)
	perm := rand.New(rand.NewPCG(seed, 7)).Perm(e)
	for k, x := range raw {
		out[perm[k]] = math.Round(x / sum * total)
	}
	return out
}

// planOne plans a single layer with a timeout.
func planOne(t testing.TB, s sdk.Strategy, topo sdk.Topology, loads []float64, cur []int) []int {
	t.Helper()
	resp, err := planReq(t, s, &sdk.Request{
		Topology: topo,
		Layers:   []sdk.LayerInput{{NumExperts: len(loads), Predicted: loads, Current: cur}},
	})
	if err != nil {
		t.Fatalf("Plan(N=%d S=%d R=%d E=%d): %v", topo.WorldSize, topo.SlotsPerRank, topo.RanksPerNode, len(loads), err)
	}
	return resp.Layers[0]
}

func planReq(t testing.TB, s sdk.Strategy, req *sdk.Request) (*sdk.Response, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return s.Plan(ctx, req)
}

// balance is max_over_mean with each expert's load split evenly.
func balance(slots []int, loads []float64, topo sdk.Topology) float64 {
	return sdk.MaxOverMean(sdk.RankLoads(slots, loads, topo))
}

type traceLine struct {
	Iteration int         `json:"iteration"`
	Loads     [][]float64 `json:"loads"`
}

func readTrace(t testing.TB, name string) []traceLine {
	t.Helper()
	f, err := os.Open(filepath.Join("..", "..", "testdata", "traces", name))
	if err != nil {
		t.Fatalf("opening trace: %v", err)
	}
	defer f.Close()
	var out []traceLine
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		var l traceLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("trace line %d: %v", len(out)+1, err)
		}
		out = append(out, l)
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("reading trace: %v", err)
	}
	if len(out) == 0 {
		t.Fatalf("trace %s is empty", name)
	}
	return out
}
