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

// planOne plans a single layer with default options and a timeout.
func planOne(t testing.TB, s sdk.Strategy, topo sdk.Topology, loads []float64, cur []int) []int {
	t.Helper()
	return planWith(t, s, topo, nil, loads, cur)
}

// planWith plans a single layer with the given options and a timeout.
func planWith(t testing.TB, s sdk.Strategy, topo sdk.Topology, opts map[string]string, loads []float64, cur []int) []int {
	t.Helper()
	resp, err := planReq(t, s, &sdk.Request{
		Topology: topo,
		Options:  opts,
		Layers:   []sdk.LayerInput{{NumExperts: len(loads), Predicted: loads, Current: cur}},
	})
	if err != nil {
		t.Fatalf("Plan(N=%d S=%d R=%d E=%d options %v): %v", topo.WorldSize, topo.SlotsPerRank, topo.RanksPerNode, len(loads), opts, err)
	}
	return resp.Layers[0]
}

// nodeCounts returns, per expert, its replicas on each node.
func nodeCounts(slots []int, e int, topo sdk.Topology) [][]int {
	nodes := 1
	if topo.RanksPerNode > 0 {
		nodes = (topo.WorldSize + topo.RanksPerNode - 1) / topo.RanksPerNode
	}
	out := make([][]int, e)
	for x := range out {
		out[x] = make([]int, nodes)
	}
	for i, x := range slots {
		out[x][topo.NodeOf(i/topo.SlotsPerRank)]++
	}
	return out
}

// checkSpread asserts node_policy=spread's layout when ranks_per_node
// splits the job into equal nodes: every expert with r replicas on
// min(r, nodes) nodes, its per-node counts differing by at most one.
func checkSpread(t *testing.T, name string, slots []int, e int, topo sdk.Topology) {
	t.Helper()
	r := topo.RanksPerNode
	if r <= 0 || r >= topo.WorldSize || topo.WorldSize%r != 0 {
		return
	}
	for x, row := range nodeCounts(slots, e, topo) {
		lo, hi, used, reps := row[0], row[0], 0, 0
		for _, c := range row {
			lo, hi = min(lo, c), max(hi, c)
			reps += c
			if c > 0 {
				used++
			}
		}
		if hi-lo > 1 || used != min(reps, len(row)) {
			t.Fatalf("%s: expert %d has node counts %v; want min(%d, %d) = %d nodes with counts differing by at most one",
				name, x, row, reps, len(row), min(reps, len(row)))
		}
	}
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

// readVectors reads the shared vectors testdata/vectors/<name> (written by
// a scripts/gen_*_vectors.py), which must hold at least min cases.
func readVectors[T any](t *testing.T, name string, min int) []T {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "..", "testdata", "vectors", name))
	if err != nil {
		t.Fatalf("reading shared vectors: %v", err)
	}
	var cases []T
	if err := json.Unmarshal(raw, &cases); err != nil {
		t.Fatalf("parsing shared vectors %s: %v", name, err)
	}
	if len(cases) < min {
		t.Fatalf("got %d shared cases in %s, want at least %d", len(cases), name, min)
	}
	return cases
}

// randomCounts is counts of e experts summing to slots (at least e): one
// replica each, the rest to experts drawn at random.
func randomCounts(rng *rand.Rand, e, slots int) []int32 {
	reps := make([]int32, e)
	for x := range reps {
		reps[x] = 1
	}
	for range slots - e {
		reps[rng.IntN(e)]++
	}
	return reps
}

// tiedLoads draws e expert loads with ties: a quarter zero, a quarter
// equal to tie, the rest integers below hi.
func tiedLoads(rng *rand.Rand, e int, tie float64, hi int) []float64 {
	loads := make([]float64, e)
	for x := range loads {
		switch rng.IntN(4) {
		case 0:
			loads[x] = 0
		case 1:
			loads[x] = tie
		default:
			loads[x] = float64(rng.IntN(hi))
		}
	}
	return loads
}
