package server

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	pb "github.com/swiftmoe/swiftmoe/bridge/gen/swiftmoe/v1"
	"github.com/swiftmoe/swiftmoe/plugins/sdk"
	"github.com/swiftmoe/swiftmoe/sidecar/internal/host"
	"github.com/swiftmoe/swiftmoe/sidecar/internal/metrics"
	"github.com/swiftmoe/swiftmoe/sidecar/internal/planner"
	"github.com/swiftmoe/swiftmoe/sidecar/internal/testbin"
)

var faultyBin string

func TestMain(m *testing.M) { os.Exit(runMain(m)) }

func runMain(m *testing.M) int {
	flag.Parse()
	if testbin.Fuzzing() {
		// FuzzPlannerWire needs no plugin, and every fuzz worker runs
		// TestMain.
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "server-test-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = os.RemoveAll(dir) }()
	if faultyBin, err = testbin.Build(dir, testbin.FaultyPlugin, "faulty"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// env is a sidecar served in process on a unix socket, with real plugin
// processes and a /metrics endpoint.
type env struct {
	client     pb.PlannerClient
	health     healthpb.HealthClient
	host       *host.Host
	metricsURL string
}

func start(t *testing.T, timeout time.Duration) *env {
	t.Helper()
	dir := t.TempDir()
	if err := testbin.Install(dir, faultyBin, "faulty"); err != nil {
		t.Fatal(err)
	}
	log := hclog.New(&hclog.LoggerOptions{Output: os.Stderr, Level: hclog.Warn})
	m := metrics.NewWith(metrics.Options{PerExpert: true})
	h, err := host.New(host.Options{Dir: dir, CallTimeout: timeout, Metrics: m, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	gs, _ := New(planner.New(h, m, log), log)
	ln, err := Listen("unix://"+filepath.Join(t.TempDir(), "s.sock"), false)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- gs.Serve(ln) }()
	ms, err := ServeMetrics("127.0.0.1:0", false, m.Handler())
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(ln.URL, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = conn.Close()
		gs.Stop()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
		_ = ln.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = ms.Shutdown(ctx)
		h.Close()
	})
	return &env{client: pb.NewPlannerClient(conn), health: healthpb.NewHealthClient(conn), host: h,
		metricsURL: "http://" + ms.Addr() + "/metrics"}
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func registerReq(id, mode string, extra ...string) *pb.RegisterJobRequest {
	opts := map[string]string{"mode": mode}
	for i := 0; i+1 < len(extra); i += 2 {
		opts[extra[i]] = extra[i+1]
	}
	return &pb.RegisterJobRequest{
		JobId:            id,
		Topology:         &pb.Topology{WorldSize: 4, SlotsPerRank: 2},
		ExpertsPerLayer:  []uint32{6, 6},
		ExpertParamNumel: []uint64{100},
		BytesPerParam:    2,
		Strategy:         "faulty",
		StrategyOptions:  opts,
	}
}

func reportReq(id string, it uint64) *pb.ReportLoadsRequest {
	return &pb.ReportLoadsRequest{JobId: id, Iteration: it, Layers: []*pb.LayerLoads{
		{Tokens: []uint64{60, 10, 10, 10, 5, 5}}, {Tokens: []uint64{1, 2, 3, 4, 5, 6}},
	}}
}

func checkPlan(t *testing.T, p *pb.Plan) {
	t.Helper()
	topo := sdk.Topology{WorldSize: int(p.GetWorldSize()), SlotsPerRank: int(p.GetSlotsPerRank())}
	if len(p.GetLayers()) != 2 {
		t.Fatalf("got %d layers, want 2", len(p.GetLayers()))
	}
	for l, lp := range p.GetLayers() {
		if err := sdk.ValidateSlots(sdk.IntsFromProto(lp.GetSlots()), 6, topo); err != nil {
			t.Errorf("layer %d: %v", l, err)
		}
	}
}

func TestPlannerOverGRPC(t *testing.T) {
	e := start(t, 5*time.Second)
	ctx := ctxT(t, 30*time.Second)
	hr, err := e.health.Check(ctx, &healthpb.HealthCheckRequest{Service: pb.Planner_ServiceDesc.ServiceName})
	if err != nil || hr.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health: got %v, %v; want SERVING", hr.GetStatus(), err)
	}
	list, err := e.client.ListStrategies(ctx, &pb.ListStrategiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.GetStrategies()) != 1 || list.GetStrategies()[0].GetName() != "faulty" || len(list.GetStrategies()[0].GetSha256()) != 64 {
		t.Fatalf("ListStrategies: got %v, want faulty with its sha256", list)
	}
	reg, err := e.client.RegisterJob(ctx, registerReq("j1", "ok"))
	if err != nil {
		t.Fatal(err)
	}
	if got := reg.GetShardLayout()[0].GetRanges()[3]; got.GetOffset() != 75 || got.GetLength() != 25 {
		t.Errorf("rank 3 shard: got %v, want offset 75 length 25", got)
	}
	checkPlan(t, reg.GetInitialPlan())
	resp, err := e.client.ReportLoads(ctx, reportReq("j1", 0))
	if err != nil {
		t.Fatal(err)
	}
	p := resp.GetPlan()
	checkPlan(t, p)
	if p.GetSource() != pb.PlanSource_PLAN_SOURCE_STRATEGY || p.GetIteration() != 1 {
		t.Errorf("got source %v iteration %d, want STRATEGY and 1", p.GetSource(), p.GetIteration())
	}
	// 100 elements over 4 ranks: every rank owns 25; 2 slots per rank,
	// 2 layers, 2 bytes: recv = 2*2*(100-25)*2 = 600, send = 2*(3*2)*25*2 = 600.
	if got := fmt.Sprint(p.GetRemap().GetRecvBytes(), p.GetRemap().GetSendBytes(), p.GetRemap().GetTotalBytes()); got != "[600 600 600 600] [600 600 600 600] 2400" {
		t.Errorf("remap: got %s", got)
	}
	cur, err := e.client.GetPlan(ctx, &pb.GetPlanRequest{JobId: "j1"})
	if err != nil || cur.GetIteration() != 1 {
		t.Errorf("GetPlan: got iteration %d, %v; want 1", cur.GetIteration(), err)
	}
	v, err := testbin.Scrape(ctx, e.metricsURL, "swiftmoe_expert_replicas", map[string]string{"job": "j1", "layer": "0"})
	if err != nil || v != 8 {
		t.Errorf("replicas of layer 0 in /metrics: got %v, %v; want 8 slots in all", v, err)
	}
}

func TestErrorCodes(t *testing.T) {
	e := start(t, 5*time.Second)
	ctx := ctxT(t, 30*time.Second)
	if _, err := e.client.RegisterJob(ctx, registerReq("j1", "ok")); err != nil {
		t.Fatal(err)
	}
	bad := registerReq("j2", "ok")
	bad.Topology.WorldSize = 0
	bad.Strategy = "nope"
	tests := []struct {
		name string
		call func() error
		code codes.Code
		want []string
	}{
		{"invalid register", func() error { _, err := e.client.RegisterJob(ctx, bad); return err },
			codes.InvalidArgument, []string{"topology.world_size", "unknown strategy \"nope\"", "available strategies: faulty"}},
		{"unknown option", func() error {
			_, err := e.client.RegisterJob(ctx, registerReq("j3", "ok", "speed", "11"))
			return err
		}, codes.InvalidArgument, []string{`unknown option "speed"`, "mode, delay, marker, mode_file"}},
		{"unknown job", func() error { _, err := e.client.ReportLoads(ctx, reportReq("zz", 0)); return err },
			codes.NotFound, []string{"call RegisterJob first"}},
		{"get unknown job", func() error { _, err := e.client.GetPlan(ctx, &pb.GetPlanRequest{JobId: "zz"}); return err },
			codes.NotFound, []string{"call RegisterJob first"}},
		{"bad loads", func() error {
			req := reportReq("j1", 0)
			req.Layers[1].Tokens = req.Layers[1].Tokens[:2]
			_, err := e.client.ReportLoads(ctx, req)
			return err
		}, codes.InvalidArgument, []string{"layers[1].tokens: 2 entries, want one per expert of the layer (6)"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			if got := status.Code(err); got != tc.code {
				t.Fatalf("got code %v (%v), want %v", got, err, tc.code)
			}
			for _, w := range tc.want {
				if !strings.Contains(status.Convert(err).Message(), w) {
					t.Errorf("message %q does not contain %q", status.Convert(err).Message(), w)
				}
			}
		})
	}
}

func TestPluginFailuresServeFallback(t *testing.T) {
	tests := []struct {
		mode, reason string
		invalid      bool
		restarted    bool
	}{
		{"crash", "crash", false, true},
		{"hang", "timeout", false, true},
		{"garbage", "invalid_slots", true, true},
		{"short", "layer_count", true, true},
		// An error answer is the job's, not the process's: the plugin,
		// which other jobs share, keeps serving.
		{"error", "error", false, false},
	}
	for _, tc := range tests {
		t.Run(tc.mode, func(t *testing.T) {
			e := start(t, 400*time.Millisecond)
			ctx := ctxT(t, 30*time.Second)
			// A healthy job first, so the failing job's fallback is its
			// static plan while the healthy job keeps its own.
			if _, err := e.client.RegisterJob(ctx, registerReq("bad", tc.mode)); err != nil {
				t.Fatal(err)
			}
			pid := e.host.PID("faulty")
			startT := time.Now()
			resp, err := e.client.ReportLoads(ctx, reportReq("bad", 0))
			if err != nil {
				t.Fatalf("ReportLoads: %v; a plugin failure must never reach the caller", err)
			}
			if el := time.Since(startT); el > 3*time.Second {
				t.Errorf("fallback took %v", el)
			}
			p := resp.GetPlan()
			checkPlan(t, p)
			if p.GetSource() != pb.PlanSource_PLAN_SOURCE_STATIC_FALLBACK || !strings.Contains(p.GetNote(), tc.reason) {
				t.Errorf("got source %v note %q, want STATIC_FALLBACK naming %s", p.GetSource(), p.GetNote(), tc.reason)
			}
			if p.GetFallbackReason() != tc.reason {
				t.Errorf("fallback_reason: got %q, want %q", p.GetFallbackReason(), tc.reason)
			}
			if tc.restarted {
				if err := testbin.WaitGone(pid, 10*time.Second); err != nil {
					t.Errorf("failed plugin: %v", err)
				}
			}
			for _, c := range []struct {
				name string
				want float64
			}{
				{"swiftmoe_plugin_restarts_total", map[bool]float64{true: 1, false: 0}[tc.restarted]},
				{"swiftmoe_fallbacks_served_total", 1},
				{"swiftmoe_invalid_plans_rejected_total", map[bool]float64{true: 1, false: 0}[tc.invalid]},
			} {
				v, err := testbin.Scrape(ctx, e.metricsURL, c.name, map[string]string{"strategy": "faulty", "reason": tc.reason})
				if err != nil || v != c.want {
					t.Errorf("%s: got %v, %v; want %v", c.name, v, err, c.want)
				}
			}
			// A healthy job on the same strategy gets a fresh process and
			// a strategy plan.
			if _, err := e.client.RegisterJob(ctx, registerReq("good", "ok")); err != nil {
				t.Fatal(err)
			}
			resp, err = e.client.ReportLoads(ctx, reportReq("good", 0))
			if err != nil {
				t.Fatal(err)
			}
			if got := resp.GetPlan().GetSource(); got != pb.PlanSource_PLAN_SOURCE_STRATEGY {
				t.Errorf("after restart: got %v, want STRATEGY", got)
			}
			if npid := e.host.PID("faulty"); npid == 0 || (npid == pid) == tc.restarted {
				t.Errorf("pid after the failure: got %d, old %d; want a new process only after a restart (%v)", npid, pid, tc.restarted)
			}
		})
	}
}

func TestLastValidAfterSuccess(t *testing.T) {
	e := start(t, 400*time.Millisecond)
	ctx := ctxT(t, 30*time.Second)
	modeFile := filepath.Join(t.TempDir(), "mode")
	setMode := func(m string) {
		if err := os.WriteFile(modeFile, []byte(m), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	setMode("ok")
	if _, err := e.client.RegisterJob(ctx, registerReq("j", "ok", "mode_file", modeFile)); err != nil {
		t.Fatal(err)
	}
	valid, err := e.client.ReportLoads(ctx, reportReq("j", 0))
	if err != nil || valid.GetPlan().GetSource() != pb.PlanSource_PLAN_SOURCE_STRATEGY {
		t.Fatalf("got %v, %v; want a STRATEGY plan", valid.GetPlan().GetSource(), err)
	}
	for _, mode := range []string{"garbage", "hang", "crash"} {
		setMode(mode)
		resp, err := e.client.ReportLoads(ctx, reportReq("j", 1))
		if err != nil {
			t.Fatalf("mode %s: %v", mode, err)
		}
		got := resp.GetPlan()
		checkPlan(t, got)
		if got.GetSource() != pb.PlanSource_PLAN_SOURCE_LAST_VALID || !strings.Contains(got.GetNote(), "last valid plan") {
			t.Errorf("mode %s: got %v (%s), want LAST_VALID", mode, got.GetSource(), got.GetNote())
		}
		for l := range got.GetLayers() {
			if fmt.Sprint(got.GetLayers()[l].GetSlots()) != fmt.Sprint(valid.GetPlan().GetLayers()[l].GetSlots()) {
				t.Errorf("mode %s layer %d: slots %v differ from the last valid %v", mode, l, got.GetLayers()[l].GetSlots(), valid.GetPlan().GetLayers()[l].GetSlots())
			}
		}
	}
	setMode("ok")
	resp, err := e.client.ReportLoads(ctx, reportReq("j", 2))
	if err != nil || resp.GetPlan().GetSource() != pb.PlanSource_PLAN_SOURCE_STRATEGY {
		t.Fatalf("after recovery: got %v, %v; want STRATEGY", resp.GetPlan().GetSource(), err)
	}
	if got := e.host.Restarts("faulty"); got != 3 {
		t.Errorf("restarts: got %d, want 3", got)
	}
}

func TestKillPluginMidRequest(t *testing.T) {
	e := start(t, 20*time.Second)
	ctx := ctxT(t, 60*time.Second)
	marker := filepath.Join(t.TempDir(), "in-flight")
	if _, err := e.client.RegisterJob(ctx, registerReq("slow", "slow", "delay", "15s", "marker", marker)); err != nil {
		t.Fatal(err)
	}
	type result struct {
		resp *pb.ReportLoadsResponse
		err  error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := e.client.ReportLoads(ctx, reportReq("slow", 0))
		done <- result{resp, err}
	}()
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := os.Stat(marker); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the plugin never received the call")
		}
		time.Sleep(5 * time.Millisecond)
	}
	pid := e.host.PID("faulty")
	if err := testbin.Kill(pid); err != nil {
		t.Fatal(err)
	}
	var r result
	select {
	case r = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("ReportLoads did not return within 10s of the plugin's death")
	}
	if r.err != nil {
		t.Fatalf("ReportLoads: %v", r.err)
	}
	checkPlan(t, r.resp.GetPlan())
	if got := r.resp.GetPlan().GetSource(); got != pb.PlanSource_PLAN_SOURCE_STATIC_FALLBACK {
		t.Errorf("got %v, want STATIC_FALLBACK", got)
	}
	if _, err := e.client.RegisterJob(ctx, registerReq("ok", "ok")); err != nil {
		t.Fatal(err)
	}
	resp, err := e.client.ReportLoads(ctx, reportReq("ok", 0))
	if err != nil || resp.GetPlan().GetSource() != pb.PlanSource_PLAN_SOURCE_STRATEGY {
		t.Fatalf("after the kill: got %v, %v; want a STRATEGY plan", resp.GetPlan().GetSource(), err)
	}
	if npid := e.host.PID("faulty"); npid == pid || npid == 0 {
		t.Errorf("pid after restart: got %d, want a new process (old %d)", npid, pid)
	}
}

func TestConcurrentJobsOverGRPC(t *testing.T) {
	e := start(t, 5*time.Second)
	ctx := ctxT(t, 60*time.Second)
	var wg sync.WaitGroup
	for j := 0; j < 6; j++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("job%d", j)
			if _, err := e.client.RegisterJob(ctx, registerReq(id, "ok")); err != nil {
				t.Error(err)
				return
			}
			for it := uint64(0); it < 20; it++ {
				resp, err := e.client.ReportLoads(ctx, reportReq(id, it))
				if err != nil {
					t.Error(err)
					return
				}
				if resp.GetPlan().GetSource() != pb.PlanSource_PLAN_SOURCE_STRATEGY || resp.GetPlan().GetJobId() != id {
					t.Errorf("job %s: got %v for %s", id, resp.GetPlan().GetSource(), resp.GetPlan().GetJobId())
				}
			}
		}()
	}
	wg.Wait()
}
