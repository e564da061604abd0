package cli

import (
	"fmt"
	"os"
	"path/filepath"
)

// pluginsDir resolves --plugins-dir: the flag made absolute, or the
// directory of the running executable (symlinks resolved).
func pluginsDir(flagValue string) (string, error) {
	if flagValue != "" {
		abs, err := filepath.Abs(flagValue)
		if err != nil {
			return "", fmt.Errorf("--plugins-dir %q: %w", flagValue, err)
		}
		return abs, nil
	}
	exe, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("finding the sidecar executable for the default plugins directory: %w; pass --plugins-dir", err)
	}
	if resolved, err := filepath.EvalSymlinks(exe); err == nil {
		exe = resolved
	}
	return filepath.Dir(exe), nil
}
