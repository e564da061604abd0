package planner

import "flag"

// This package has no golden files; it accepts -update so that
// `go test ./sidecar/... -update` runs in every sidecar package.
var _ = flag.Bool("update", false, "accepted for go test ./sidecar/... -update; no golden files here")
