// Command swiftmoe-sidecar is SwiftMoE's planner daemon and offline planning
// tool. Run it with --help for its commands.
package main

import (
	"fmt"
	"os"
	"runtime/debug"

	"github.com/swiftmoe/swiftmoe/sidecar/internal/cli"
)

// gcPercent is the daemon's GOGC: its live heap is small and each plan of a
// large job makes a few MB of garbage, so collecting less often saves CPU on
// the planning path at little memory cost. GOGC in the environment wins.
const gcPercent = 400

func main() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(cli.MemoryLimit)
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "swiftmoe-sidecar:", err)
		os.Exit(cli.ExitCode(err))
	}
}

func run() error {
	return cli.Run(os.Args[1:], os.Stdout, os.Stderr)
}
