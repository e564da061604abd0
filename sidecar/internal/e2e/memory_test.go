package e2e

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/swiftmoe/swiftmoe/bridge/gen/swiftmoe/v1"
	"github.com/swiftmoe/swiftmoe/sidecar/internal/cli"
	"github.com/swiftmoe/swiftmoe/sidecar/internal/metrics"
	"github.com/swiftmoe/swiftmoe/sidecar/internal/planner"
	"github.com/swiftmoe/swiftmoe/sidecar/internal/testbin"
)

// memLayers is the layer count of the jobs TestMemoryBoundedByLimits sizes.
const memLayers = 64

// wideRegister is a job of memLayers layers on worldSize ranks of one slot,
// with as many experts as slots: the most history, plan and shard layout a
// slot count can have.
func wideRegister(id string, worldSize int) *pb.RegisterJobRequest {
	experts := make([]uint32, memLayers)
	for l := range experts {
		experts[l] = uint32(worldSize)
	}
	return &pb.RegisterJobRequest{
		JobId:            id,
		Topology:         &pb.Topology{WorldSize: uint32(worldSize), SlotsPerRank: 1},
		ExpertsPerLayer:  experts,
		ExpertParamNumel: []uint64{1 << 20},
		BytesPerParam:    2,
		Strategy:         "static",
	}
}

// TestMemoryBoundedByLimits registers the largest jobs the limits admit in a
// real sidecar, fills their load history, scrapes every series it exports
// and checks that its peak memory (VmHWM) stays within the memory limit the
// runtime is given. The widest job within the request size limits, which
// used to make the sidecar hold over 500 MB and answer more than the message
// limit, is refused.
func TestMemoryBoundedByLimits(t *testing.T) {
	if testing.Short() {
		t.Skip("registers about 1 GiB of jobs")
	}
	sc := startSidecar(t, "--plugins-dir", binDir, "--plugin-timeout", "60s", "--metrics-listen", "127.0.0.1:0", "--metrics-per-expert")
	pid := sc.cmd.Process.Pid
	conn, err := grpc.NewClient(sc.url, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(planner.MaxMessageBytes), grpc.MaxCallSendMsgSize(planner.MaxMessageBytes)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ctx := ctxT(t, 10*time.Minute)
	// Responses are received whole but not decoded: decoding millions of
	// shard ranges and slots would only slow the test.
	call := func(method string, req proto.Message) ([]byte, error) {
		in, err := proto.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		var out []byte
		err = conn.Invoke(ctx, "/swiftmoe.v1.Planner/"+method, &in, &out, grpc.ForceCodec(testbin.RawCodec{}))
		return out, err
	}

	if _, err := call("RegisterJob", wideRegister("widest", planner.MaxWorldSize)); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "per job") {
		t.Fatalf("the widest job: got %v, want InvalidArgument over the per-job limit", err)
	}
	// The largest admitted world size, by bisection; every probe registers
	// job-0, so the last admitted one stays.
	lo, hi := 1, planner.MaxWorldSize
	for hi-lo > 1 {
		mid := (lo + hi) / 2
		_, err := call("RegisterJob", wideRegister("job-0", mid))
		switch status.Code(err) {
		case codes.OK:
			lo = mid
		case codes.InvalidArgument:
			hi = mid
		default:
			t.Fatalf("world size %d: %v", mid, err)
		}
	}
	if _, err := call("RegisterJob", wideRegister("job-0", lo)); err != nil {
		t.Fatalf("the largest admitted job, world size %d: %v", lo, err)
	}
	// As many as the sidecar-wide budget admits.
	jobs := []string{"job-0"}
	for {
		id := "job-" + strconv.Itoa(len(jobs))
		_, err := call("RegisterJob", wideRegister(id, lo))
		if status.Code(err) == codes.ResourceExhausted {
			if !strings.Contains(err.Error(), "for all jobs") {
				t.Errorf("refusal beyond the budget: %v, want it to name the limit for all jobs", err)
			}
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		jobs = append(jobs, id)
	}
	if want := planner.MaxTotalJobBytes / planner.MaxJobBytes; len(jobs) != want {
		t.Errorf("admitted %d jobs of world size %d, want %d", len(jobs), lo, want)
	}
	afterRegister := peakRSS(t, pid)

	// Fill every job's history; every plan must reach the client. Two sets
	// of loads, in turn, spare the client building each report.
	variants := []*pb.ReportLoadsRequest{wideReport(lo, 0), wideReport(lo, 1)}
	for it := 0; it <= planner.DefaultHistory; it++ {
		for _, id := range jobs {
			req := variants[it%2]
			req.JobId, req.Iteration = id, uint64(it)
			out, err := call("ReportLoads", req)
			if err != nil {
				t.Fatalf("%s iteration %d: %v", id, it, err)
			}
			if it < planner.DefaultHistory {
				continue
			}
			var resp pb.ReportLoadsResponse
			if err := proto.Unmarshal(out, &resp); err != nil {
				t.Fatal(err)
			}
			if src := resp.GetPlan().GetSource(); src != pb.PlanSource_PLAN_SOURCE_STRATEGY || len(resp.GetPlan().GetLayers()) != memLayers {
				t.Fatalf("%s iteration %d: got %v (%s) of %d layers, want STRATEGY of %d", id, it, src, resp.GetPlan().GetNote(), len(resp.GetPlan().GetLayers()), memLayers)
			}
		}
	}
	afterReports := peakRSS(t, pid)

	url := sc.metricsURL(t)
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"swiftmoe_metrics_series_omitted", map[string]string{"kind": "expert"}, float64(len(jobs)*memLayers*lo - metrics.MaxExpertSeries)},
		{"swiftmoe_metrics_series_omitted", map[string]string{"kind": "layer"}, 0},
		// The static plan holds each expert once: the series shown sum
		// to their count.
		{"swiftmoe_expert_replicas", nil, metrics.MaxExpertSeries},
	} {
		if got, err := testbin.Scrape(ctx, url, c.name, c.labels); err != nil || got != c.want {
			t.Errorf("%s%v: got %v (%v), want %v", c.name, c.labels, got, err, c.want)
		}
	}
	peak := peakRSS(t, pid)
	t.Logf("%d jobs of %d layers x %d ranks x 1 slot: sidecar VmHWM %d MiB after registering, %d MiB after %d reports each, %d MiB after scraping (memory limit %d MiB)",
		len(jobs), memLayers, lo, afterRegister>>20, afterReports>>20, planner.DefaultHistory+1, peak>>20, cli.MemoryLimit>>20)
	// The runtime keeps its heap within the memory limit; the rest of the
	// process (stacks, runtime structures) takes a few MiB.
	if bound := int64(cli.MemoryLimit + 64<<20); peak > bound {
		t.Errorf("sidecar peak memory %d MiB, want at most %d MiB", peak>>20, bound>>20)
	}
}

// wideReport is loads for a job made by wideRegister, varied by variant.
func wideReport(worldSize, variant int) *pb.ReportLoadsRequest {
	req := &pb.ReportLoadsRequest{}
	for l := 0; l < memLayers; l++ {
		tokens := make([]uint64, worldSize)
		for e := range tokens {
			tokens[e] = uint64((e*7 + l + variant*13) % 1000)
		}
		req.Layers = append(req.Layers, &pb.LayerLoads{Tokens: tokens})
	}
	return req
}

func peakRSS(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := testbin.PeakRSS(pid)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
