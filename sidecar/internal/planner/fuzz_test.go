package planner

import (
	"context"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	pb "github.com/swiftmoe/swiftmoe/bridge/gen/swiftmoe/v1"
	"github.com/swiftmoe/swiftmoe/plugins/sdk"
)

// FuzzRegisterJob decodes arbitrary bytes as a RegisterJobRequest. Decoding
// and validation must never panic, and an accepted job must have a shard
// layout covering every expert and a valid initial plan.
func FuzzRegisterJob(f *testing.F) {
	for _, r := range []*pb.RegisterJobRequest{goodRegister(), {}, {Topology: &pb.Topology{WorldSize: 1, SlotsPerRank: 1}, ExpertsPerLayer: []uint32{1}, ExpertParamNumel: []uint64{1}, BytesPerParam: 4, Strategy: "fake"}} {
		b, err := proto.Marshal(r)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var req pb.RegisterJobRequest
		if proto.Unmarshal(data, &req) != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s := New(&fakeStrategies{}, nil, nil)
		resp, err := s.RegisterJob(ctx, &req)
		if err != nil {
			return
		}
		topo := sdk.TopologyFromProto(req.GetTopology())
		for l, layout := range resp.GetShardLayout() {
			var next uint64
			for _, sr := range layout.GetRanges() {
				if sr.GetOffset() != next {
					t.Fatalf("layer %d: shard at %d, want %d", l, sr.GetOffset(), next)
				}
				next += sr.GetLength()
			}
			if next != layout.GetExpertParamNumel() {
				t.Fatalf("layer %d: shards cover %d of %d elements", l, next, layout.GetExpertParamNumel())
			}
		}
		for l, lp := range resp.GetInitialPlan().GetLayers() {
			if err := sdk.ValidateSlots(sdk.IntsFromProto(lp.GetSlots()), int(req.GetExpertsPerLayer()[l]), topo); err != nil {
				t.Fatalf("initial plan layer %d: %v", l, err)
			}
		}
	})
}

// FuzzReportLoads decodes arbitrary bytes as a ReportLoadsRequest for a
// registered job: no panic, and an accepted report yields a valid plan.
func FuzzReportLoads(f *testing.F) {
	good := &pb.ReportLoadsRequest{JobId: "job-1", Iteration: 3, Layers: []*pb.LayerLoads{{Tokens: []uint64{1, 2, 3, 4, 5, 6}}, {Tokens: make([]uint64, 8)}}}
	for _, r := range []*pb.ReportLoadsRequest{good, {}, {JobId: "job-1"}} {
		b, err := proto.Marshal(r)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var req pb.ReportLoadsRequest
		if proto.Unmarshal(data, &req) != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s := New(&fakeStrategies{}, nil, nil)
		reg := goodRegister()
		if _, err := s.RegisterJob(ctx, reg); err != nil {
			t.Fatal(err)
		}
		resp, err := s.ReportLoads(ctx, &req)
		if err != nil {
			return
		}
		topo := sdk.TopologyFromProto(reg.GetTopology())
		for l, lp := range resp.GetPlan().GetLayers() {
			if err := sdk.ValidateSlots(sdk.IntsFromProto(lp.GetSlots()), int(reg.GetExpertsPerLayer()[l]), topo); err != nil {
				t.Fatalf("layer %d: %v", l, err)
			}
			if m := lp.GetMaxOverMean(); m < 1 || m != m {
				t.Fatalf("layer %d: max_over_mean %v, want >= 1", l, m)
			}
		}
	})
}
