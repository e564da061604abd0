package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// wideLimits are the limits of plan --world-size 1024 --slots 64.
var wideLimits = planLimits(planFlags{worldSize: 1024, slots: 64})

func writeFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "trace.jsonl")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestReadTrace(t *testing.T) {
	jsonl := `{"iteration": 3, "loads": [[1, 2], [3, 4]]}
{"iteration": 4, "loads": [[5, 6], [7, 8]]}

{"iteration": 5, "loads": [[9, 10], [11, 12]]}
`
	tests := []struct {
		name     string
		content  string
		want     int64
		wantIt   uint64
		wantLine int
		wantL0   string
	}{
		{"last line", jsonl, -1, 5, 4, "[9 10]"},
		{"chosen iteration", jsonl, 4, 4, 2, "[5 6]"},
		{"spaced", "{ \"iteration\" : 7 , \"loads\" : [ [ 1 , 2 , 3 ] ] }", -1, 7, 1, "[1 2 3]"},
		{"one pretty object", "{\n  \"iteration\": 7,\n  \"loads\": [\n    [1, 2, 3]\n  ]\n}\n", -1, 7, 1, "[1 2 3]"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec, err := readTrace(writeFile(t, tc.content), tc.want, wideLimits)
			if err != nil {
				t.Fatal(err)
			}
			if rec.Iteration != tc.wantIt || rec.Line != tc.wantLine || fmt.Sprint(rec.Loads[0]) != tc.wantL0 {
				t.Errorf("got iteration %d line %d layer 0 %v, want %d, %d, %s", rec.Iteration, rec.Line, rec.Loads[0], tc.wantIt, tc.wantLine, tc.wantL0)
			}
		})
	}
}

func TestReadTraceErrors(t *testing.T) {
	good := `{"iteration": 0, "loads": [[1, 2]]}` + "\n"
	tests := []struct {
		name    string
		content string
		want    int64
		errs    []string
	}{
		{"empty", "", -1, []string{"no routing-trace records"}},
		{"bad json on line 2", good + "{\"iteration\": 1, \"loads\": [[1,]]}\n", -1, []string{"line 2", "not valid JSON"}},
		{"negative count", good + good + `{"iteration": 2, "loads": [[1, -3]]}`, -1, []string{"line 3", "loads[0][1]: -3 is not a token count"}},
		{"fractional count", `{"iteration": 2, "loads": [[1.5]]}`, -1, []string{"line 1", "loads[0][0]: 1.5"}},
		{"null count", `{"iteration": 2, "loads": [[null]]}`, -1, []string{"loads[0][0]: null is not a token count"}},
		{"string count", `{"iteration": 2, "loads": [[1, "x"]]}`, -1, []string{`loads[0][1]: "x" is not a token count`}},
		{"layer not a list", `{"iteration": 2, "loads": [[1], 7]}`, -1, []string{"loads[1]: 7 is not a list"}},
		{"loads not a list", `{"iteration": 2, "loads": 7}`, -1, []string{"field loads is missing, empty or not a list"}},
		{"missing iteration", `{"loads": [[1]]}`, -1, []string{"field iteration is missing"}},
		{"negative iteration", `{"iteration": -1, "loads": [[1]]}`, -1, []string{"iteration: -1 is not an iteration number"}},
		{"missing loads", `{"iteration": 1}`, -1, []string{"field loads is missing"}},
		{"empty layer", `{"iteration": 1, "loads": [[1], []]}`, -1, []string{"loads[1]: empty"}},
		{"unknown field", `{"iteration": 1, "loads": [[1]], "tokens": 3}`, -1, []string{`unknown field "tokens"`}},
		{"not an object", `[1, 2]`, -1, []string{"not a routing-trace object"}},
		{"iteration absent", good, 9, []string{"no record with iteration 9", "iterations 0 to 0"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := writeFile(t, tc.content)
			_, err := readTrace(path, tc.want, wideLimits)
			if err == nil {
				t.Fatal("got no error")
			}
			for _, w := range append(tc.errs, path) {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
	if _, err := readTrace(filepath.Join(t.TempDir(), "absent"), -1, wideLimits); err == nil || !strings.Contains(err.Error(), "--loads") {
		t.Errorf("missing file: got %v, want an error naming --loads", err)
	}
}

// writeTrace writes a trace of records of 4 layers of 8 experts until it
// holds at least size bytes; it returns its path and record count.
func writeTrace(t *testing.T, size int) (string, int) {
	t.Helper()
	var b strings.Builder
	n := 0
	for b.Len() < size {
		fmt.Fprintf(&b, `{"iteration": %d, "loads": [[%d, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 5, 6, 7, 8]]}`+"\n", n, n%1000)
		n++
	}
	return writeFile(t, b.String()), n
}

// allocated returns the bytes f allocates.
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// TestReadTraceStreams reads an 8 MB trace of small records: the last record
// comes back, with its line, and what the reader allocates is its buffer and
// a few records, not the file.
func TestReadTraceStreams(t *testing.T) {
	path, n := writeTrace(t, 8<<20)
	var rec traceRecord
	var err error
	alloc := allocated(func() { rec, err = readTrace(path, -1, wideLimits) })
	if err != nil {
		t.Fatal(err)
	}
	if rec.Iteration != uint64(n-1) || rec.Line != n || rec.Loads[0][0] != uint64((n-1)%1000) {
		t.Errorf("got iteration %d line %d loads[0][0] %d, want %d, %d, %d", rec.Iteration, rec.Line, rec.Loads[0][0], n-1, n, (n-1)%1000)
	}
	if alloc > 1<<20 {
		t.Errorf("reading %d records of 8 MB allocated %d bytes, want under 1 MiB", n, alloc)
	}
}

// TestReadTraceChecksLimitsWhileParsing reads one record with far more
// experts in a layer than the job has slots: the reader stops at the limit,
// naming it, before it has stored the rest.
func TestReadTraceChecksLimitsWhileParsing(t *testing.T) {
	path := writeFile(t, `{"iteration": 0, "loads": [[`+strings.Repeat("1, ", 2<<20)+`1]]}`)
	lim := planLimits(planFlags{worldSize: 4, slots: 4})
	var err error
	alloc := allocated(func() { _, err = readTrace(path, -1, lim) })
	if err == nil || !strings.Contains(err.Error(), "loads[0]: more than 16 experts; --world-size 4 x --slots 4 = 16 slots per layer") {
		t.Fatalf("got %v, want the expert limit of the flags named", err)
	}
	if alloc > 1<<20 {
		t.Errorf("refusing a 6 MB record allocated %d bytes, want under 1 MiB", alloc)
	}
	path = writeFile(t, `{"iteration": 0, "loads": [`+strings.Repeat("[1], ", 300)+`[1]]}`)
	lim = planLimits(planFlags{worldSize: 65536, slots: 1})
	if _, err := readTrace(path, -1, lim); err == nil || !strings.Contains(err.Error(), "loads: more than 64 layers; with --world-size 65536 x --slots 1 = 65536 slots per layer, at most 64 layers fit") {
		t.Errorf("got %v, want the layer limit of the flags named", err)
	}
}
