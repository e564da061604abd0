package host

import (
	"context"
	"math"
	"sort"
	"syscall"
	"testing"
	"time"

	"github.com/swiftmoe/swiftmoe/plugins/sdk"
	"github.com/swiftmoe/swiftmoe/sidecar/internal/testbin"
)

// BenchmarkPlanHop times Host.Plan on the largest target job (64 layers x
// 256 experts x 256 ranks x 4 slots) against a real plugin process: the
// conversion to and from the wire form, gRPC over AutoMTLS, the plugin's own
// decoding and the validation of the answer. The static strategy answers
// almost for free, so its figures are the hop itself; swiftmoe adds the
// planning. It reports p50/p99 latency and the CPU spent per call in this
// process and in the plugin process.
//
//	go test ./sidecar/internal/host -run '^$' -bench PlanHop -benchtime 200x
func BenchmarkPlanHop(b *testing.B) {
	for _, name := range []string{"static", "swiftmoe"} {
		b.Run(name, func(b *testing.B) {
			dir := b.TempDir()
			if _, err := testbin.Build(dir, testbin.Strategy(name), sdk.BinaryPrefix+name); err != nil {
				b.Fatal(err)
			}
			h, err := New(Options{Dir: dir, CallTimeout: 5 * time.Second})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(h.Close)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			reqs := make([]*sdk.Request, 16)
			for v := range reqs {
				reqs[v] = benchRequest(64, 256, sdk.Topology{WorldSize: 256, SlotsPerRank: 4, RanksPerNode: 8}, v)
			}
			for i := 0; i < 3; i++ {
				if _, err := h.Plan(ctx, name, reqs[i]); err != nil {
					b.Fatal(err)
				}
			}
			pid := h.PID(name)
			lat := make([]time.Duration, 0, b.N)
			self0, plug0 := selfCPU(), testbin.ProcCPU(pid)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				start := time.Now()
				if _, err := h.Plan(ctx, name, reqs[i%len(reqs)]); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
			}
			b.StopTimer()
			self1, plug1 := selfCPU(), testbin.ProcCPU(pid)
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			b.ReportMetric(float64(lat[len(lat)/2])/1e6, "p50-ms")
			b.ReportMetric(float64(lat[min(len(lat)-1, len(lat)*99/100)])/1e6, "p99-ms")
			b.ReportMetric(float64(self1-self0)/float64(b.N)/1e6, "host-cpu-ms")
			if plug0 >= 0 && plug1 >= 0 {
				b.ReportMetric(float64(plug1-plug0)/float64(b.N)/1e6, "plugin-cpu-ms")
			}
		})
	}
}

// benchRequest is one planning call with Zipf(1.1) loads rotated by variant
// and layer, from the static placement.
func benchRequest(layers, experts int, t sdk.Topology, variant int) *sdk.Request {
	req := &sdk.Request{Topology: t, ExpertWeightBytes: []uint64{1 << 25}}
	cur := sdk.StaticSlots(experts, t)
	for l := 0; l < layers; l++ {
		pred := make([]float64, experts)
		last := make([]uint64, experts)
		for e := range pred {
			r := (e + variant*7 + l*3) % experts
			last[e] = uint64(1e6 / math.Pow(float64(r+1), 1.1))
			pred[e] = float64(last[e])
		}
		req.Layers = append(req.Layers, sdk.LayerInput{Layer: l, NumExperts: experts, Predicted: pred, LastLoad: last, Current: cur})
	}
	return req
}

// selfCPU is this process's user+system CPU time in nanoseconds.
func selfCPU() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return -1
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}
