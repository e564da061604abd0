package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
)

// maxTraceBytes bounds a --loads file.
const maxTraceBytes = 1 << 30

// traceRecord is one iteration of a routing trace.
type traceRecord struct {
	Iteration uint64
	Loads     [][]uint64 // per layer, per expert
	Line      int
}

// rawRecord is the JSON shape of a routing-trace object; the values are
// parsed field by field so that errors can name the element.
type rawRecord struct {
	Iteration json.RawMessage `json:"iteration"`
	Loads     json.RawMessage `json:"loads"`
}

const traceFormat = `{"iteration": N, "loads": [[tokens of layer 0 expert 0, ...], ...]}`

// readTrace reads a routing-trace file: one object, or JSON Lines with one
// object per iteration. It returns the record whose iteration is want, or the
// last record when want is negative.
func readTrace(path string, want int64) (traceRecord, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return traceRecord{}, fmt.Errorf("--loads: %w", err)
	}
	if fi.Size() > maxTraceBytes {
		return traceRecord{}, fmt.Errorf("--loads %s: %d bytes exceed the limit of %d; cut the iterations you need into a smaller file", path, fi.Size(), maxTraceBytes)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return traceRecord{}, fmt.Errorf("--loads: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	var found *traceRecord
	var count int
	var first, last uint64
	for {
		var raw json.RawMessage
		err := dec.Decode(&raw)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			var se *json.SyntaxError
			off := dec.InputOffset()
			if errors.As(err, &se) {
				off = se.Offset
			}
			return traceRecord{}, fmt.Errorf("%s line %d: not valid JSON (%v); want one routing-trace object per line, %s", path, lineAt(data, off), err, traceFormat)
		}
		line := lineAt(data, dec.InputOffset()-int64(len(raw)))
		rec, err := parseRecord(raw)
		if err != nil {
			return traceRecord{}, fmt.Errorf("%s line %d: %w", path, line, err)
		}
		rec.Line = line
		if count == 0 {
			first = rec.Iteration
		}
		last = rec.Iteration
		count++
		if want < 0 {
			found = &rec
		} else if rec.Iteration == uint64(want) {
			return rec, nil
		}
	}
	switch {
	case count == 0:
		return traceRecord{}, fmt.Errorf("%s: no routing-trace records; want %s per line", path, traceFormat)
	case found == nil:
		return traceRecord{}, fmt.Errorf("%s: no record with iteration %d (%d records, iterations %d to %d); pick one of those with --iteration", path, want, count, first, last)
	}
	return *found, nil
}

func parseRecord(raw json.RawMessage) (traceRecord, error) {
	var r rawRecord
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return traceRecord{}, fmt.Errorf("not a routing-trace object (%v); want %s", err, traceFormat)
	}
	if len(r.Iteration) == 0 {
		return traceRecord{}, fmt.Errorf("field iteration is missing; want %s", traceFormat)
	}
	it, err := strconv.ParseUint(string(bytes.TrimSpace(r.Iteration)), 10, 64)
	if err != nil {
		return traceRecord{}, fmt.Errorf("iteration: %s is not an iteration number; want an integer >= 0", r.Iteration)
	}
	var layers []json.RawMessage
	if len(r.Loads) == 0 || json.Unmarshal(r.Loads, &layers) != nil || len(layers) == 0 {
		return traceRecord{}, fmt.Errorf("field loads is missing, empty or not a list; want one list of per-expert token counts per MoE layer")
	}
	out := traceRecord{Iteration: it, Loads: make([][]uint64, len(layers))}
	for l, layer := range layers {
		var counts []json.RawMessage
		if json.Unmarshal(layer, &counts) != nil {
			return traceRecord{}, fmt.Errorf("loads[%d]: %.40s is not a list; want one token count per expert", l, layer)
		}
		if len(counts) == 0 {
			return traceRecord{}, fmt.Errorf("loads[%d]: empty; want one token count per expert", l)
		}
		out.Loads[l] = make([]uint64, len(counts))
		for e, n := range counts {
			v, err := strconv.ParseUint(string(bytes.TrimSpace(n)), 10, 64)
			if err != nil {
				return traceRecord{}, fmt.Errorf("loads[%d][%d]: %.40s is not a token count; want an integer >= 0", l, e, n)
			}
			out.Loads[l][e] = v
		}
	}
	return out, nil
}

// lineAt returns the 1-based line of byte offset off in data, skipping the
// whitespace that precedes a value.
func lineAt(data []byte, off int64) int {
	if off < 0 {
		off = 0
	}
	if off > int64(len(data)) {
		off = int64(len(data))
	}
	for off < int64(len(data)) && (data[off] == ' ' || data[off] == '\n' || data[off] == '\r' || data[off] == '\t') {
		off++
	}
	return bytes.Count(data[:off], []byte{'\n'}) + 1
}
