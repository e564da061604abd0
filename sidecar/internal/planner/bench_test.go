package planner

import (
	"context"
	"math"
	"testing"
	"time"

	pb "github.com/swiftmoe/swiftmoe/bridge/gen/swiftmoe/v1"
	"github.com/swiftmoe/swiftmoe/sidecar/internal/metrics"
)

// BenchmarkReportLoadsOverhead is the sidecar's own work per report on the
// largest target job (64 layers x 256 experts x 256 ranks x 4 slots):
// history, prediction, plan description, remap and metrics, with an
// in-process strategy that answers instantly.
func BenchmarkReportLoadsOverhead(b *testing.B) {
	s := New(&fakeStrategies{}, metrics.New(), nil)
	experts := make([]uint32, 64)
	for l := range experts {
		experts[l] = 256
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	_, err := s.RegisterJob(ctx, &pb.RegisterJobRequest{JobId: "b", Topology: &pb.Topology{WorldSize: 256, SlotsPerRank: 4},
		ExpertsPerLayer: experts, ExpertParamNumel: []uint64{1 << 24}, BytesPerParam: 2, Strategy: "fake"})
	if err != nil {
		b.Fatal(err)
	}
	req := &pb.ReportLoadsRequest{JobId: "b"}
	for l := 0; l < 64; l++ {
		tokens := make([]uint64, 256)
		for e := range tokens {
			tokens[e] = uint64(1e6 / math.Pow(float64((e+l)%256+1), 1.1))
		}
		req.Layers = append(req.Layers, &pb.LayerLoads{Tokens: tokens})
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		req.Iteration = uint64(i)
		if _, err := s.ReportLoads(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
}
