package cli

import (
	"flag"
	"fmt"
	"os"
	"testing"

	"github.com/swiftmoe/swiftmoe/sidecar/internal/testbin"
)

// update rewrites the golden files (go test ./sidecar/... -update).
var update = testbin.Update

// binDir holds the built-in strategy plugins and the faulty test plugin.
var binDir string

// builtins are the strategies whose plugins the golden tests run.
var builtins = []string{"flexmoe", "static", "swiftmoe"}

func TestMain(m *testing.M) { os.Exit(runMain(m)) }

func runMain(m *testing.M) int {
	flag.Parse()
	if testbin.Fuzzing() {
		// A fuzz target needs no plugin, and every fuzz worker runs
		// TestMain.
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "cli-test-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = os.RemoveAll(dir) }()
	binDir = dir
	for _, s := range builtins {
		if _, err := testbin.Build(dir, testbin.Strategy(s), "swiftmoe-strategy-"+s); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	if _, err := testbin.Build(dir, testbin.FaultyPlugin, "swiftmoe-strategy-faulty"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}
