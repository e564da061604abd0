package sdk

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

type planVector struct {
	Name         string    `json:"name"`
	WorldSize    int       `json:"world_size"`
	SlotsPerRank int       `json:"slots_per_rank"`
	NumExperts   int       `json:"num_experts"`
	Slots        []int     `json:"slots"`
	Loads        []float64 `json:"loads"`
	Valid        bool      `json:"valid"`
	Error        string    `json:"error"`
	Replicas     []int     `json:"replicas"`
	RankLoads    []float64 `json:"rank_loads"`
	MaxOverMean  *float64  `json:"max_over_mean"`
}

// TestPlanRuleVectors checks the SDK against the cases shared with the
// Python validator (testdata/vectors/plan_rules.json).
func TestPlanRuleVectors(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "..", "testdata", "vectors", "plan_rules.json"))
	if err != nil {
		t.Fatalf("reading shared vectors: %v", err)
	}
	var cases []planVector
	if err := json.Unmarshal(raw, &cases); err != nil {
		t.Fatalf("parsing shared vectors: %v", err)
	}
	if len(cases) == 0 {
		t.Fatal("no shared vectors")
	}
	for _, c := range cases {
		t.Run(c.Name, func(t *testing.T) {
			topo := Topology{WorldSize: c.WorldSize, SlotsPerRank: c.SlotsPerRank}
			err := ValidateSlots(c.Slots, c.NumExperts, topo)
			if c.Valid != (err == nil) {
				t.Fatalf("ValidateSlots = %v, want valid %v (%s)", err, c.Valid, c.Error)
			}
			if !c.Valid {
				if got := strings.TrimPrefix(err.Error(), ErrInvalidPlan.Error()+": "); got != c.Error {
					t.Errorf("error %q, want %q", got, c.Error)
				}
				return
			}
			if got := Replicas(c.Slots, c.NumExperts); !slices.Equal(got, c.Replicas) {
				t.Errorf("Replicas = %v, want %v", got, c.Replicas)
			}
			if got := RankLoads(c.Slots, c.Loads, topo); !slices.Equal(got, c.RankLoads) {
				t.Errorf("RankLoads = %v, want %v (bit-identical)", got, c.RankLoads)
			}
			if c.MaxOverMean != nil {
				if got := MaxOverMean(RankLoads(c.Slots, c.Loads, topo)); got != *c.MaxOverMean {
					t.Errorf("MaxOverMean = %v, want %v", got, *c.MaxOverMean)
				}
			}
		})
	}
}
