package planner

import (
	"context"
	"errors"
	"math"
	"strings"
	"testing"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	pb "github.com/swiftmoe/swiftmoe/bridge/gen/swiftmoe/v1"
	"github.com/swiftmoe/swiftmoe/plugins/sdk"
)

// wideJob is a job of layers layers with worldSize ranks of slots slots and
// as many experts as slots per layer: every part of its cost is at its
// largest for its slot count.
func wideJob(id string, layers, worldSize, slots int) *pb.RegisterJobRequest {
	experts := make([]uint32, layers)
	for l := range experts {
		experts[l] = uint32(worldSize * slots)
	}
	return &pb.RegisterJobRequest{
		JobId:            id,
		Topology:         &pb.Topology{WorldSize: uint32(worldSize), SlotsPerRank: uint32(slots)},
		ExpertsPerLayer:  experts,
		ExpertParamNumel: []uint64{1 << 20},
		BytesPerParam:    2,
		Strategy:         "fake",
	}
}

func TestJobCostLimits(t *testing.T) {
	tests := []struct {
		name string
		req  *pb.RegisterJobRequest
		want []string // nil: accepted
	}{
		// The design's largest job: 64 layers of 256 experts, 256 ranks of 4 slots.
		{"design target", func() *pb.RegisterJobRequest {
			r := wideJob("target", 64, 256, 4)
			for l := range r.ExpertsPerLayer {
				r.ExpertsPerLayer[l] = 256
			}
			return r
		}(), nil},
		// A 225-byte request within every size limit that used to make the
		// sidecar hold over 500 MB, and answer more than 64 MiB.
		{"widest within the size limits", wideJob("wide", 64, 65536, 1), []string{
			"experts_per_layer, topology: 64 layers of world_size 65536 x slots_per_rank 1 (4194304 slots) and 4194304 experts",
			"over the limit of 256 MiB per job", "over the message limit of 64 MiB", "plan fewer layers",
		}},
		// One layer of 4M slots on 65536 ranks: no history to speak of, but
		// the slots alone are over the limit.
		{"many slots", func() *pb.RegisterJobRequest {
			r := wideJob("slots", 1, 65536, 64)
			r.ExpertsPerLayer[0] = 1
			return r
		}(), []string{"(4194304 slots) and 1 experts", "over the limit of 256 MiB per job"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := New(&fakeStrategies{}, nil, nil)
			if tc.want != nil {
				if _, err := s.RegisterJob(ctxT(t), tc.req); err == nil {
					t.Fatal("got success, want the job refused")
				}
			}
			_, err := validateRegister(tc.req, defaultCostLimits, s.knownStrategy)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("got %v, want success", err)
				}
				if m := shapeOf(tc.req).memoryBytes(); m > 32<<20 {
					t.Errorf("the design target costs %s, want well below the per-job limit", mib(m))
				}
				return
			}
			wantProblems(t, err, tc.want)
		})
	}
}

// TestMemoryBudgetAcrossJobs fills a small sidecar-wide budget: a job beyond
// it is refused and registers nothing, re-registering an id frees the job it
// replaces, and a refused registration gives its reservation back.
func TestMemoryBudgetAcrossJobs(t *testing.T) {
	s := New(&fakeStrategies{}, nil, nil)
	cost := shapeOf(goodRegister()).memoryBytes()
	s.limits.total = 3 * cost
	for _, id := range []string{"a", "b", "c"} {
		req := goodRegister()
		req.JobId = id
		if _, err := s.RegisterJob(ctxT(t), req); err != nil {
			t.Fatalf("job %s: %v", id, err)
		}
	}
	req := goodRegister()
	req.JobId = "d"
	_, err := s.RegisterJob(ctxT(t), req)
	if !errors.Is(err, ErrMemoryBudget) || !strings.Contains(err.Error(), "re-register an existing job_id") {
		t.Fatalf("a fourth job: got %v, want ErrMemoryBudget naming the fix", err)
	}
	if _, err := s.GetPlan(ctxT(t), &pb.GetPlanRequest{JobId: "d"}); !errors.Is(err, ErrUnknownJob) {
		t.Errorf("the refused job: got %v, want it unknown", err)
	}
	req.JobId = "b"
	if _, err := s.RegisterJob(ctxT(t), req); err != nil {
		t.Errorf("re-registering b within the budget: %v", err)
	}
	if s.held != 3*cost || s.pending != 0 {
		t.Errorf("held %d, pending %d bytes; want %d and 0", s.held, s.pending, 3*cost)
	}
}

// TestUnsendableRegistrationChangesNothing registers a job whose response
// cannot be sent, because the strategy's description makes it larger than
// the message limit or because the caller is gone: the request fails and
// the job of that id in force, if any, stays.
func TestUnsendableRegistrationChangesNothing(t *testing.T) {
	f := &fakeStrategies{}
	s := New(f, nil, nil)
	if _, err := s.RegisterJob(ctxT(t), goodRegister()); err != nil {
		t.Fatal(err)
	}
	before, _ := s.GetPlan(ctxT(t), &pb.GetPlanRequest{JobId: "job-1"})

	f.description = strings.Repeat("x", MaxMessageBytes)
	for _, id := range []string{"job-1", "job-2"} {
		req := goodRegister()
		req.JobId = id
		req.ExpertsPerLayer = []uint32{8, 8}
		_, err := s.RegisterJob(ctxT(t), req)
		if err == nil || !errors.Is(err, ErrResponseTooLarge) || !strings.Contains(err.Error(), "over the message limit of 64 MiB") {
			t.Fatalf("%s with a %d-byte strategy description: got %v, want ErrResponseTooLarge", id, len(f.description), err)
		}
	}
	f.description = ""
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	req := goodRegister()
	req.JobId = "job-3"
	if _, err := s.RegisterJob(gone, req); !errors.Is(err, context.Canceled) {
		t.Fatalf("a registration whose caller is gone: got %v, want context.Canceled", err)
	}

	if p, err := s.GetPlan(ctxT(t), &pb.GetPlanRequest{JobId: "job-1"}); err != nil || p != before {
		t.Errorf("job-1 after refused re-registrations: got %v (%v), want the plan of the first registration", p, err)
	}
	for _, id := range []string{"job-2", "job-3"} {
		if _, err := s.GetPlan(ctxT(t), &pb.GetPlanRequest{JobId: id}); !errors.Is(err, ErrUnknownJob) {
			t.Errorf("%s: got %v, want it unknown", id, err)
		}
	}
	if s.pending != 0 || s.held != shapeOf(goodRegister()).memoryBytes() {
		t.Errorf("held %d, pending %d bytes after refusals; want one job's and 0", s.held, s.pending)
	}
}

// TestResponsesWithinTheirBound builds the largest messages of a job (the
// widest rank ids, shard offsets and remap byte counts, the longest iteration
// and a note past its cut) and checks that they fit the bounds registration
// checks against MaxMessageBytes.
func TestResponsesWithinTheirBound(t *testing.T) {
	f := &fakeStrategies{plan: func(context.Context, string, *sdk.Request) (*sdk.Response, error) {
		return nil, errors.New(strings.Repeat("é", MaxNoteBytes))
	}}
	s := New(f, nil, nil)
	req := wideJob(strings.Repeat("j", MaxJobIDLen), 2, MaxWorldSize, 1)
	req.ExpertParamNumel = []uint64{MaxParamNumel}
	req.BytesPerParam = MaxBytesPerParam
	reg, err := s.RegisterJob(ctxT(t), req)
	if err != nil {
		t.Fatal(err)
	}
	sh := shapeOf(req)
	fixed := uint64(proto.Size(reg.GetStrategy()) + proto.Size(reg.GetTopology()) + 2*8)
	if got, bound := uint64(proto.Size(reg)), sh.registerWireBytes()+fixed; got > bound {
		t.Errorf("RegisterJobResponse: %d bytes, over its bound of %d", got, bound)
	}
	if fixed > registerAllowance {
		t.Errorf("the parts registerAllowance covers take %d bytes, over it", fixed)
	}
	rep := &pb.ReportLoadsRequest{JobId: req.JobId, Iteration: math.MaxUint64 - 1}
	for _, e := range req.ExpertsPerLayer {
		tokens := make([]uint64, e)
		for i := range tokens {
			tokens[i] = math.MaxUint64
		}
		rep.Layers = append(rep.Layers, &pb.LayerLoads{Tokens: tokens})
	}
	resp, err := s.ReportLoads(ctxT(t), rep)
	if err != nil {
		t.Fatal(err)
	}
	note := resp.GetPlan().GetNote()
	if len(note) > MaxNoteBytes || !utf8.ValidString(note) || !strings.HasSuffix(note, "[cut]") {
		t.Errorf("fallback note of %d bytes (valid UTF-8: %v), want it cut to at most %d", len(note), utf8.ValidString(note), MaxNoteBytes)
	}
	if got, bound := uint64(proto.Size(resp)), sh.planWireBytes()+6; got > bound {
		t.Errorf("ReportLoadsResponse: %d bytes, over its bound of %d", got, bound)
	}
}
