package cli

import (
	"fmt"
	"sort"
	"strings"
)

// keyValues is a repeatable --option key=value flag.
type keyValues map[string]string

func (kv keyValues) String() string {
	keys := make([]string, 0, len(kv))
	for k := range kv {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + kv[k]
	}
	return strings.Join(parts, ",")
}

func (kv keyValues) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("%q is not key=value, as in --option predictor=ewma", s)
	}
	if _, dup := kv[k]; dup {
		return fmt.Errorf("option %q is given twice", k)
	}
	kv[k] = v
	return nil
}
