package e2e

import (
	"context"
	"math"
	"sort"
	"testing"
	"time"

	pb "github.com/swiftmoe/swiftmoe/bridge/gen/swiftmoe/v1"
	"github.com/swiftmoe/swiftmoe/sidecar/internal/testbin"
)

// BenchmarkRoundTrip times ReportLoads from a gRPC client through the
// sidecar process and the swiftmoe plugin process back to the client, and
// reports the p50 and p99 latency, and the CPU time per call of the sidecar
// and of its plugin process (steadier than latency on a shared machine).
// The loads are Zipf-skewed and rotate
// every iteration, so every call plans a new placement.
//
//	go test ./sidecar/internal/e2e -run '^$' -bench RoundTrip -benchtime 500x
func BenchmarkRoundTrip(b *testing.B) {
	for _, c := range []struct {
		name                   string
		layers, experts, ranks int
		slots, ranksPerNode    uint32
		// step registers the job with a cost model and 12.5 GB/s between
		// nodes, so the swiftmoe strategy plans for step time and the
		// sidecar sends the window of loads to each layer whose experts fit
		// in a node's slots (the E=32 cases; load_window=0 turns it off).
		step    bool
		options map[string]string
	}{
		{"small-4L-8E-4N-4S", 4, 8, 4, 4, 4, false, nil},
		{"large-64L-256E-256N-4S", 64, 256, 256, 4, 8, false, nil},
		{"large-64L-256E-256N-4S-onenode", 64, 256, 256, 4, 0, false, nil},
		{"large-64L-256E-256N-4S-step-nowindow", 64, 256, 256, 4, 8, true, map[string]string{"load_window": "0"}},
		{"large-64L-256E-256N-4S-step-window", 64, 256, 256, 4, 8, true, nil},
		{"e32-64L-32E-16N-4S-step-nowindow", 64, 32, 16, 4, 8, true, map[string]string{"load_window": "0"}},
		{"e32-64L-32E-16N-4S-step-window", 64, 32, 16, 4, 8, true, nil},
	} {
		b.Run(c.name, func(b *testing.B) {
			sc := startSidecar(b, "--plugins-dir", binDir, "--plugin-timeout", "5s", "--log-level", "info", "--metrics-listen", "127.0.0.1:0")
			client := sc.client(b)
			ctx := ctxT(b, 10*time.Minute)
			experts := make([]uint32, c.layers)
			for l := range experts {
				experts[l] = uint32(c.experts)
			}
			reg := &pb.RegisterJobRequest{
				JobId:            "bench",
				Topology:         &pb.Topology{WorldSize: uint32(c.ranks), SlotsPerRank: c.slots, RanksPerNode: c.ranksPerNode},
				ExpertsPerLayer:  experts,
				ExpertParamNumel: []uint64{3 * 4096 * 1024},
				BytesPerParam:    2,
				Strategy:         "swiftmoe",
				StrategyOptions:  c.options,
			}
			if c.step {
				reg.Topology.IntraNodeBandwidth, reg.Topology.InterNodeBandwidth = 300e9, 12.5e9
				reg.CostModel = &pb.CostModel{TokenBytes: 8192, FlopsPerSecond: 6.5e14}
			}
			_, err := client.RegisterJob(ctx, reg)
			if err != nil {
				b.Fatal(err)
			}
			const variants = 16
			reqs := make([]*pb.ReportLoadsRequest, variants)
			for v := range reqs {
				reqs[v] = zipfReport("bench", c.layers, c.experts, v)
			}
			// Warm up: the plugin process and connections.
			for i := 0; i < 3; i++ {
				if _, err := client.ReportLoads(ctx, reqs[i%variants]); err != nil {
					b.Fatal(err)
				}
			}
			url := sc.metricsURL(b)
			sum0, n0, err := testbin.ScrapeHistogram(ctx, url, "swiftmoe_plan_latency_seconds", nil)
			if err != nil {
				b.Fatal(err)
			}
			pids := sc.plugins(b)
			if len(pids) != 1 {
				b.Fatalf("got %d plugin processes, want 1", len(pids))
			}
			side0, plug0 := testbin.ProcCPU(sc.cmd.Process.Pid), testbin.ProcCPU(pids[0])
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				req := reqs[i%variants]
				req.Iteration = uint64(i)
				cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				start := time.Now()
				resp, err := client.ReportLoads(cctx, req)
				lat = append(lat, time.Since(start))
				cancel()
				if err != nil {
					b.Fatal(err)
				}
				if src := resp.GetPlan().GetSource(); src != pb.PlanSource_PLAN_SOURCE_STRATEGY {
					b.Fatalf("iteration %d: got %v (%s); a fallback would not time the plugin", i, src, resp.GetPlan().GetNote())
				}
			}
			b.StopTimer()
			side1, plug1 := testbin.ProcCPU(sc.cmd.Process.Pid), testbin.ProcCPU(pids[0])
			if side0 >= 0 && side1 >= 0 && plug0 >= 0 && plug1 >= 0 {
				b.ReportMetric(float64(side1-side0)/float64(b.N)/1e6, "sidecar-cpu-ms")
				b.ReportMetric(float64(plug1-plug0)/float64(b.N)/1e6, "plugin-cpu-ms")
			}
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			b.ReportMetric(ms(lat[len(lat)/2]), "p50-ms")
			b.ReportMetric(ms(lat[min(len(lat)-1, len(lat)*99/100)]), "p99-ms")
			// The part spent inside the sidecar (plugin call included), from
			// its plan latency histogram.
			sum1, n1, err := testbin.ScrapeHistogram(ctx, url, "swiftmoe_plan_latency_seconds", nil)
			if err != nil {
				b.Fatal(err)
			}
			if n1 > n0 {
				b.ReportMetric((sum1-sum0)/float64(n1-n0)*1e3, "sidecar-mean-ms")
			}
		})
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// zipfReport is an iteration whose layer loads follow a Zipf(1.1) law over
// experts, rotated by variant and layer.
func zipfReport(job string, layers, experts, variant int) *pb.ReportLoadsRequest {
	req := &pb.ReportLoadsRequest{JobId: job}
	for l := 0; l < layers; l++ {
		tokens := make([]uint64, experts)
		for e := range tokens {
			rank := (e + variant*7 + l*3) % experts
			tokens[e] = uint64(1e6 / math.Pow(float64(rank+1), 1.1))
		}
		req.Layers = append(req.Layers, &pb.LayerLoads{Tokens: tokens})
	}
	return req
}
