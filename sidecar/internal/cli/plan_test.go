package cli

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/swiftmoe/swiftmoe/plugins/sdk"
)

// trace is the committed routing trace: 4 layers, 8 experts, 200 iterations.
const trace = "../../../testdata/traces/cheaders-e8-top2-aux0.jsonl"

const goldenDir = "../../testdata/golden"

// golden compares got with the named golden file, or rewrites it under -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join(goldenDir, name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./sidecar/... -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("output differs from %s (run go test ./sidecar/... -update if the change is intended)\ngot:\n%s\nwant:\n%s", path, got, want)
	}
}

func TestPlanGolden(t *testing.T) {
	configs := []struct {
		name string
		args []string
	}{
		{"n4-s4-last", []string{"--world-size", "4", "--slots", "4"}},
		{"n8-s2-rpn4-it100", []string{"--world-size", "8", "--slots", "2", "--ranks-per-node", "4", "--iteration", "100"}},
	}
	for _, s := range builtins {
		for _, c := range configs {
			t.Run(s+"/"+c.name, func(t *testing.T) {
				args := append([]string{"plan", "--strategy", s, "--loads", trace, "--plugins-dir", binDir, "--json"}, c.args...)
				out, stderr, err := run(args...)
				if err != nil {
					t.Fatalf("plan: %v\n%s", err, stderr)
				}
				checkPlanJSON(t, []byte(out))
				golden(t, "plan-"+s+"-"+c.name+".json", []byte(out))
			})
		}
	}
	t.Run("table", func(t *testing.T) {
		out, _, err := run("plan", "--strategy", "swiftmoe", "--loads", trace, "--plugins-dir", binDir, "--world-size", "4", "--slots", "4", "--iteration", "0")
		if err != nil {
			t.Fatal(err)
		}
		golden(t, "plan-swiftmoe-n4-s4-it0.txt", []byte(out))
	})
}

// checkPlanJSON checks the plan JSON of DESIGN.md: every field present and
// every layer a valid placement of the trace's 8 experts.
func checkPlanJSON(t *testing.T, data []byte) {
	t.Helper()
	var p struct {
		Strategy     string `json:"strategy"`
		WorldSize    int    `json:"world_size"`
		SlotsPerRank int    `json:"slots_per_rank"`
		Layers       []struct {
			Slots       []int     `json:"slots"`
			Replicas    []int     `json:"replicas"`
			RankLoad    []float64 `json:"rank_load"`
			MaxOverMean float64   `json:"max_over_mean"`
		} `json:"layers"`
		MaxOverMean float64 `json:"max_over_mean"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		t.Fatalf("plan JSON: %v", err)
	}
	topo := sdk.Topology{WorldSize: p.WorldSize, SlotsPerRank: p.SlotsPerRank}
	if len(p.Layers) != 4 {
		t.Fatalf("got %d layers, want 4", len(p.Layers))
	}
	var worst float64
	for l, lp := range p.Layers {
		if err := sdk.ValidateSlots(lp.Slots, 8, topo); err != nil {
			t.Errorf("layer %d: %v", l, err)
		}
		if len(lp.Replicas) != 8 || len(lp.RankLoad) != p.WorldSize {
			t.Errorf("layer %d: %d replicas and %d rank loads, want 8 and %d", l, len(lp.Replicas), len(lp.RankLoad), p.WorldSize)
		}
		if m := sdk.MaxOverMean(lp.RankLoad); m != lp.MaxOverMean {
			t.Errorf("layer %d: max_over_mean %v, its rank loads give %v", l, lp.MaxOverMean, m)
		}
		worst = max(worst, lp.MaxOverMean)
	}
	if worst != p.MaxOverMean {
		t.Errorf("plan max_over_mean %v, worst layer %v", p.MaxOverMean, worst)
	}
}

func TestPlanBalance(t *testing.T) {
	// On the trace's last iteration, the load-aware strategy must balance
	// far better than static expert parallelism.
	mom := map[string]float64{}
	for _, s := range []string{"static", "swiftmoe"} {
		out, _, err := run("plan", "--strategy", s, "--loads", trace, "--plugins-dir", binDir, "--world-size", "4", "--slots", "4", "--json")
		if err != nil {
			t.Fatal(err)
		}
		var p struct {
			MaxOverMean float64 `json:"max_over_mean"`
		}
		if err := json.Unmarshal([]byte(out), &p); err != nil {
			t.Fatal(err)
		}
		mom[s] = p.MaxOverMean
	}
	t.Logf("max_over_mean: static %.4f, swiftmoe %.4f", mom["static"], mom["swiftmoe"])
	if mom["swiftmoe"] > 1.05 || mom["static"] < mom["swiftmoe"]+0.1 {
		t.Errorf("got swiftmoe %.4f and static %.4f, want swiftmoe <= 1.05 and well below static", mom["swiftmoe"], mom["static"])
	}
}

func TestPlanErrors(t *testing.T) {
	bad := writeFile(t, `{"iteration": 0, "loads": [[1, 2, 3]]}`+"\n"+`{"iteration": 1, "loads": [[1, 2, "x"]]}`)
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"unknown strategy", []string{"--strategy", "nope", "--loads", trace}, []string{`unknown strategy "nope"`, "available strategies: faulty, flexmoe, static, swiftmoe"}},
		{"too few slots", []string{"--strategy", "swiftmoe", "--loads", trace, "--slots", "1", "--world-size", "4"}, []string{trace + " line 1", "loads[0]: more than 4 experts", "--world-size 4 x --slots 1 = 4 slots per layer", "raise --slots"}},
		{"unknown option", []string{"--strategy", "swiftmoe", "--loads", trace, "--option", "speed=9"}, []string{`unknown option "speed" for strategy "swiftmoe"`}},
		{"garbage plan", []string{"--strategy", "faulty", "--loads", trace, "--option", "mode=garbage"}, []string{`strategy "faulty" gave no valid plan`, "invalid_slots"}},
		{"bad file line", []string{"--strategy", "swiftmoe", "--loads", bad}, []string{bad + " line 2", `loads[0][2]`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"plan", "--plugins-dir", binDir, "--world-size", "4", "--slots", "4"}, tc.args...)
			_, _, err := run(args...)
			if err == nil || ExitCode(err) != 1 {
				t.Fatalf("got %v (exit %d), want a failure with exit 1", err, ExitCode(err))
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

// TestPlanWithCostModel: with the cost model's flags the swiftmoe strategy
// plans for step time, here keeping every one of the trace's 8 experts in
// both nodes (the static-like replicated layout, no token crossing the slow
// link); bad values are usage errors naming the flags.
func TestPlanWithCostModel(t *testing.T) {
	args := []string{"plan", "--strategy", "swiftmoe", "--loads", trace, "--plugins-dir", binDir, "--json",
		"--world-size", "16", "--slots", "4", "--ranks-per-node", "8", "--iteration", "100"}
	cost := []string{"--inter-bw", "12.5", "--intra-bw", "300", "--token-bytes", "1536",
		"--expert-params", "4718592", "--flops-per-second", "6.5e14"}
	inBoth := func(out string) int {
		var p struct {
			Layers []struct {
				Slots []int `json:"slots"`
			} `json:"layers"`
		}
		if err := json.Unmarshal([]byte(out), &p); err != nil {
			t.Fatal(err)
		}
		topo := sdk.Topology{WorldSize: 16, SlotsPerRank: 4, RanksPerNode: 8}
		worst := 8
		for l, lp := range p.Layers {
			if err := sdk.ValidateSlots(lp.Slots, 8, topo); err != nil {
				t.Fatalf("layer %d: %v", l, err)
			}
			seen := [2][8]bool{}
			for k, e := range lp.Slots {
				seen[topo.NodeOf(k/4)][e] = true
			}
			n := 0
			for e := range 8 {
				if seen[0][e] && seen[1][e] {
					n++
				}
			}
			worst = min(worst, n)
		}
		return worst
	}
	out, stderr, err := run(append(args, cost...)...)
	if err != nil {
		t.Fatalf("plan: %v\n%s", err, stderr)
	}
	if got := inBoth(out); got != 8 {
		t.Errorf("with the cost model: %d of 8 experts in both nodes in some layer, want all", got)
	}
	_, _, err = run(append(args, "--inter-bw", "-1")...)
	if err == nil || ExitCode(err) != 2 || !strings.Contains(err.Error(), "--inter-bw") {
		t.Errorf("negative bandwidth: got %v (exit %d), want a usage error naming --inter-bw", err, ExitCode(err))
	}
}

func TestStrategiesCommand(t *testing.T) {
	out, _, err := run("strategies", "--plugins-dir", binDir, "--json")
	if err != nil {
		t.Fatal(err)
	}
	var list []strategyJSON
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range list {
		names = append(names, s.Name)
		if len(s.SHA256) != 64 || s.Path != filepath.Join(binDir, "swiftmoe-strategy-"+s.Name) || s.Description == "" {
			t.Errorf("%s: got sha256 %q path %q description %q", s.Name, s.SHA256, s.Path, s.Description)
		}
	}
	if got := strings.Join(names, ","); got != "faulty,flexmoe,static,swiftmoe" {
		t.Errorf("got strategies %s, want faulty,flexmoe,static,swiftmoe", got)
	}
	for _, s := range list {
		for _, o := range s.Options {
			if s.Name == "flexmoe" && o.Name == "threshold" && (o.Type != "float" || o.Accepts != "a number in [1, inf]") {
				t.Errorf("flexmoe threshold: got type %q accepts %q, want float, a number in [1, inf]", o.Type, o.Accepts)
			}
			if s.Name == "swiftmoe" && o.Name == "node_policy" && o.Accepts != "one of spread, pack" {
				t.Errorf("swiftmoe node_policy: got accepts %q, want one of spread, pack", o.Accepts)
			}
		}
	}
	text, _, err := run("strategies", "--plugins-dir", binDir)
	if err != nil || !strings.Contains(text, `option threshold (default "1.2"; a number in [1, inf])`) || !strings.Contains(text, "sha256: ") {
		t.Errorf("text listing: %v\n%s", err, text)
	}
	empty, _, err := run("strategies", "--plugins-dir", t.TempDir())
	if err != nil || !strings.Contains(empty, "no strategy plugins") {
		t.Errorf("empty directory: got %v and %q", err, empty)
	}
}
