package testbin

import "flag"

// Update is the -update flag: tests with golden files rewrite them instead
// of comparing. It is defined here, in every test binary that links this
// package, so that `go test ./sidecar/... -update` is accepted by all of
// them.
var Update = flag.Bool("update", false, "rewrite golden files under sidecar/testdata/golden")
