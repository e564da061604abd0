package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	pb "github.com/swiftmoe/swiftmoe/bridge/gen/swiftmoe/v1"
	"github.com/swiftmoe/swiftmoe/plugins/sdk"
	"github.com/swiftmoe/swiftmoe/sidecar/internal/testbin"
)

func registerReq(id, strategy string, opts map[string]string) *pb.RegisterJobRequest {
	return &pb.RegisterJobRequest{
		JobId:            id,
		Topology:         &pb.Topology{WorldSize: 4, SlotsPerRank: 4, RanksPerNode: 2},
		ExpertsPerLayer:  []uint32{8, 8},
		ExpertParamNumel: []uint64{4096},
		BytesPerParam:    2,
		Strategy:         strategy,
		StrategyOptions:  opts,
	}
}

func reportReq(id string, it uint64) *pb.ReportLoadsRequest {
	return &pb.ReportLoadsRequest{JobId: id, Iteration: it, Layers: []*pb.LayerLoads{
		{Tokens: []uint64{900, 50, 50, 50, 20, 20, 10, 10}},
		{Tokens: []uint64{100, 100, 100, 100, 100, 100, 100, 100}},
	}}
}

func checkPlan(t *testing.T, p *pb.Plan) {
	t.Helper()
	topo := sdk.Topology{WorldSize: int(p.GetWorldSize()), SlotsPerRank: int(p.GetSlotsPerRank())}
	if len(p.GetLayers()) != 2 {
		t.Fatalf("got %d layers, want 2", len(p.GetLayers()))
	}
	for l, lp := range p.GetLayers() {
		if err := sdk.ValidateSlots(sdk.IntsFromProto(lp.GetSlots()), 8, topo); err != nil {
			t.Errorf("layer %d: %v", l, err)
		}
	}
}

func TestServeLifecycle(t *testing.T) {
	sc := startSidecar(t, "--plugins-dir", binDir, "--metrics-listen", "127.0.0.1:0", "--metrics-per-expert", "--plugin-timeout", "500ms")
	sock, ok := strings.CutPrefix(sc.url, "unix://")
	if !ok {
		t.Fatalf("default address %q is not a unix socket", sc.url)
	}
	for _, c := range []struct {
		path string
		want os.FileMode
	}{{filepath.Dir(sock), 0o700}, {sock, 0o600}} {
		fi, err := os.Stat(c.path)
		if err != nil || fi.Mode().Perm() != c.want {
			t.Errorf("%s: mode %v (%v), want %o", c.path, fi.Mode().Perm(), err, c.want)
		}
	}
	client := sc.client(t)
	ctx := ctxT(t, 60*time.Second)

	// A real strategy plans; the swiftmoe plugin balances the skewed layer.
	if _, err := client.RegisterJob(ctx, registerReq("real", "swiftmoe", nil)); err != nil {
		t.Fatal(err)
	}
	resp, err := client.ReportLoads(ctx, reportReq("real", 0))
	if err != nil {
		t.Fatal(err)
	}
	checkPlan(t, resp.GetPlan())
	if src := resp.GetPlan().GetSource(); src != pb.PlanSource_PLAN_SOURCE_STRATEGY {
		t.Fatalf("swiftmoe: got %v (%s), want STRATEGY", src, resp.GetPlan().GetNote())
	}
	if m := resp.GetPlan().GetLayers()[0].GetMaxOverMean(); m > 1.3 {
		t.Errorf("swiftmoe layer 0 max_over_mean %.3f, want a balanced plan", m)
	}

	// A garbage plan is rejected, the static plan served, and /metrics says so.
	if _, err := client.RegisterJob(ctx, registerReq("bad", "faulty", map[string]string{"mode": "garbage"})); err != nil {
		t.Fatal(err)
	}
	resp, err = client.ReportLoads(ctx, reportReq("bad", 0))
	if err != nil {
		t.Fatal(err)
	}
	checkPlan(t, resp.GetPlan())
	if src := resp.GetPlan().GetSource(); src != pb.PlanSource_PLAN_SOURCE_STATIC_FALLBACK {
		t.Errorf("garbage: got %v, want STATIC_FALLBACK", src)
	}
	url := sc.metricsURL(t)
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"swiftmoe_invalid_plans_rejected_total", map[string]string{"strategy": "faulty", "reason": "invalid_slots"}, 1},
		{"swiftmoe_fallbacks_served_total", map[string]string{"strategy": "faulty"}, 1},
		{"swiftmoe_plugin_restarts_total", map[string]string{"strategy": "faulty"}, 1},
		{"swiftmoe_plugin_restarts_total", map[string]string{"strategy": "swiftmoe"}, 0},
		{"swiftmoe_expert_replicas", map[string]string{"job": "real", "layer": "1"}, 16},
	} {
		got, err := testbin.Scrape(ctx, url, c.name, c.labels)
		if err != nil || got != c.want {
			t.Errorf("%s%v: got %v (%v), want %v", c.name, c.labels, got, err, c.want)
		}
	}

	// Both plugins run as children of the sidecar (the faulty one restarted).
	var plugins []int
	deadline := time.Now().Add(10 * time.Second)
	for len(plugins) < 2 && time.Now().Before(deadline) {
		plugins = sc.plugins(t)
		time.Sleep(20 * time.Millisecond)
	}
	if len(plugins) != 2 {
		t.Fatalf("got plugin pids %v, want 2", plugins)
	}

	if err := sc.stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("exit after SIGTERM: %v, want status 0; stderr:\n%s", err, sc.stderr)
	}
	for _, pid := range plugins {
		if err := testbin.WaitGone(pid, 5*time.Second); err != nil {
			t.Errorf("plugin after SIGTERM: %v", err)
		}
	}
	for _, p := range []string{sock, filepath.Dir(sock)} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s still exists after SIGTERM (%v)", p, err)
		}
	}
}

func TestHangAndKillMidRequest(t *testing.T) {
	sc := startSidecar(t, "--plugins-dir", binDir, "--plugin-timeout", "1s", "--listen", "unix://"+filepath.Join(t.TempDir(), "s.sock"))
	client := sc.client(t)
	ctx := ctxT(t, 60*time.Second)

	// A plugin that hangs past the deadline: fallback in about the deadline.
	if _, err := client.RegisterJob(ctx, registerReq("hang", "faulty", map[string]string{"mode": "hang"})); err != nil {
		t.Fatal(err)
	}
	before := sc.plugins(t)
	start := time.Now()
	resp, err := client.ReportLoads(ctx, reportReq("hang", 0))
	if err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el < time.Second || el > 5*time.Second {
		t.Errorf("hang: answered after %v, want about the 1s plugin timeout", el)
	}
	checkPlan(t, resp.GetPlan())
	if src := resp.GetPlan().GetSource(); src != pb.PlanSource_PLAN_SOURCE_STATIC_FALLBACK || !strings.Contains(resp.GetPlan().GetNote(), "timeout") {
		t.Errorf("hang: got %v (%s), want STATIC_FALLBACK for a timeout", src, resp.GetPlan().GetNote())
	}
	for _, pid := range before {
		if err := testbin.WaitGone(pid, 10*time.Second); err != nil {
			t.Errorf("hung plugin: %v", err)
		}
	}

	// Kill the plugin in the middle of a request.
	marker := filepath.Join(t.TempDir(), "in-flight")
	if _, err := client.RegisterJob(ctx, registerReq("slow", "faulty", map[string]string{"mode": "slow", "delay": "20s", "marker": marker})); err != nil {
		t.Fatal(err)
	}
	type result struct {
		resp *pb.ReportLoadsResponse
		err  error
	}
	done := make(chan result, 1)
	go func() {
		r, err := client.ReportLoads(ctx, reportReq("slow", 0))
		done <- result{r, err}
	}()
	var pid int
	deadline := time.Now().Add(20 * time.Second)
	for pid == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the plugin never received the call")
		}
		if data, err := os.ReadFile(marker); err == nil {
			pid, _ = strconv.Atoi(string(data))
		}
		time.Sleep(5 * time.Millisecond)
	}
	if !slices.Contains(sc.plugins(t), pid) {
		t.Fatalf("pid %d from the plugin is not a child of the sidecar (%v)", pid, sc.plugins(t))
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
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
	if src := r.resp.GetPlan().GetSource(); src != pb.PlanSource_PLAN_SOURCE_STATIC_FALLBACK || !strings.Contains(r.resp.GetPlan().GetNote(), "crash") {
		t.Errorf("kill: got %v (%s), want STATIC_FALLBACK for a crash", src, r.resp.GetPlan().GetNote())
	}
	// The next call is served by a fresh plugin process.
	if _, err := client.RegisterJob(ctx, registerReq("ok", "faulty", nil)); err != nil {
		t.Fatal(err)
	}
	resp, err = client.ReportLoads(ctx, reportReq("ok", 0))
	if err != nil || resp.GetPlan().GetSource() != pb.PlanSource_PLAN_SOURCE_STRATEGY {
		t.Fatalf("after the kill: got %v, %v; want STRATEGY", resp.GetPlan().GetSource(), err)
	}
	if now := sc.plugins(t); len(now) != 1 || now[0] == pid {
		t.Errorf("plugins after restart: got %v, want one new process (killed %d)", now, pid)
	}
	if err := sc.stop(t, syscall.SIGINT); err != nil {
		t.Errorf("exit after SIGINT: %v", err)
	}
}

func TestExitWithParent(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "p.sock")
	out := filepath.Join(dir, "out")
	// The shell starts the sidecar, then becomes `sleep` (exec keeps its
	// pid), so the sleep process is the sidecar's parent.
	script := fmt.Sprintf("%q serve --exit-with-parent --plugins-dir %q --listen unix://%s >%q 2>&1 & echo $!; exec sleep 60", sidecarBin, binDir, sock, out)
	parent := exec.Command("sh", "-c", script)
	stdout, _ := startParent(t, parent)
	var pid int
	if _, err := fmt.Fscan(stdout, &pid); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if data, _ := os.ReadFile(out); strings.Contains(string(data), "listening on") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the sidecar never listened")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := parent.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := testbin.WaitGone(pid, 10*time.Second); err != nil {
		data, _ := os.ReadFile(out)
		_ = syscall.Kill(pid, syscall.SIGKILL)
		t.Fatalf("sidecar after its parent died: %v\n%s", err, data)
	}
	deadline = time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(sock); os.IsNotExist(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("socket %s left behind", sock)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if data, _ := os.ReadFile(out); !strings.Contains(string(data), "parent process died") {
		t.Errorf("log lacks the reason:\n%s", data)
	}
}

func TestServeStartupErrors(t *testing.T) {
	tests := []struct {
		args []string
		code int
		want string
	}{
		// A bad command line prints the usage and exits 2.
		{[]string{"--listen", "tcp://0.0.0.0:0"}, 2, "not a loopback address"},
		{[]string{"--listen", "unix://relative.sock"}, 2, "Usage:"},
		{[]string{"--metrics-listen", "0.0.0.0:0"}, 2, "not a loopback address"},
		{[]string{"--bogus"}, 2, "Usage:"},
		// What the machine refuses exits 1.
		{[]string{"--plugins-dir", "/nonexistent-dir"}, 1, "--plugins-dir"},
		{[]string{"--listen", "unix:///nonexistent-dir/s.sock"}, 1, "no such file or directory"},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			ctx := ctxT(t, 30*time.Second)
			args := append([]string{"serve", "--plugins-dir", binDir}, tc.args...)
			out, err := exec.CommandContext(ctx, sidecarBin, args...).CombinedOutput()
			ee, ok := err.(*exec.ExitError)
			if !ok || ee.ExitCode() != tc.code {
				t.Fatalf("got %v, want exit status %d\n%s", err, tc.code, out)
			}
			if !strings.Contains(string(out), tc.want) {
				t.Errorf("output lacks %q:\n%s", tc.want, out)
			}
		})
	}
}

func TestPluginsDieWithKilledSidecar(t *testing.T) {
	sc := startSidecar(t, "--plugins-dir", binDir, "--listen", "unix://"+filepath.Join(t.TempDir(), "k.sock"))
	client := sc.client(t)
	ctx := ctxT(t, 60*time.Second)
	for _, s := range []string{"swiftmoe", "static"} {
		if _, err := client.RegisterJob(ctx, registerReq(s, s, nil)); err != nil {
			t.Fatal(err)
		}
	}
	plugins := sc.plugins(t)
	if len(plugins) != 2 {
		t.Fatalf("got plugin pids %v, want 2", plugins)
	}
	// SIGKILL leaves the sidecar no chance to stop its plugins; the kernel
	// must (parent-death signal).
	if err := sc.stop(t, syscall.SIGKILL); err == nil {
		t.Fatal("SIGKILL: got exit status 0")
	}
	for _, pid := range plugins {
		if err := testbin.WaitGone(pid, 10*time.Second); err != nil {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			t.Errorf("plugin outlived its killed sidecar: %v", err)
		}
	}
}

// TestDiscoveryFillsJobDefaults registers jobs that leave slots_per_rank and
// the link bandwidths 0 with a real sidecar process: with discovery on, the
// topology in force carries slots from this machine's report (the
// no-GPU default here) and every filled value comes with its source; with
// --discover=false, slots 0 is refused with the fix.
func TestDiscoveryFillsJobDefaults(t *testing.T) {
	sc := startSidecar(t, "--plugins-dir", binDir)
	client := sc.client(t)
	ctx := ctxT(t, 30*time.Second)
	req := registerReq("auto", "swiftmoe", nil)
	req.Topology.SlotsPerRank = 0
	resp, err := client.RegisterJob(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	s := resp.GetTopology().GetSlotsPerRank()
	if s < 2 || s > 8 { // ceil(8 experts / 4 ranks) .. 8 experts
		t.Fatalf("slots_per_rank %d: want 2..8", s)
	}
	if want := fmt.Sprintf("slots_per_rank = %d: ", s); !slices.ContainsFunc(resp.GetDefaults(), func(l string) bool { return strings.HasPrefix(l, want) }) {
		t.Errorf("defaults %q: want a line starting %q", resp.GetDefaults(), want)
	}
	if p := resp.GetInitialPlan(); p.GetSlotsPerRank() != s {
		t.Errorf("initial plan has %d slots per rank, the topology %d", p.GetSlotsPerRank(), s)
	}
	rep, err := client.ReportLoads(ctx, reportReq("auto", 0))
	if err != nil {
		t.Fatal(err)
	}
	checkPlan(t, rep.GetPlan())
	if rep.GetPlan().GetSlotsPerRank() != s {
		t.Errorf("plan after a report: %d slots per rank, want %d", rep.GetPlan().GetSlotsPerRank(), s)
	}

	off := startSidecar(t, "--plugins-dir", binDir, "--discover=false")
	_, err = off.client(t).RegisterJob(ctx, req)
	if err == nil || !strings.Contains(err.Error(), "topology.slots_per_rank") || !strings.Contains(err.Error(), "--discover=false") {
		t.Fatalf("slots 0 with discovery off: err %v; want the field and the flag named", err)
	}
}
