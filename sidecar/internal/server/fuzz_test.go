package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"

	pb "github.com/swiftmoe/swiftmoe/bridge/gen/swiftmoe/v1"
	"github.com/swiftmoe/swiftmoe/plugins/sdk"
	"github.com/swiftmoe/swiftmoe/sidecar/internal/host"
	"github.com/swiftmoe/swiftmoe/sidecar/internal/planner"
	"github.com/swiftmoe/swiftmoe/sidecar/internal/testbin"
)

// staticStrategies is an in-process stand-in for the plugin host with one
// strategy, "static", that answers the static plan.
type staticStrategies struct{}

func (staticStrategies) Has(name string) error {
	if name != "static" {
		return fmt.Errorf("%w %q: only static is served here", host.ErrUnknownStrategy, name)
	}
	return nil
}

func (staticStrategies) Names() ([]string, error) { return []string{"static"}, nil }

func (staticStrategies) Info(context.Context, string) (host.Info, error) {
	return host.Info{Info: sdk.Info{Name: "static", Description: "the static plan"}}, nil
}

func (s staticStrategies) List(ctx context.Context) ([]host.Info, error) {
	i, err := s.Info(ctx, "static")
	return []host.Info{i}, err
}

func (staticStrategies) Plan(_ context.Context, _ string, req *sdk.Request) (*sdk.Response, error) {
	resp := &sdk.Response{}
	for _, l := range req.Layers {
		resp.Layers = append(resp.Layers, sdk.StaticSlots(l.NumExperts, req.Topology))
	}
	return resp, nil
}

func (staticStrategies) Trust(string, string) (string, error) { return "", nil }

func (staticStrategies) ValidateOptions(_ context.Context, _ string, opts map[string]string) error {
	return sdk.ValidateDeclared(opts, nil)
}

// fuzzJob is registered before each input, so that reports can name a job.
var fuzzJob = &pb.RegisterJobRequest{
	JobId:            "fuzz",
	Topology:         &pb.Topology{WorldSize: 4, SlotsPerRank: 2},
	ExpertsPerLayer:  []uint32{6, 8},
	ExpertParamNumel: []uint64{1000},
	BytesPerParam:    2,
	Strategy:         "static",
}

// maxFuzzSlots bounds the jobs FuzzPlannerWire registers, so that fuzzing
// does not spend the shared machine's memory on large valid jobs (the
// limits on large jobs have tests of their own).
const maxFuzzSlots = 1 << 16

// FuzzPlannerWire sends arbitrary bytes as a RegisterJob, ReportLoads or
// GetPlan request to a server built by New, over gRPC: the request is
// decoded and validated by the server's own path, never panics, and a
// request that decodes ends in a status a client can act on (OK,
// INVALID_ARGUMENT, NOT_FOUND or RESOURCE_EXHAUSTED); an accepted request's
// plan is valid for its job.
func FuzzPlannerWire(f *testing.F) {
	methods := []string{"RegisterJob", "ReportLoads", "GetPlan"}
	report := &pb.ReportLoadsRequest{JobId: "fuzz", Iteration: 7, Layers: []*pb.LayerLoads{
		{Tokens: []uint64{60, 10, 10, 10, 5, 5}}, {Tokens: []uint64{1, 2, 3, 4, 5, 6, 7, 8}},
	}}
	for m, msg := range []proto.Message{fuzzJob, report, &pb.GetPlanRequest{JobId: "fuzz"}} {
		b, err := proto.Marshal(msg)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint8(m), b)
		f.Add(uint8(m), []byte{})
	}
	f.Fuzz(func(t *testing.T, method uint8, data []byte) {
		name := methods[int(method)%len(methods)]
		var decodes bool
		switch name {
		case "RegisterJob":
			var req pb.RegisterJobRequest
			decodes = proto.Unmarshal(data, &req) == nil
			if decodes && fuzzSlots(&req) > maxFuzzSlots {
				return
			}
		case "ReportLoads":
			decodes = proto.Unmarshal(data, &pb.ReportLoadsRequest{}) == nil
		default:
			decodes = proto.Unmarshal(data, &pb.GetPlanRequest{}) == nil
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn := fuzzServer(t)
		if err := conn.Invoke(ctx, "/swiftmoe.v1.Planner/RegisterJob", fuzzJob, &pb.RegisterJobResponse{}); err != nil {
			t.Fatalf("registering the fuzz job: %v", err)
		}
		var out []byte
		err := conn.Invoke(ctx, "/swiftmoe.v1.Planner/"+name, &data, &out, grpc.ForceCodec(testbin.RawCodec{}))
		switch status.Code(err) {
		case codes.OK:
		case codes.InvalidArgument, codes.NotFound, codes.ResourceExhausted:
			return
		case codes.Internal:
			// gRPC answers bytes that are no protobuf message with
			// INTERNAL before any handler runs; anything else is a bug.
			if !decodes {
				return
			}
			t.Fatalf("%s: %v; want OK or a code the client can act on", name, err)
		default:
			t.Fatalf("%s: %v; want OK or a code the client can act on", name, err)
		}
		var plan *pb.Plan
		var experts []uint32
		switch name {
		case "RegisterJob":
			var req pb.RegisterJobRequest
			var resp pb.RegisterJobResponse
			if err := errors.Join(proto.Unmarshal(data, &req), proto.Unmarshal(out, &resp)); err != nil {
				t.Fatalf("an accepted RegisterJob: %v", err)
			}
			plan, experts = resp.GetInitialPlan(), req.GetExpertsPerLayer()
		case "ReportLoads":
			var resp pb.ReportLoadsResponse
			if err := proto.Unmarshal(out, &resp); err != nil {
				t.Fatal(err)
			}
			plan, experts = resp.GetPlan(), fuzzJob.GetExpertsPerLayer()
		default:
			plan = &pb.Plan{}
			if err := proto.Unmarshal(out, plan); err != nil {
				t.Fatal(err)
			}
			experts = fuzzJob.GetExpertsPerLayer()
		}
		if plan.GetJobId() != "fuzz" && name != "RegisterJob" {
			t.Fatalf("%s answered the plan of job %q", name, plan.GetJobId())
		}
		topo := sdk.Topology{WorldSize: int(plan.GetWorldSize()), SlotsPerRank: int(plan.GetSlotsPerRank())}
		if len(plan.GetLayers()) != len(experts) {
			t.Fatalf("%s: a plan of %d layers for a job of %d", name, len(plan.GetLayers()), len(experts))
		}
		for l, lp := range plan.GetLayers() {
			if err := sdk.ValidateSlots(sdk.IntsFromProto(lp.GetSlots()), int(experts[l]), topo); err != nil {
				t.Fatalf("%s: layer %d: %v", name, l, err)
			}
		}
	})
}

// fuzzSlots is the slot count of a decoded registration, 0 when it has no
// valid shape.
func fuzzSlots(req *pb.RegisterJobRequest) uint64 {
	t := req.GetTopology()
	return uint64(len(req.GetExpertsPerLayer())) * uint64(t.GetWorldSize()) * uint64(t.GetSlotsPerRank())
}

// fuzzServer serves a fresh planner over an in-memory connection, as New
// builds it, for one input.
func fuzzServer(t *testing.T) *grpc.ClientConn {
	gs, _ := New(planner.New(staticStrategies{}, nil, nil), nil)
	lis := bufconn.Listen(1 << 20)
	served := make(chan error, 1)
	go func() { served <- gs.Serve(lis) }()
	conn, err := grpc.NewClient("passthrough:///fuzz",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = conn.Close()
		gs.Stop()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return conn
}
