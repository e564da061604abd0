package host

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/swiftmoe/swiftmoe/plugins/sdk"
	"github.com/swiftmoe/swiftmoe/sidecar/internal/metrics"
)

// tamper replaces dir's faulty plugin with a runnable binary of another
// digest (the same program with trailing bytes) and returns the new digest.
func tamper(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, sdk.BinaryPrefix+"faulty")
	tmp := path + ".new"
	copyFile(t, faultyBin, tmp)
	f, err := os.OpenFile(tmp, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("tampered"); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	return digestOf(t, path)
}

func digestOf(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// TestTrustOutlivesTheHost: the digest a job first saw decides what a fresh
// host (a restarted sidecar) trusts, so a binary replaced meanwhile is
// refused, loudly, instead of being pinned afresh.
func TestTrustOutlivesTheHost(t *testing.T) {
	dir := pluginsDir(t)
	good := digestOf(t, filepath.Join(dir, sdk.BinaryPrefix+"faulty"))
	first := newHost(t, dir, 5*time.Second, nil)
	got, err := first.Trust("faulty", "")
	if err != nil || got != good {
		t.Fatalf("first sight: got %q, %v; want the binary's digest %s", got, err, good)
	}
	first.Close()

	bad := tamper(t, dir)
	m := metrics.New()
	h := newHost(t, dir, 5*time.Second, m)
	got, err = h.Trust("faulty", good)
	var r *Refusal
	if !errors.As(err, &r) || r.Reason != RefusedChecksum || !errors.Is(err, ErrChecksum) {
		t.Fatalf("replaced binary: got %v, want a checksum refusal", err)
	}
	if got != good || !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), good) {
		t.Errorf("refusal: got digest %q and %q, want the trusted %s and both digests named", got, err, good)
	}
	if n := counter(t, m, "swiftmoe_plugin_refused_total", map[string]string{"strategy": "faulty", "reason": RefusedChecksum}); n != 1 {
		t.Errorf("refused metric: got %v, want 1", n)
	}
	// The job's digest is now this host's pin: the binary is not started
	// for any caller, and a job that brings no digest is refused too.
	_, err = h.Plan(testCtx(t), "faulty", request("ok"))
	var f *Failure
	if !errors.As(err, &f) || f.Reason != ReasonRefused {
		t.Fatalf("Plan with the replaced binary: got %v, want a refused failure", err)
	}
	if pid := h.PID("faulty"); pid != 0 {
		t.Errorf("a refused binary runs as pid %d", pid)
	}
	if _, err := h.Trust("faulty", ""); !errors.As(err, &r) || r.Reason != RefusedChecksum {
		t.Errorf("a job without a digest: got %v, want the replaced binary refused", err)
	}
	// A job that first saw the new binary conflicts with the pin.
	if _, err := h.Trust("faulty", bad); !errors.As(err, &r) || r.Reason != RefusedPinConflict {
		t.Errorf("a job that first saw the new binary: got %v, want a pin conflict", err)
	}
	if n := counter(t, m, "swiftmoe_plugin_refused_total", map[string]string{"strategy": "faulty", "reason": RefusedPinConflict}); n != 1 {
		t.Errorf("pin-conflict metric: got %v, want 1", n)
	}
}

func TestTrust(t *testing.T) {
	other := strings.Repeat("ab", sha256.Size)
	tests := []struct {
		name    string
		sums    bool   // write a SHA256SUMS listing the binary
		first   string // a Trust call before the one checked ("-": none)
		want    string
		wantErr string // "" accepted, else a reason or a substring
	}{
		{"no digest, nothing pinned", false, "-", "", ""},
		{"the binary's digest", false, "-", "good", ""},
		{"another digest, nothing pinned", false, "-", other, RefusedChecksum},
		{"pinned, same", false, "", "good", ""},
		{"pinned, job saw another", false, "", other, RefusedPinConflict},
		{"SHA256SUMS decides over a job's digest", true, "-", other, ""},
		{"not hex", false, "-", "xyz", "not a SHA-256 digest"},
		{"too short", false, "-", "abcd", "not a SHA-256 digest"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := pluginsDir(t)
			good := digestOf(t, filepath.Join(dir, sdk.BinaryPrefix+"faulty"))
			if tc.sums {
				if err := os.WriteFile(filepath.Join(dir, SumsFile), []byte(good+"  "+sdk.BinaryPrefix+"faulty\n"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			h := newHost(t, dir, 5*time.Second, nil)
			if tc.first != "-" {
				if _, err := h.Trust("faulty", tc.first); err != nil {
					t.Fatal(err)
				}
			}
			want := tc.want
			if want == "good" {
				want = good
			}
			got, err := h.Trust("faulty", want)
			if tc.wantErr == "" {
				if err != nil || got != good {
					t.Fatalf("got %q, %v; want %s trusted", got, err, good)
				}
				return
			}
			var r *Refusal
			if errors.As(err, &r) {
				if r.Reason != tc.wantErr {
					t.Fatalf("got refusal %s (%v), want %s", r.Reason, err, tc.wantErr)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("got %v, want an error containing %q", err, tc.wantErr)
			}
		})
	}
	h := newHost(t, pluginsDir(t), time.Second, nil)
	if _, err := h.Trust("missing", ""); !errors.Is(err, ErrUnknownStrategy) {
		t.Errorf("missing plugin: got %v, want ErrUnknownStrategy", err)
	}
}

// TestErrorAnswerKeepsSharedPlugin: one job whose every plan is an error
// answer does not restart the plugin process it shares with a well-formed
// job, which gets every one of its plans.
func TestErrorAnswerKeepsSharedPlugin(t *testing.T) {
	m := metrics.New()
	h := newHost(t, pluginsDir(t), 5*time.Second, m)
	ctx := testCtx(t)
	if _, err := h.Plan(ctx, "faulty", request("ok")); err != nil {
		t.Fatal(err)
	}
	pid := h.PID("faulty")
	const calls = 60
	var wg sync.WaitGroup
	var okFailed, badAnswered int
	var mu sync.Mutex
	for _, mode := range []string{"ok", "error"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range calls {
				_, err := h.Plan(ctx, "faulty", request(mode))
				var f *Failure
				mu.Lock()
				switch {
				case mode == "ok" && err != nil:
					okFailed++
				case mode == "error" && (!errors.As(err, &f) || f.Reason != ReasonError):
					badAnswered++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if okFailed != 0 || badAnswered != 0 {
		t.Errorf("over %d calls each: the well-formed job failed %d times, the failing job got %d answers that were not errors; want 0 and 0", calls, okFailed, badAnswered)
	}
	if got := h.PID("faulty"); got != pid {
		t.Errorf("plugin pid %d after the error answers, want the same process %d", got, pid)
	}
	if got := h.Restarts("faulty"); got != 0 {
		t.Errorf("restarts: got %d, want 0", got)
	}
	if got := counter(t, m, "swiftmoe_plugin_restarts_total", nil); got != 0 {
		t.Errorf("restart metric: got %v, want 0", got)
	}
}

func TestValidateOptions(t *testing.T) {
	h := newHost(t, pluginsDir(t), 5*time.Second, nil)
	ctx := testCtx(t)
	if err := h.ValidateOptions(ctx, "faulty", map[string]string{"mode": "error", "delay": "1s"}); err != nil {
		t.Errorf("declared options with good values: got %v, want nil", err)
	}
	err := h.ValidateOptions(ctx, "faulty", map[string]string{"mode": "bogus", "colour": "red"})
	var oe *sdk.OptionsError
	if !errors.As(err, &oe) || len(oe.Problems) != 2 {
		t.Fatalf("got %v, want two problems", err)
	}
	if !strings.Contains(oe.Problems[0], `unknown option "colour"`) || !strings.Contains(oe.Problems[1], `option mode = "bogus"; want one of ok, slow`) {
		t.Errorf("problems %q: want the unknown option and the bad value named", oe.Problems)
	}
	pid := h.PID("faulty")
	if got := h.Restarts("faulty"); got != 0 || pid == 0 {
		t.Errorf("after refused options: %d restarts, pid %d; want the plugin running, never restarted", got, pid)
	}
	var f *Failure
	if err := h.ValidateOptions(ctx, "missing", nil); !errors.As(err, &f) || f.Reason != ReasonUnavailable {
		t.Errorf("missing plugin: got %v, want an unavailable failure", err)
	}
}
