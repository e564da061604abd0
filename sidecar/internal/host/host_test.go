package host

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/swiftmoe/swiftmoe/plugins/sdk"
	"github.com/swiftmoe/swiftmoe/sidecar/internal/metrics"
	"github.com/swiftmoe/swiftmoe/sidecar/internal/testbin"
)

var faultyBin string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "host-test-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = os.RemoveAll(dir) }()
	faultyBin, err = testbin.Build(dir, testbin.FaultyPlugin, "faulty")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// pluginsDir returns a fresh plugins directory holding the faulty plugin as
// strategy "faulty".
func pluginsDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	copyFile(t, faultyBin, filepath.Join(dir, sdk.BinaryPrefix+"faulty"))
	return dir
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	src, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = src.Close() }()
	dst, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
}

func newHost(t *testing.T, dir string, timeout time.Duration, m *metrics.Metrics) *Host {
	t.Helper()
	h, err := New(Options{Dir: dir, CallTimeout: timeout, Metrics: m,
		Logger: hclog.New(&hclog.LoggerOptions{Output: os.Stderr, Level: hclog.Warn})})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(h.Close)
	return h
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func request(mode string, extra ...string) *sdk.Request {
	opts := map[string]string{"mode": mode}
	for i := 0; i+1 < len(extra); i += 2 {
		opts[extra[i]] = extra[i+1]
	}
	topo := sdk.Topology{WorldSize: 4, SlotsPerRank: 2}
	req := &sdk.Request{Topology: topo, Iteration: 1, Options: opts}
	for l := 0; l < 3; l++ {
		req.Layers = append(req.Layers, sdk.LayerInput{
			Layer: l, NumExperts: 6, Predicted: []float64{1, 2, 3, 4, 5, 6},
			Current: sdk.StaticSlots(6, topo),
		})
	}
	return req
}

func counter(t *testing.T, m *metrics.Metrics, name string, labels map[string]string) float64 {
	t.Helper()
	v, err := testbin.Gathered(m.Registry(), name, labels)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestPlanOK(t *testing.T) {
	dir := pluginsDir(t)
	h := newHost(t, dir, 5*time.Second, nil)
	ctx := testCtx(t)
	req := request("ok")
	resp, err := h.Plan(ctx, "faulty", req)
	if err != nil {
		t.Fatalf("Plan: %v", err)
	}
	if len(resp.Layers) != 3 {
		t.Fatalf("got %d layers, want 3", len(resp.Layers))
	}
	for l, slots := range resp.Layers {
		if err := sdk.ValidateSlots(slots, 6, req.Topology); err != nil {
			t.Errorf("layer %d: %v", l, err)
		}
	}
	info, err := h.Info(ctx, "faulty")
	if err != nil {
		t.Fatalf("Info: %v", err)
	}
	data, err := os.ReadFile(filepath.Join(dir, sdk.BinaryPrefix+"faulty"))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	if got, want := info.SHA256, hex.EncodeToString(sum[:]); got != want {
		t.Errorf("sha256: got %s, want %s", got, want)
	}
	if got, want := info.Path, filepath.Join(dir, sdk.BinaryPrefix+"faulty"); got != want {
		t.Errorf("path: got %s, want %s", got, want)
	}
	if info.Name != "faulty" || len(info.Options) != 4 {
		t.Errorf("info: got name %q with %d options, want faulty with 4", info.Name, len(info.Options))
	}
	if got := h.Restarts("faulty"); got != 0 {
		t.Errorf("restarts: got %d, want 0", got)
	}
}

func TestFailuresRestartPlugin(t *testing.T) {
	tests := []struct {
		mode    string
		reason  Reason
		invalid bool
	}{
		{"crash", ReasonCrash, false},
		{"hang", ReasonTimeout, false},
		{"garbage", ReasonInvalidSlots, true},
		{"short", ReasonLayerCount, true},
	}
	for _, tc := range tests {
		t.Run(tc.mode, func(t *testing.T) {
			m := metrics.New()
			h := newHost(t, pluginsDir(t), 500*time.Millisecond, m)
			ctx := testCtx(t)
			if _, err := h.Info(ctx, "faulty"); err != nil {
				t.Fatalf("Info: %v", err)
			}
			pid := h.PID("faulty")
			if pid == 0 {
				t.Fatal("got pid 0 after start, want the plugin's pid")
			}
			start := time.Now()
			_, err := h.Plan(ctx, "faulty", request(tc.mode))
			var f *Failure
			if !errors.As(err, &f) {
				t.Fatalf("got error %v, want a *Failure", err)
			}
			if f.Reason != tc.reason {
				t.Errorf("reason: got %s, want %s (%v)", f.Reason, tc.reason, err)
			}
			if el := time.Since(start); el > 3*time.Second {
				t.Errorf("failed call took %v, want well under 3s", el)
			}
			if err := testbin.WaitGone(pid, 10*time.Second); err != nil {
				t.Errorf("old plugin: %v", err)
			}
			if got := h.Restarts("faulty"); got != 1 {
				t.Errorf("restarts: got %d, want 1", got)
			}
			if got := counter(t, m, "swiftmoe_plugin_restarts_total", map[string]string{"strategy": "faulty", "reason": string(tc.reason)}); got != 1 {
				t.Errorf("restart metric: got %v, want 1", got)
			}
			wantInvalid := 0.0
			if tc.invalid {
				wantInvalid = 1
			}
			if got := counter(t, m, "swiftmoe_invalid_plans_rejected_total", map[string]string{"strategy": "faulty", "reason": string(tc.reason)}); got != wantInvalid {
				t.Errorf("invalid-plan metric: got %v, want %v", got, wantInvalid)
			}
			if _, err := h.Plan(ctx, "faulty", request("ok")); err != nil {
				t.Fatalf("call after restart: %v", err)
			}
			if npid := h.PID("faulty"); npid == 0 || npid == pid {
				t.Errorf("pid after restart: got %d, want a new process (old %d)", npid, pid)
			}
		})
	}
}

func TestKillMidRequest(t *testing.T) {
	h := newHost(t, pluginsDir(t), 20*time.Second, nil)
	ctx := testCtx(t)
	marker := filepath.Join(t.TempDir(), "in-flight")
	type result struct {
		err error
		d   time.Duration
	}
	done := make(chan result, 1)
	go func() {
		start := time.Now()
		_, err := h.Plan(ctx, "faulty", request("slow", "delay", "15s", "marker", marker))
		done <- result{err, time.Since(start)}
	}()
	var pid int
	deadline := time.Now().Add(15 * time.Second)
	for pid == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the plugin never received the call")
		}
		if data, err := os.ReadFile(marker); err == nil && len(data) > 0 {
			_, _ = fmt.Sscan(string(data), &pid)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := h.PID("faulty"); got != pid {
		t.Fatalf("host pid %d, plugin says %d", got, pid)
	}
	if err := testbin.Kill(pid); err != nil {
		t.Fatal(err)
	}
	var r result
	select {
	case r = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Plan did not return within 10s of the plugin's death")
	}
	var f *Failure
	if !errors.As(r.err, &f) || f.Reason != ReasonCrash {
		t.Fatalf("got %v, want a crash failure", r.err)
	}
	if r.d > 10*time.Second {
		t.Errorf("call took %v; it should end when the plugin dies, not after its 15s sleep", r.d)
	}
	if _, err := h.Plan(ctx, "faulty", request("ok")); err != nil {
		t.Fatalf("call after the kill: %v", err)
	}
	if npid := h.PID("faulty"); npid == pid || npid == 0 {
		t.Errorf("pid after restart: got %d, want a new process (old %d)", npid, pid)
	}
}

func TestCanceledCallerDoesNotRestart(t *testing.T) {
	h := newHost(t, pluginsDir(t), 10*time.Second, nil)
	ctx := testCtx(t)
	if _, err := h.Info(ctx, "faulty"); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	_, err := h.Plan(short, "faulty", request("slow", "delay", "2s"))
	var f *Failure
	if !errors.As(err, &f) || f.Reason != ReasonCanceled {
		t.Fatalf("got %v, want a canceled failure", err)
	}
	if got := h.Restarts("faulty"); got != 0 {
		t.Errorf("restarts: got %d, want 0 (the caller gave up, not the plugin)", got)
	}
}

func TestChecksums(t *testing.T) {
	data, err := os.ReadFile(faultyBin)
	if err != nil {
		t.Fatal(err)
	}
	good := sha256.Sum256(data)
	bad := sha256.Sum256([]byte("something else"))
	name := sdk.BinaryPrefix + "faulty"
	tests := []struct {
		name    string
		sums    string
		wantErr string
		reason  string
	}{
		{"listed and matching", hex.EncodeToString(good[:]) + "  " + name + "\n", "", ""},
		{"listed binary mode", hex.EncodeToString(good[:]) + " *" + name + "\n", "", ""},
		{"listed with another hash", hex.EncodeToString(bad[:]) + "  " + name + "\n", "does not have the SHA-256", RefusedChecksum},
		{"not listed", hex.EncodeToString(good[:]) + "  " + sdk.BinaryPrefix + "other\n", "not listed in SHA256SUMS", RefusedNotListed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := pluginsDir(t)
			if err := os.WriteFile(filepath.Join(dir, SumsFile), []byte(tc.sums), 0o644); err != nil {
				t.Fatal(err)
			}
			m := metrics.New()
			h := newHost(t, dir, 5*time.Second, m)
			_, err := h.Plan(testCtx(t), "faulty", request("ok"))
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("got %v, want a plan", err)
				}
				return
			}
			var f *Failure
			if !errors.As(err, &f) || f.Reason != ReasonRefused || !errors.Is(err, ErrChecksum) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("got %v, want a refused checksum failure containing %q", err, tc.wantErr)
			}
			if got := counter(t, m, "swiftmoe_plugin_refused_total", map[string]string{"strategy": "faulty", "reason": tc.reason}); got != 1 {
				t.Errorf("refused metric (reason %s): got %v, want 1", tc.reason, got)
			}
			if pid := h.PID("faulty"); pid != 0 {
				t.Errorf("got a running plugin (pid %d) for a refused binary", pid)
			}
		})
	}
}

func TestMalformedSums(t *testing.T) {
	dir := pluginsDir(t)
	if err := os.WriteFile(filepath.Join(dir, SumsFile), []byte("zz  swiftmoe-strategy-faulty\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := New(Options{Dir: dir})
	if err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Fatalf("got %v, want an error naming line 1 of SHA256SUMS", err)
	}
}

func TestReplacedBinaryRefused(t *testing.T) {
	dir := pluginsDir(t)
	m := metrics.New()
	h := newHost(t, dir, 5*time.Second, m)
	ctx := testCtx(t)
	if _, err := h.Plan(ctx, "faulty", request("ok")); err != nil {
		t.Fatal(err)
	}
	// Replace the binary with a different (still runnable) one.
	tamper(t, dir)
	// Force a restart; the fresh start must be refused.
	if _, err := h.Plan(ctx, "faulty", request("crash")); err == nil {
		t.Fatal("mode crash gave a plan")
	}
	_, err := h.Plan(ctx, "faulty", request("ok"))
	var f *Failure
	if !errors.Is(err, ErrChecksum) || !errors.As(err, &f) || f.Reason != ReasonRefused {
		t.Fatalf("got %v, want the replaced binary refused with ErrChecksum (reason refused)", err)
	}
	if got := counter(t, m, "swiftmoe_plugin_refused_total", map[string]string{"strategy": "faulty", "reason": RefusedChecksum}); got < 1 {
		t.Errorf("refused metric: got %v, want at least 1", got)
	}
	if got := h.Restarts("faulty"); got != 1 {
		t.Errorf("restarts: got %d, want 1 (the crash; a refused start is not a restart)", got)
	}
}

func TestLookupErrors(t *testing.T) {
	dir := pluginsDir(t)
	if err := os.Symlink(filepath.Join(dir, sdk.BinaryPrefix+"faulty"), filepath.Join(dir, sdk.BinaryPrefix+"link")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, sdk.BinaryPrefix+"noexec"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	h := newHost(t, dir, time.Second, nil)
	tests := []struct{ name, want string }{
		{"missing", "no swiftmoe-strategy-missing in plugins directory"},
		{"link", "symlinks are refused"},
		{"noexec", "chmod +x"},
		{"../faulty", "is not valid"},
		{"", "is not valid"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := h.Plan(testCtx(t), tc.name, request("ok"))
			var f *Failure
			if !errors.As(err, &f) || f.Reason != ReasonUnavailable || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an unavailable failure containing %q", err, tc.want)
			}
		})
	}
	names, err := h.Names()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(names, ","); got != "faulty" {
		t.Errorf("names: got %q, want %q", got, "faulty")
	}
	if _, err := New(Options{Dir: "relative/dir"}); err == nil {
		t.Error("New accepted a relative plugins directory")
	}
	if _, err := New(Options{Dir: filepath.Join(dir, "absent")}); err == nil {
		t.Error("New accepted a missing plugins directory")
	}
}

func TestConcurrentCalls(t *testing.T) {
	h := newHost(t, pluginsDir(t), 5*time.Second, nil)
	ctx := testCtx(t)
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := 0; i < 40; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mode := "ok"
			switch i % 10 {
			case 9:
				mode = "garbage"
			case 4:
				mode = "error"
			}
			_, err := h.Plan(ctx, "faulty", request(mode))
			if (err == nil) != (mode == "ok") {
				// A call in mode ok may still meet a process being killed
				// for another call's garbage; it must then fail cleanly.
				var f *Failure
				if mode == "ok" && errors.As(err, &f) && (f.Reason == ReasonCrash || f.Reason == ReasonUnavailable) {
					return
				}
				errs <- fmt.Errorf("mode %s: got %v", mode, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if _, err := h.Plan(ctx, "faulty", request("ok")); err != nil {
		t.Fatalf("call after the storm: %v", err)
	}
}

func TestCloseKillsPlugins(t *testing.T) {
	h, err := New(Options{Dir: pluginsDir(t)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.Plan(testCtx(t), "faulty", request("ok")); err != nil {
		t.Fatal(err)
	}
	pid := h.PID("faulty")
	h.Close()
	if err := testbin.WaitGone(pid, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	_, err = h.Plan(testCtx(t), "faulty", request("ok"))
	if !errors.Is(err, ErrClosed) {
		t.Fatalf("got %v after Close, want ErrClosed", err)
	}
}
