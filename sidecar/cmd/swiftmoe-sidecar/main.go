// Command swiftmoe-sidecar is SwiftMoE's planner daemon and offline planning
// tool. Run it with --help for its commands.
package main

import (
	"fmt"
	"os"

	"github.com/swiftmoe/swiftmoe/sidecar/internal/cli"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "swiftmoe-sidecar:", err)
		os.Exit(cli.ExitCode(err))
	}
}

func run() error {
	return cli.Run(os.Args[1:], os.Stdout, os.Stderr)
}
