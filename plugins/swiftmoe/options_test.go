package swiftmoe

import (
	"errors"
	"strings"
	"testing"

	"github.com/swiftmoe/swiftmoe/plugins/sdk"
)

// TestValidateOptions: registration refuses what Plan would refuse, naming
// the option and what it accepts, and the declaration agrees.
func TestValidateOptions(t *testing.T) {
	s := New()
	for _, bad := range []map[string]string{
		{optNodePolicy: "bogus"},
		{optNodePolicy: "Spread"},
		{"nodes": "pack"},
		{optLoadWindow: "eight"},
		{optLoadWindow: "-1"},
		{optLoadWindow: "17"},
		{optLoadWindow: "2.5"},
		{optTwoHomeMargin: "-0.1"},
		{optTwoHomeMargin: "1.5"},
		{optTwoHomeMargin: "NaN"},
		{optTwoHomeMargin: "a fifth"},
		{optIntakeDealNodes: "-1"},
		{optIntakeDealNodes: "all"},
		{optIntakeDealNodes: "65537"},
		{optKeepMargin: "-0.01"},
		{optKeepMargin: "2"},
		{optKeepMargin: "NaN"},
		{optKeepMargin: "3%"},
	} {
		err := s.ValidateOptions(bad)
		if !errors.Is(err, sdk.ErrBadOption) {
			t.Errorf("ValidateOptions(%v) = %v, want ErrBadOption", bad, err)
			continue
		}
		for k := range bad {
			if !strings.Contains(err.Error(), k) {
				t.Errorf("ValidateOptions(%v) = %v, want it to name %q", bad, err, k)
			}
		}
		if err := sdk.ValidateDeclared(bad, s.Info().Options); err == nil {
			t.Errorf("the declared options accept %v", bad)
		}
	}
	if err := s.ValidateOptions(map[string]string{optNodePolicy: "bogus"}); !strings.Contains(err.Error(), "want one of spread, pack (default spread)") {
		t.Errorf("got %v, want the accepted values named", err)
	}
	if err := s.ValidateOptions(map[string]string{optLoadWindow: "17"}); err == nil || !strings.Contains(err.Error(), "load_window") || !strings.Contains(err.Error(), "16") {
		t.Errorf("load_window=17: got %v, want an error naming load_window and its largest value 16", err)
	}
	for _, good := range []map[string]string{nil, {}, {optNodePolicy: "spread"}, {optNodePolicy: "pack"}, {optLoadWindow: "0"}, {optLoadWindow: "16"}, {optTwoHomeMargin: "0"}, {optTwoHomeMargin: "0.35"}, {optIntakeDealNodes: "0"}, {optIntakeDealNodes: "32"}, {optKeepMargin: "0"}, {optKeepMargin: "0.03"}} {
		if err := s.ValidateOptions(good); err != nil {
			t.Errorf("ValidateOptions(%v) = %v, want nil", good, err)
		}
		if err := sdk.ValidateDeclared(good, s.Info().Options); err != nil {
			t.Errorf("the declared options refuse %v: %v", good, err)
		}
	}
}
