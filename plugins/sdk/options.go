package sdk

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
)

// ErrBadOption is wrapped by every error the option helpers return.
var ErrBadOption = errors.New("bad strategy option")

// CheckOptions fails when opts holds a key outside known, naming the key and
// the options the strategy accepts, so that a misspelled option is an error
// rather than silently ignored.
func CheckOptions(opts map[string]string, known ...string) error {
	var unknown []string
	for k := range opts {
		found := false
		for _, n := range known {
			if k == n {
				found = true
				break
			}
		}
		if !found {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) == 0 {
		return nil
	}
	sort.Strings(unknown)
	accepted := "no options"
	if len(known) > 0 {
		accepted = "only " + strings.Join(known, ", ")
	}
	return fmt.Errorf("%w: unknown option %q; this strategy accepts %s", ErrBadOption, unknown[0], accepted)
}

// FloatOption parses opts[name] as a finite number in [lo, hi], returning def
// when the option is absent.
func FloatOption(opts map[string]string, name string, def, lo, hi float64) (float64, error) {
	s, ok := opts[name]
	if !ok {
		return def, nil
	}
	v, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) || v < lo || v > hi {
		return 0, fmt.Errorf("%w: option %s = %q; want a number in [%s, %s] (default %s)", ErrBadOption, name, s, fmtFloat(lo), fmtFloat(hi), fmtFloat(def))
	}
	return v, nil
}

// IntOption parses opts[name] as an integer in [lo, hi], returning def when
// the option is absent.
func IntOption(opts map[string]string, name string, def, lo, hi int) (int, error) {
	s, ok := opts[name]
	if !ok {
		return def, nil
	}
	v, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil || v < lo || v > hi {
		return 0, fmt.Errorf("%w: option %s = %q; want an integer in [%d, %d] (default %d)", ErrBadOption, name, s, lo, hi, def)
	}
	return v, nil
}

func fmtFloat(v float64) string {
	if math.IsInf(v, 1) {
		return "inf"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}
