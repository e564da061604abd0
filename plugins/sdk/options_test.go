package sdk

import (
	"context"
	"errors"
	"math"
	"strings"
	"testing"
	"time"
)

// typed declares one option of each type.
var typed = []Option{
	{Name: "ratio", Default: "1.2", Type: OptionFloat, Min: 1, Max: math.Inf(1)},
	{Name: "every", Default: "1", Type: OptionInt, Min: 1, Max: 100},
	{Name: "policy", Default: "spread", Type: OptionEnum, Values: []string{"spread", "pack"}},
	{Name: "label", Default: ""},
}

func TestValidateDeclared(t *testing.T) {
	tests := []struct {
		name string
		opts map[string]string
		want []string // one substring per problem, in key order; none: accepted
	}{
		{"none", nil, nil},
		{"all good", map[string]string{"ratio": "1.5", "every": "7", "policy": "pack", "label": "anything"}, nil},
		{"float bounds inclusive", map[string]string{"ratio": "1"}, nil},
		{"NaN", map[string]string{"ratio": "NaN"}, []string{`option ratio = "NaN"; want a number in [1, inf] (default 1.2)`}},
		{"inf", map[string]string{"ratio": "+Inf"}, []string{"option ratio"}},
		{"below", map[string]string{"ratio": "0.5"}, []string{"option ratio"}},
		{"zero interval", map[string]string{"every": "0"}, []string{`option every = "0"; want an integer in [1, 100] (default 1)`}},
		{"not an integer", map[string]string{"every": "1.5"}, []string{"option every"}},
		{"bogus enum", map[string]string{"policy": "bogus"}, []string{`option policy = "bogus"; want one of spread, pack (default spread)`}},
		{"unknown", map[string]string{"ratoi": "2"}, []string{`unknown option "ratoi"; this strategy accepts only ratio, every, policy, label`}},
		{"every problem listed", map[string]string{"every": "0", "policy": "x", "ratio": "NaN", "zz": "1"},
			[]string{"option every", "option policy", "option ratio", `unknown option "zz"`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := ValidateDeclared(tc.opts, typed)
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("got %v, want the options accepted", err)
				}
				return
			}
			var oe *OptionsError
			if !errors.As(err, &oe) || !errors.Is(err, ErrBadOption) {
				t.Fatalf("got %v, want an *OptionsError wrapping ErrBadOption", err)
			}
			if len(oe.Problems) != len(tc.want) {
				t.Fatalf("got problems %q, want %d of them", oe.Problems, len(tc.want))
			}
			for i, w := range tc.want {
				if !strings.Contains(oe.Problems[i], w) {
					t.Errorf("problem %d: got %q, want it to contain %q", i, oe.Problems[i], w)
				}
			}
		})
	}
	if err := ValidateDeclared(map[string]string{"x": "1"}, nil); err == nil || !strings.Contains(err.Error(), "accepts no options") {
		t.Errorf("a strategy declaring no options: got %v, want every option refused", err)
	}
}

// checked is rotate with an OptionValidator of its own.
type checked struct{ rotate }

func (checked) ValidateOptions(opts map[string]string) error {
	if opts["fail"] == "sometimes" {
		return &OptionsError{Problems: []string{`option fail = "sometimes"; want true or false`}}
	}
	if v, ok := opts["fail"]; ok && v != "true" && v != "false" {
		return errors.New("plain error")
	}
	return nil
}

// TestValidateOptionsOverGRPC asks three plugins over a real gRPC pair: one
// with an OptionValidator, one without (its declared options decide), and one
// built before the call existed (it answers UNIMPLEMENTED: accepted).
func TestValidateOptionsOverGRPC(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	w := &wire{}
	own := pairOver(t, &GRPCServer{Impl: checked{}}, w)
	declared := pairOver(t, &GRPCServer{Impl: rotate{}}, w)
	old := pairOver(t, oldPlugin{}, w)

	if err := own.ValidateOptions(ctx, map[string]string{"fail": "true"}); err != nil {
		t.Errorf("own validator, good options: got %v, want nil", err)
	}
	err := own.ValidateOptions(ctx, map[string]string{"fail": "sometimes"})
	var oe *OptionsError
	if !errors.As(err, &oe) || len(oe.Problems) != 1 || !strings.Contains(oe.Problems[0], `option fail = "sometimes"`) {
		t.Errorf("own validator, bad options: got %v, want its one problem", err)
	}
	if err := own.ValidateOptions(ctx, map[string]string{"fail": "x"}); !errors.As(err, &oe) || !strings.Contains(err.Error(), "plain error") {
		t.Errorf("own validator's plain error: got %v, want it as a problem", err)
	}
	if err := declared.ValidateOptions(ctx, map[string]string{"fail": "x"}); err != nil {
		t.Errorf("declared string option: got %v, want it accepted (the strategy checks its value)", err)
	}
	if err := declared.ValidateOptions(ctx, map[string]string{"nope": "1"}); !errors.As(err, &oe) || !strings.Contains(err.Error(), `unknown option "nope"`) {
		t.Errorf("undeclared option: got %v, want it refused", err)
	}
	if err := old.ValidateOptions(ctx, map[string]string{"anything": "at all"}); err != nil {
		t.Errorf("old plugin: got %v, want the options accepted as before", err)
	}
}

func TestAccepts(t *testing.T) {
	want := []string{"a number in [1, inf]", "an integer in [1, 100]", "one of spread, pack", ""}
	for i, o := range typed {
		if got := o.Accepts(); got != want[i] {
			t.Errorf("%s: got %q, want %q", o.Name, got, want[i])
		}
	}
}

func TestTypedOptionsRoundTrip(t *testing.T) {
	info := Info{Name: "x", Options: typed}
	got := InfoFromProto(InfoToProto(info))
	for i, o := range got.Options {
		w := typed[i]
		if o.Name != w.Name || o.Type != w.Type || o.Min != w.Min || o.Max != w.Max || strings.Join(o.Values, ",") != strings.Join(w.Values, ",") {
			t.Errorf("option %d: got %+v, want %+v", i, o, w)
		}
	}
}
