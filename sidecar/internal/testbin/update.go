package testbin

import "flag"

// Update is the -update flag: tests with golden files rewrite them instead
// of comparing. It is defined here, in every test binary that links this
// package, so that `go test ./sidecar/... -update` is accepted by all of
// them.
var Update = flag.Bool("update", false, "rewrite golden files under sidecar/testdata/golden")

// Fuzzing reports whether this test process runs a fuzz target (go test
// -fuzz), as the coordinator or as a worker: every worker runs TestMain, so
// a TestMain skips building what no fuzz target needs. Call it after
// flag.Parse.
func Fuzzing() bool {
	for _, name := range []string{"test.fuzz", "test.fuzzworker"} {
		if f := flag.Lookup(name); f != nil && f.Value.String() != "" && f.Value.String() != "false" {
			return true
		}
	}
	return false
}
