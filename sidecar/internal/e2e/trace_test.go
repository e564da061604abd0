package e2e

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writeLines writes a routing trace of short records (4 layers of 8
// experts) of at least size bytes and returns its path and line count.
func writeLines(t *testing.T, size int) (string, int) {
	t.Helper()
	path := filepath.Join(t.TempDir(), fmt.Sprintf("trace-%d.jsonl", size))
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w := bufio.NewWriter(f)
	n, written := 0, 0
	for written < size {
		k, _ := fmt.Fprintf(w, `{"iteration": %d, "loads": [[%d, 2, 3, 4, 5, 6, 7, 8], [8, 7, 6, 5, 4, 3, 2, 1], [1, 1, 1, 1, 1, 1, 1, 1], [9, 0, 9, 0, 9, 0, 9, 0]]}`+"\n", n, n%1000)
		written += k
		n++
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return path, n
}

// TestPlanTraceTimeIsLinear plans from the last line of traces of 8 and 32
// MB with the sidecar binary: the larger takes at most eight times as long
// (linear: about four, less the fixed cost of starting the plugin), not
// sixteen or more, and its table names the right line.
func TestPlanTraceTimeIsLinear(t *testing.T) {
	small, _ := writeLines(t, 8<<20)
	large, lines := writeLines(t, 32<<20)
	plan := func(path string) (time.Duration, string) {
		best, out := time.Duration(1<<62), ""
		for i := 0; i < 3; i++ {
			ctx := ctxT(t, 5*time.Minute)
			start := time.Now()
			o, err := exec.CommandContext(ctx, sidecarBin, "plan", "--strategy", "static", "--plugins-dir", binDir,
				"--loads", path, "--world-size", "4", "--slots", "2").CombinedOutput()
			if err != nil {
				t.Fatalf("plan --loads %s: %v\n%s", path, err, o)
			}
			best, out = min(best, time.Since(start)), string(o)
		}
		return best, out
	}
	ts, _ := plan(small)
	tl, out := plan(large)
	if want := fmt.Sprintf("loads of iteration %d (%s line %d)", lines-1, large, lines); !strings.Contains(out, want) {
		t.Errorf("plan output lacks %q:\n%.400s", want, out)
	}
	t.Logf("plan --loads: 8 MB in %v, 32 MB in %v", ts, tl)
	if ratio := float64(tl) / float64(ts); ratio > 8 {
		t.Errorf("8 MB planned in %v, 32 MB in %v: %.1f times as long, want at most 8 (linear)", ts, tl, ratio)
	}
}
