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

// OptionsError lists every problem found in a job's strategy options, each
// naming the option and the fix. It wraps ErrBadOption.
type OptionsError struct {
	Problems []string
}

func (e *OptionsError) Error() string {
	return fmt.Sprintf("%v: %s", ErrBadOption, strings.Join(e.Problems, "; "))
}

func (e *OptionsError) Unwrap() error { return ErrBadOption }

// ValidateDeclared checks opts against the options a strategy declares: every
// key must be declared, and every value must fit its option's Type (a finite
// float or an integer within [Min, Max], or one of an enum's Values; an
// OptionString value is the strategy's to check). It returns an
// *OptionsError listing every problem, or nil.
func ValidateDeclared(opts map[string]string, declared []Option) error {
	byName := make(map[string]Option, len(declared))
	names := make([]string, len(declared))
	for i, o := range declared {
		byName[o.Name] = o
		names[i] = o.Name
	}
	keys := make([]string, 0, len(opts))
	for k := range opts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var problems []string
	for _, k := range keys {
		o, ok := byName[k]
		if !ok {
			if err := CheckOptions(map[string]string{k: ""}, names...); err != nil {
				problems = append(problems, strings.TrimPrefix(err.Error(), ErrBadOption.Error()+": "))
			}
			continue
		}
		if err := checkDeclared(opts, o); err != nil {
			problems = append(problems, strings.TrimPrefix(err.Error(), ErrBadOption.Error()+": "))
		}
	}
	if len(problems) == 0 {
		return nil
	}
	return &OptionsError{Problems: problems}
}

// checkDeclared checks opts[o.Name] against o's type.
func checkDeclared(opts map[string]string, o Option) error {
	switch o.Type {
	case OptionFloat:
		def, err := strconv.ParseFloat(o.Default, 64)
		if err != nil {
			def = math.NaN()
		}
		_, err = FloatOption(opts, o.Name, def, o.Min, o.Max)
		return err
	case OptionInt:
		def, err := strconv.Atoi(o.Default)
		lo, hi := clampInt(o.Min), clampInt(o.Max)
		if err != nil {
			def = lo
		}
		_, err = IntOption(opts, o.Name, def, lo, hi)
		return err
	case OptionEnum:
		return EnumOption(opts, o.Name, o.Default, o.Values...)
	default:
		return nil
	}
}

// EnumOption fails unless opts[name] is absent or one of values, naming the
// option, what it accepts and def.
func EnumOption(opts map[string]string, name, def string, values ...string) error {
	v, ok := opts[name]
	if !ok {
		return nil
	}
	for _, w := range values {
		if v == w {
			return nil
		}
	}
	return fmt.Errorf("%w: option %s = %q; want one of %s (default %s)", ErrBadOption, name, v, strings.Join(values, ", "), def)
}

// Accepts says in words what values o accepts ("" for an OptionString,
// which the strategy checks itself).
func (o Option) Accepts() string {
	switch o.Type {
	case OptionFloat:
		return fmt.Sprintf("a number in [%s, %s]", fmtFloat(o.Min), fmtFloat(o.Max))
	case OptionInt:
		return fmt.Sprintf("an integer in [%d, %d]", clampInt(o.Min), clampInt(o.Max))
	case OptionEnum:
		return "one of " + strings.Join(o.Values, ", ")
	default:
		return ""
	}
}

// clampInt converts a declared bound to an int, saturating.
func clampInt(v float64) int {
	switch {
	case math.IsNaN(v):
		return 0
	case v >= math.MaxInt:
		return math.MaxInt
	case v <= math.MinInt:
		return math.MinInt
	default:
		return int(v)
	}
}
