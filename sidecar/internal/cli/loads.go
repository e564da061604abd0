package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// traceRecord is one iteration of a routing trace.
type traceRecord struct {
	Iteration uint64
	Loads     [][]uint64 // per layer, per expert
	Line      int
}

// traceLimits bound one record of a routing trace while it is parsed, so
// that reading a trace holds at most two records of that size.
type traceLimits struct {
	// layers bounds the entries of loads; experts those of one layer.
	layers, experts int
	// layersFix and expertsFix say, in errors, where each limit comes from
	// and what to do.
	layersFix, expertsFix string
}

const traceFormat = `{"iteration": N, "loads": [[tokens of layer 0 expert 0, ...], ...]}`

// readTrace reads a routing-trace file: one object, or JSON Lines with one
// object per iteration. It returns the record whose iteration is want, or the
// last record when want is negative. It streams the file: time is linear in
// its size, and memory bounded by two records within lim.
func readTrace(path string, want int64, lim traceLimits) (traceRecord, error) {
	f, err := os.Open(path)
	if err != nil {
		return traceRecord{}, fmt.Errorf("--loads: %w", err)
	}
	defer func() { _ = f.Close() }()
	return readTraceFrom(f, path, want, lim)
}

// readTraceFrom is readTrace on r, named name in errors.
func readTraceFrom(r io.Reader, name string, want int64, lim traceLimits) (traceRecord, error) {
	s := newTraceScanner(r, lim)
	var cur, last recordBuf
	var count int
	var first, lastIt uint64
	for {
		c, ok := s.skipSpace()
		if !ok {
			if s.err != nil {
				return traceRecord{}, fmt.Errorf("--loads %s: %w", name, s.err)
			}
			break
		}
		line := s.line
		if c != '{' {
			if !startsValue(c) {
				return traceRecord{}, fmt.Errorf("%s line %d: not valid JSON (%s); want one routing-trace object per line, %s", name, line, describeByte(c), traceFormat)
			}
			return traceRecord{}, fmt.Errorf("%s line %d: not a routing-trace object (it starts with %q); want %s", name, line, c, traceFormat)
		}
		if err := s.record(&cur); err != nil {
			var se *syntaxError
			if errors.As(err, &se) {
				return traceRecord{}, fmt.Errorf("%s line %d: not valid JSON (%s); want one routing-trace object per line, %s", name, s.line, se.msg, traceFormat)
			}
			return traceRecord{}, fmt.Errorf("%s line %d: %w", name, line, err)
		}
		cur.line = line
		if count == 0 {
			first = cur.iteration
		}
		lastIt = cur.iteration
		count++
		if want >= 0 && cur.iteration == uint64(want) {
			return cur.record(), nil
		}
		cur, last = last, cur
	}
	switch {
	case count == 0:
		return traceRecord{}, fmt.Errorf("%s: no routing-trace records; want %s per line", name, traceFormat)
	case want >= 0:
		return traceRecord{}, fmt.Errorf("%s: no record with iteration %d (%d records, iterations %d to %d); pick one of those with --iteration", name, want, count, first, lastIt)
	}
	return last.record(), nil
}

// recordBuf is a parsed record whose storage is reused by the next one.
type recordBuf struct {
	iteration uint64
	line      int
	counts    []uint64 // every layer's counts, one after the other
	ends      []int    // ends[l] is where layer l's counts end
}

func (b *recordBuf) record() traceRecord {
	out := traceRecord{Iteration: b.iteration, Line: b.line, Loads: make([][]uint64, len(b.ends))}
	start := 0
	for l, end := range b.ends {
		out.Loads[l] = b.counts[start:end:end]
		start = end
	}
	return out
}
