// Package testbin builds the sidecar and plugin binaries that real-process
// tests run.
package testbin

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// Module is the import path of the repository's Go module.
const Module = "github.com/swiftmoe/swiftmoe"

// FaultyPlugin is the test strategy plugin that misbehaves on command.
const FaultyPlugin = Module + "/sidecar/internal/host/testdata/faultyplugin"

// Sidecar is the sidecar's main package.
const Sidecar = Module + "/sidecar/cmd/swiftmoe-sidecar"

// Strategy returns the main package of built-in strategy name.
func Strategy(name string) string {
	return Module + "/plugins/cmd/swiftmoe-strategy-" + name
}

// buildTimeout bounds one go build.
const buildTimeout = 5 * time.Minute

// Build compiles pkg into dir/name and returns the binary's path.
func Build(dir, pkg, name string) (string, error) {
	out := filepath.Join(dir, name)
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
	if msg, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %w\n%s", pkg, err, msg)
	}
	return out, nil
}

// Install copies the plugin binary bin into dir as swiftmoe-strategy-name.
func Install(dir, bin, name string) error {
	data, err := os.ReadFile(bin)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "swiftmoe-strategy-"+name), data, 0o755)
}
