package cli

import (
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// traceScanner parses routing-trace objects from a stream, one byte at a
// time through a fixed buffer: nothing before the current byte is kept, and
// lines are counted as whitespace is skipped (JSON has newlines nowhere
// else). It parses exactly the trace format (an object with the fields
// iteration and loads, integer counts), so that every error names the
// field, and checks the limits as it goes.
type traceScanner struct {
	r        io.Reader
	buf      []byte
	pos, end int
	eof      bool
	err      error // a read error other than io.EOF
	line     int   // 1-based line of buf[pos]
	lim      traceLimits
	key      []byte
}

const (
	traceBufBytes = 256 << 10
	// maxKeyBytes bounds a field name; the format's are short.
	maxKeyBytes = 64
	// snippetBytes bounds the text of a bad value quoted in an error.
	snippetBytes = 40
)

func newTraceScanner(r io.Reader, lim traceLimits) *traceScanner {
	return &traceScanner{r: r, buf: make([]byte, traceBufBytes), line: 1, lim: lim}
}

// syntaxError is input that is not JSON.
type syntaxError struct{ msg string }

func (e *syntaxError) Error() string { return e.msg }

func syntaxf(format string, args ...any) error {
	return &syntaxError{msg: fmt.Sprintf(format, args...)}
}

// fill replaces the buffer's contents with the next input; false at the end
// of the input or after a read error.
func (s *traceScanner) fill() bool {
	s.pos, s.end = 0, 0
	for !s.eof {
		n, err := s.r.Read(s.buf)
		if err != nil {
			s.eof = true
			if !errors.Is(err, io.EOF) {
				s.err = err
			}
		}
		if n > 0 {
			s.end = n
			return true
		}
	}
	return false
}

// peek returns the next byte without consuming it.
func (s *traceScanner) peek() (byte, bool) {
	if s.pos < s.end || s.fill() {
		return s.buf[s.pos], true
	}
	return 0, false
}

// skipSpace consumes whitespace and returns the next byte (not consumed).
func (s *traceScanner) skipSpace() (byte, bool) {
	for {
		for s.pos < s.end {
			switch c := s.buf[s.pos]; c {
			case '\n':
				s.line++
			case ' ', '\t', '\r':
			default:
				return c, true
			}
			s.pos++
		}
		if !s.fill() {
			return 0, false
		}
	}
}

// ended is the error for input that ends inside a record.
func (s *traceScanner) ended() error {
	if s.err != nil {
		return s.err
	}
	return syntaxf("the input ends inside an object")
}

// unexpected is the error for byte c (or the end) where want was due.
func (s *traceScanner) unexpected(c byte, ok bool, want string) error {
	if !ok {
		return s.ended()
	}
	return syntaxf("%s where %s is due", describeByte(c), want)
}

// record parses one object, the scanner being at its '{', into b.
func (s *traceScanner) record(b *recordBuf) error {
	s.pos++
	b.counts, b.ends = b.counts[:0], b.ends[:0]
	var haveIt, haveLoads bool
	c, ok := s.skipSpace()
	if ok && c == '}' {
		s.pos++
	} else {
		for {
			if c, ok = s.skipSpace(); !ok || c != '"' {
				return s.unexpected(c, ok, "a field name in double quotes")
			}
			key, err := s.fieldName()
			if err != nil {
				return err
			}
			if c, ok = s.skipSpace(); !ok || c != ':' {
				return s.unexpected(c, ok, "':' after a field name")
			}
			s.pos++
			switch string(key) {
			case "iteration":
				if haveIt {
					return fmt.Errorf("field iteration appears twice; give it once, %s", traceFormat)
				}
				v, bad, err := s.uint()
				if err != nil {
					return err
				}
				if bad != "" {
					return fmt.Errorf("iteration: %s is not an iteration number; want an integer >= 0", bad)
				}
				b.iteration, haveIt = v, true
			case "loads":
				if haveLoads {
					return fmt.Errorf("field loads appears twice; give it once, %s", traceFormat)
				}
				if err := s.loads(b); err != nil {
					return err
				}
				haveLoads = true
			default:
				return fmt.Errorf("not a routing-trace object (unknown field %q); want %s", key, traceFormat)
			}
			more, err := s.next('}')
			if err != nil {
				return err
			}
			if !more {
				break
			}
		}
	}
	switch {
	case !haveIt:
		return fmt.Errorf("field iteration is missing; want %s", traceFormat)
	case !haveLoads:
		return errNoLoads
	}
	return nil
}

var errNoLoads = errors.New("field loads is missing, empty or not a list; want one list of per-expert token counts per MoE layer")

// loads parses the loads field's value into b, checking the limits before
// each layer and each count is stored.
func (s *traceScanner) loads(b *recordBuf) error {
	c, ok := s.skipSpace()
	switch {
	case !ok:
		return s.ended()
	case c != '[' && startsValue(c):
		return errNoLoads
	case c != '[':
		return s.unexpected(c, ok, "the loads")
	}
	s.pos++
	if c, ok = s.skipSpace(); ok && c == ']' {
		return errNoLoads
	}
	for l := 0; ; l++ {
		if l >= s.lim.layers {
			return fmt.Errorf("loads: more than %d layers; %s", s.lim.layers, s.lim.layersFix)
		}
		c, ok = s.skipSpace()
		switch {
		case !ok:
			return s.ended()
		case c != '[' && startsValue(c):
			return fmt.Errorf("loads[%d]: %s is not a list; want one token count per expert", l, s.snippet())
		case c != '[':
			return s.unexpected(c, ok, fmt.Sprintf("the list loads[%d]", l))
		}
		s.pos++
		if c, ok = s.skipSpace(); ok && c == ']' {
			return fmt.Errorf("loads[%d]: empty; want one token count per expert", l)
		}
		for e := 0; ; e++ {
			if e >= s.lim.experts {
				return fmt.Errorf("loads[%d]: more than %d experts; %s", l, s.lim.experts, s.lim.expertsFix)
			}
			v, bad, err := s.uint()
			if err != nil {
				return err
			}
			if bad != "" {
				return fmt.Errorf("loads[%d][%d]: %s is not a token count; want an integer >= 0", l, e, bad)
			}
			b.counts = append(b.counts, v)
			more, err := s.next(']')
			if err != nil {
				return err
			}
			if !more {
				break
			}
		}
		b.ends = append(b.ends, len(b.counts))
		more, err := s.next(']')
		if err != nil || !more {
			return err
		}
	}
}

// next consumes the ',' after an element of a list or object, or the
// closing byte after its last one; more reports which.
func (s *traceScanner) next(closing byte) (more bool, err error) {
	c, ok := s.skipSpace()
	if ok && (c == ',' || c == closing) {
		s.pos++
		return c == ',', nil
	}
	return false, s.unexpected(c, ok, fmt.Sprintf("',' or '%c'", closing))
}

// uint parses a value that must be an integer in [0, 2^64). A JSON value of
// another kind is returned as text in bad; input that is no JSON value is
// an error.
func (s *traceScanner) uint() (v uint64, bad string, err error) {
	first, ok := s.skipSpace()
	switch {
	case !ok:
		return 0, "", s.ended()
	case first < '0' || first > '9':
		if !startsValue(first) {
			return 0, "", s.unexpected(first, ok, "a number")
		}
		return 0, s.snippet(), nil
	}
	n, overflow := 0, false
digits:
	for {
		for s.pos < s.end {
			c := s.buf[s.pos]
			if c < '0' || c > '9' {
				break digits
			}
			d := uint64(c - '0')
			if v > (math.MaxUint64-d)/10 {
				overflow = true
			}
			v = v*10 + d
			s.pos++
			n++
		}
		if !s.fill() {
			break
		}
	}
	if n > 1 && first == '0' {
		return 0, "", syntaxf("a number with a leading zero")
	}
	if next, ok := s.peek(); ok && (next == '.' || next == 'e' || next == 'E') {
		return 0, strconv.FormatUint(v, 10) + s.snippet(), nil
	}
	if overflow {
		return 0, fmt.Sprintf("a number of %d digits (over %d)", n, uint64(math.MaxUint64)), nil
	}
	return v, "", nil
}

// snippet consumes and returns up to snippetBytes of the value that starts
// here: a string to its closing quote, anything else to the next delimiter.
func (s *traceScanner) snippet() string {
	var out []byte
	quoted := false
	for len(out) < snippetBytes {
		c, ok := s.peek()
		if !ok {
			break
		}
		if !quoted && len(out) > 0 && (c == ',' || c == ']' || c == '}' || c == ' ' || c == '\n' || c == '\t' || c == '\r') {
			break
		}
		s.pos++
		out = append(out, c)
		if len(out) == 1 && c == '"' {
			quoted = true
		} else if quoted && c == '"' && out[len(out)-2] != '\\' {
			break
		}
	}
	return string(out)
}

// fieldName parses a string, the scanner being at its opening quote. The
// name is valid until the next call.
func (s *traceScanner) fieldName() ([]byte, error) {
	s.pos++
	s.key = s.key[:0]
	for {
		c, ok := s.peek()
		if !ok {
			return nil, s.ended()
		}
		s.pos++
		switch {
		case c == '"':
			return s.key, nil
		case c < 0x20:
			return nil, syntaxf("%s inside a string", describeByte(c))
		case c == '\\':
			r, err := s.escape()
			if err != nil {
				return nil, err
			}
			s.key = utf8.AppendRune(s.key, r)
		default:
			s.key = append(s.key, c)
		}
		if len(s.key) > maxKeyBytes {
			return nil, fmt.Errorf("not a routing-trace object (a field name over %d bytes); want %s", maxKeyBytes, traceFormat)
		}
	}
}

// escape parses a string escape after its backslash.
func (s *traceScanner) escape() (rune, error) {
	c, ok := s.peek()
	if !ok {
		return 0, s.ended()
	}
	s.pos++
	switch c {
	case '"', '\\', '/':
		return rune(c), nil
	case 'b':
		return '\b', nil
	case 'f':
		return '\f', nil
	case 'n':
		return '\n', nil
	case 'r':
		return '\r', nil
	case 't':
		return '\t', nil
	case 'u':
		r, err := s.hex4()
		if err != nil || !utf16.IsSurrogate(r) {
			return r, err
		}
		// A surrogate pair is two escapes; a lone half is U+FFFD.
		if c, ok := s.peek(); !ok || c != '\\' {
			return utf8.RuneError, nil
		}
		s.pos++
		if c, ok := s.peek(); !ok || c != 'u' {
			return 0, syntaxf("an invalid escape in a string")
		}
		s.pos++
		r2, err := s.hex4()
		if err != nil {
			return 0, err
		}
		return utf16.DecodeRune(r, r2), nil
	}
	return 0, syntaxf("an invalid escape \\%c in a string", c)
}

func (s *traceScanner) hex4() (rune, error) {
	var r rune
	for i := 0; i < 4; i++ {
		c, ok := s.peek()
		if !ok {
			return 0, s.ended()
		}
		s.pos++
		var d byte
		switch {
		case c >= '0' && c <= '9':
			d = c - '0'
		case c >= 'a' && c <= 'f':
			d = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			d = c - 'A' + 10
		default:
			return 0, syntaxf("an invalid \\u escape in a string")
		}
		r = r<<4 | rune(d)
	}
	return r, nil
}

// startsValue reports whether c can start a JSON value.
func startsValue(c byte) bool {
	switch c {
	case '{', '[', '"', '-', 't', 'f', 'n':
		return true
	}
	return c >= '0' && c <= '9'
}

func describeByte(c byte) string {
	if c >= 0x20 && c < 0x7f {
		return fmt.Sprintf("%q", c)
	}
	return fmt.Sprintf("byte 0x%02x", c)
}
