package planner

import (
	"context"
	"errors"
	"strings"
	"testing"

	pb "github.com/swiftmoe/swiftmoe/bridge/gen/swiftmoe/v1"
	"github.com/swiftmoe/swiftmoe/plugins/sdk"
	"github.com/swiftmoe/swiftmoe/sidecar/internal/discover"
)

// fakeHardware serves a fixed report (or error) and counts calls.
type fakeHardware struct {
	rep   *discover.Report
	stale bool
	err   error
	calls int
	fresh []bool // what each call asked for
}

func (h *fakeHardware) Report(ctx context.Context, fresh bool) (*discover.Report, bool, error) {
	h.calls++
	h.fresh = append(h.fresh, fresh)
	return h.rep, h.stale, h.err
}

// gpuReport is a node of GPUs with the given free memory, NVLink4 x18 and
// a 400 Gb/s RDMA port.
func gpuReport(free ...uint64) *discover.Report {
	r := &discover.Report{}
	for i, f := range free {
		r.GPUs = append(r.GPUs, discover.GPU{Index: i, MemoryFreeBytes: f})
	}
	r.Defaults = discover.Defaults{
		IntraNodeBandwidth: 450e9, IntraNodeSource: "NVLink4 x18 links (slowest GPU 0)",
		InterNodeBandwidth: 50e9, InterNodeSource: "RDMA mlx5_0 port 1 at 400 Gb/s",
	}
	return r
}

func hasLine(lines []string, prefix string) string {
	for _, l := range lines {
		if strings.HasPrefix(l, prefix) {
			return l
		}
	}
	return ""
}

func TestRegisterFillsSlotsAndBandwidthFromDiscovery(t *testing.T) {
	s := New(&fakeStrategies{}, nil, nil)
	// One slot of one layer: 2 (weights+grads) x 1<<20 elements x 2 bytes = 4 MiB;
	// two layers -> 8 MiB per slot. 20% of the smallest free (200 MiB) = 40 MiB -> 5 slots.
	hw := &fakeHardware{rep: gpuReport(1<<30, 200<<20)}
	if err := s.SetHardware(hw, 0.2); err != nil {
		t.Fatal(err)
	}
	req := goodRegister()
	req.Topology.SlotsPerRank = 0
	req.ExpertParamNumel = []uint64{1 << 20}
	req.ExpertsPerLayer = []uint32{6, 16}
	resp, err := s.RegisterJob(ctxT(t), req)
	if err != nil {
		t.Fatal(err)
	}
	topo := resp.GetTopology()
	if topo.GetSlotsPerRank() != 5 || topo.GetIntraNodeBandwidth() != 450e9 || topo.GetInterNodeBandwidth() != 50e9 {
		t.Fatalf("topology in force: %v; want 5 slots and the discovered bandwidths", topo)
	}
	if l := hasLine(resp.GetDefaults(), "slots_per_rank = 5: "); !strings.Contains(l, "GPU 1") {
		t.Errorf("defaults %q: want a slots line naming the GPU with the least free memory", resp.GetDefaults())
	}
	if l := hasLine(resp.GetDefaults(), "inter_node_bandwidth = 50.0 GB/s: "); !strings.Contains(l, "RDMA") {
		t.Errorf("defaults %q: want the inter-node bandwidth and its source", resp.GetDefaults())
	}
	// The plan and the job use the filled topology: 4 ranks x 5 slots.
	for l, lp := range resp.GetInitialPlan().GetLayers() {
		if got := len(lp.GetSlots()); got != 20 {
			t.Errorf("layer %d: %d slots, want 20", l, got)
		}
	}
	var seen sdk.Topology
	s.strategies.(*fakeStrategies).plan = func(_ context.Context, _ string, r *sdk.Request) (*sdk.Response, error) {
		seen = r.Topology
		return staticResponse(r), nil
	}
	report(t, s, "job-1", 0, make([]uint64, 6), make([]uint64, 16))
	if seen.SlotsPerRank != 5 || seen.IntraNodeBandwidth != 450e9 {
		t.Errorf("the strategy saw %+v; want the filled topology", seen)
	}
	if len(hw.fresh) != 1 || !hw.fresh[0] {
		t.Errorf("discovery calls asked fresh=%v; slots need a recent report", hw.fresh)
	}
	// Bandwidths alone take whatever report the cache holds.
	req2 := goodRegister()
	req2.JobId = "job-2"
	if _, err := s.RegisterJob(ctxT(t), req2); err != nil {
		t.Fatal(err)
	}
	if len(hw.fresh) != 2 || hw.fresh[1] {
		t.Errorf("discovery calls asked fresh=%v; bandwidths alone need no fresh report", hw.fresh)
	}
	// The request itself is not modified.
	if req.Topology.SlotsPerRank != 0 || req.Topology.IntraNodeBandwidth != 0 {
		t.Errorf("RegisterJob changed the caller's request: %v", req.Topology)
	}
}

func TestRegisterKeepsWhatTheJobSets(t *testing.T) {
	s := New(&fakeStrategies{}, nil, nil)
	hw := &fakeHardware{rep: gpuReport(1 << 40)}
	if err := s.SetHardware(hw, 0.2); err != nil {
		t.Fatal(err)
	}
	req := goodRegister()
	req.Topology.IntraNodeBandwidth, req.Topology.InterNodeBandwidth = 1e9, 2e9
	resp, err := s.RegisterJob(ctxT(t), req)
	if err != nil {
		t.Fatal(err)
	}
	if topo := resp.GetTopology(); topo.GetSlotsPerRank() != 2 || topo.GetIntraNodeBandwidth() != 1e9 || topo.GetInterNodeBandwidth() != 2e9 {
		t.Errorf("topology in force %v: want the request's values", topo)
	}
	if len(resp.GetDefaults()) != 0 || hw.calls != 0 {
		t.Errorf("defaults %q after %d discoveries: want none for a job that sets everything", resp.GetDefaults(), hw.calls)
	}
}

func TestAutoSlotsBounds(t *testing.T) {
	for _, c := range []struct {
		name     string
		rep      *discover.Report
		experts  []uint32
		want     uint32
		whyParts []string
	}{
		{"no GPU: the default, capped at the experts", &discover.Report{}, []uint32{2, 3}, 3, []string{"no GPU found"}},
		{"no GPU: 4 slots", &discover.Report{}, []uint32{8, 16}, 4, []string{"default of 4"}},
		// 16 MiB free x 0.2 < one 8 MiB slot: 1, raised to ceil(16/4) = 4.
		{"too little memory: raised to hold the experts", gpuReport(16 << 20), []uint32{8, 16}, 4, []string{"raised to 4", "16 experts on 4 ranks"}},
		{"plenty of memory: capped at the experts", gpuReport(1 << 40), []uint32{8, 16}, 16, []string{"capped at the 16 experts"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := New(&fakeStrategies{}, nil, nil)
			if err := s.SetHardware(&fakeHardware{rep: c.rep}, 0.2); err != nil {
				t.Fatal(err)
			}
			req := goodRegister()
			req.Topology.SlotsPerRank = 0
			req.ExpertParamNumel = []uint64{1 << 20}
			req.ExpertsPerLayer = c.experts
			resp, err := s.RegisterJob(ctxT(t), req)
			if err != nil {
				t.Fatal(err)
			}
			if got := resp.GetTopology().GetSlotsPerRank(); got != c.want {
				t.Errorf("slots %d, want %d (defaults %q)", got, c.want, resp.GetDefaults())
			}
			line := hasLine(resp.GetDefaults(), "slots_per_rank = ")
			for _, w := range c.whyParts {
				if !strings.Contains(line, w) {
					t.Errorf("slots line %q: want %q", line, w)
				}
			}
		})
	}
}

func TestAutoSlotsNeedsDiscovery(t *testing.T) {
	for _, c := range []struct {
		name string
		hw   Hardware
		want string
	}{
		{"discovery off", nil, "discovery is off"},
		{"discovery failed", &fakeHardware{err: errors.New("nvml hung")}, "hardware discovery failed (nvml hung)"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := New(&fakeStrategies{}, nil, nil)
			if err := s.SetHardware(c.hw, 0.2); err != nil {
				t.Fatal(err)
			}
			req := goodRegister()
			req.Topology.SlotsPerRank = 0
			_, err := s.RegisterJob(ctxT(t), req)
			if err == nil || !strings.Contains(err.Error(), "topology.slots_per_rank") || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err %v: want one naming topology.slots_per_rank and %q", err, c.want)
			}
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Errorf("err %T: want a *ValidationError (InvalidArgument on the wire)", err)
			}
			// A job that gives its slots registers, with bandwidths left unknown.
			resp, err := s.RegisterJob(ctxT(t), goodRegister())
			if err != nil || resp.GetTopology().GetIntraNodeBandwidth() != 0 || len(resp.GetDefaults()) != 0 {
				t.Fatalf("explicit slots without discovery: %v %v", resp.GetTopology(), err)
			}
		})
	}
}

func TestAutoSlotsWithInvalidJobReportsEveryProblem(t *testing.T) {
	s := New(&fakeStrategies{}, nil, nil)
	hw := &fakeHardware{rep: gpuReport(1 << 40)}
	if err := s.SetHardware(hw, 0.2); err != nil {
		t.Fatal(err)
	}
	req := goodRegister()
	req.Topology.SlotsPerRank = 0
	req.BytesPerParam = 0
	_, err := s.RegisterJob(ctxT(t), req)
	if err == nil || !strings.Contains(err.Error(), "bytes_per_param") || !strings.Contains(err.Error(), "topology.slots_per_rank: 0 lets the sidecar choose") {
		t.Fatalf("err %v: want both the bytes_per_param problem and why slots were not chosen", err)
	}
	// current_slots describe a placement of a known slot count: 0 is refused.
	req = goodRegister()
	req.CurrentSlots = []*pb.LayerSlots{{Slots: make([]uint32, 8)}, {Slots: make([]uint32, 8)}}
	req.Topology.SlotsPerRank = 0
	if _, err := s.RegisterJob(ctxT(t), req); err == nil || !strings.Contains(err.Error(), "no current_slots") {
		t.Fatalf("slots 0 with current_slots: err %v", err)
	}
}

func TestAutoSlotsFromStaleReportSaysSo(t *testing.T) {
	s := New(&fakeStrategies{}, nil, nil)
	if err := s.SetHardware(&fakeHardware{rep: gpuReport(1 << 30), stale: true}, 0.2); err != nil {
		t.Fatal(err)
	}
	req := goodRegister()
	req.Topology.SlotsPerRank = 0
	resp, err := s.RegisterJob(ctxT(t), req)
	if err != nil {
		t.Fatal(err)
	}
	if l := hasLine(resp.GetDefaults(), "slots_per_rank = "); !strings.Contains(l, "earlier discovery") {
		t.Errorf("slots line %q: want it to say the report is an earlier one", l)
	}
}

func TestSetHardwareChecksFraction(t *testing.T) {
	s := New(&fakeStrategies{}, nil, nil)
	for _, f := range []float64{0, -0.1, 1.5} {
		if err := s.SetHardware(&fakeHardware{}, f); err == nil || !strings.Contains(err.Error(), "(0, 1]") {
			t.Errorf("fraction %g: err %v", f, err)
		}
	}
	if err := s.SetHardware(nil, 0); err != nil {
		t.Errorf("turning discovery off: %v", err)
	}
}
