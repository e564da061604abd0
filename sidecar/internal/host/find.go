package host

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/swiftmoe/swiftmoe/plugins/sdk"
)

// SumsFile is the optional checksum list in a plugins directory, in the
// format sha256sum writes: "<64 hex digits>  <file name>" per line.
const SumsFile = "SHA256SUMS"

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,63}$`)

// ValidName reports whether name can be a strategy name: 1 to 64 lower-case
// letters, digits, '_' or '-', starting with a letter or digit. Names never
// contain a path separator, so a strategy is always looked up in the plugins
// directory itself.
func ValidName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("strategy name %q is not valid: use 1-64 characters of a-z, 0-9, '_' or '-', starting with a letter or digit", name)
	}
	return nil
}

// binaryPath returns the path of strategy name's binary in dir and checks it
// is an executable regular file (not a symlink, not a directory).
func binaryPath(dir, name string) (string, error) {
	if err := ValidName(name); err != nil {
		return "", err
	}
	path := filepath.Join(dir, sdk.BinaryPrefix+name)
	fi, err := os.Lstat(path)
	if err != nil {
		if os.IsNotExist(err) {
			return "", fmt.Errorf("%w %q: no %s in plugins directory %s", ErrUnknownStrategy, name, sdk.BinaryPrefix+name, dir)
		}
		return "", fmt.Errorf("looking up strategy %q: %w", name, err)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("%w %q: %s is not a regular file (symlinks are refused; copy the binary into the plugins directory)", ErrUnknownStrategy, name, path)
	}
	if fi.Mode().Perm()&0o111 == 0 {
		return "", fmt.Errorf("%w %q: %s is not executable; chmod +x it", ErrUnknownStrategy, name, path)
	}
	return path, nil
}

// listNames returns the strategy names of the plugin binaries in dir, sorted.
func listNames(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("reading plugins directory: %w", err)
	}
	var names []string
	for _, e := range entries {
		name, ok := strings.CutPrefix(e.Name(), sdk.BinaryPrefix)
		if !ok || ValidName(name) != nil {
			continue
		}
		if _, err := binaryPath(dir, name); err != nil {
			continue
		}
		names = append(names, name)
	}
	sort.Strings(names)
	return names, nil
}
