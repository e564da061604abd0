package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
)

// FuzzReadTrace parses arbitrary bytes as a routing trace. The reader must
// never panic, every error must name the file, and a record it returns must
// be within the limits and equal to what encoding/json decodes from the same
// stream (the reader accepts a subset of what encoding/json does: exact field
// names, each once, integer counts, no empty layer).
func FuzzReadTrace(f *testing.F) {
	for _, seed := range []string{
		`{"iteration": 3, "loads": [[1, 2], [3, 4]]}` + "\n" + `{"iteration": 4, "loads": [[5, 6], [7, 8]]}`,
		"{\n  \"loads\": [\n    [1, 2, 3]\n  ],\n  \"iteration\": 7\n}\n",
		`{"iter\u0061tion": 0, "loads": [[18446744073709551615]]}`,
		`{"iteration": 1, "loads": [[1.5, -2, null, "x"]]}`,
		`{"iteration": 1, "loads": [[1,]]}`,
		`[1, 2]`,
		``,
	} {
		f.Add([]byte(seed), int8(-1))
	}
	lim := traceLimits{layers: 8, experts: 16, layersFix: "fix layers", expertsFix: "fix experts"}
	f.Fuzz(func(t *testing.T, data []byte, want int8) {
		rec, err := readTraceFrom(bytes.NewReader(data), "fuzz.jsonl", int64(want), lim)
		if err != nil {
			if !strings.Contains(err.Error(), "fuzz.jsonl") {
				t.Fatalf("error %q does not name the file", err)
			}
			return
		}
		if len(rec.Loads) == 0 || len(rec.Loads) > lim.layers {
			t.Fatalf("%d layers, want 1..%d", len(rec.Loads), lim.layers)
		}
		for l, row := range rec.Loads {
			if len(row) == 0 || len(row) > lim.experts {
				t.Fatalf("layer %d: %d experts, want 1..%d", l, len(row), lim.experts)
			}
		}
		if rec.Line < 1 || rec.Line > bytes.Count(data, []byte{'\n'})+1 {
			t.Fatalf("line %d of a %d-line input", rec.Line, bytes.Count(data, []byte{'\n'})+1)
		}
		// encoding/json on the same stream, up to the record returned.
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		var got *jsonRecord
		for {
			var r jsonRecord
			err := dec.Decode(&r)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("the reader accepted what encoding/json refuses (%v): %q", err, data)
			}
			got = &r
			if want >= 0 && r.Iteration != nil && *r.Iteration == uint64(want) {
				break
			}
		}
		if got == nil || got.Iteration == nil || *got.Iteration != rec.Iteration || !slices.EqualFunc(got.Loads, rec.Loads, slices.Equal) {
			t.Fatalf("the reader returned iteration %d loads %v; encoding/json decodes %+v from %q", rec.Iteration, rec.Loads, got, data)
		}
	})
}

// jsonRecord is a routing-trace object as encoding/json decodes it.
type jsonRecord struct {
	Iteration *uint64    `json:"iteration"`
	Loads     [][]uint64 `json:"loads"`
}
