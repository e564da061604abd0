// Package version identifies the sidecar build. Version and Commit are set at
// link time:
//
//	go build -ldflags "-X github.com/swiftmoe/swiftmoe/sidecar/internal/version.Version=1.2.3 \
//	  -X github.com/swiftmoe/swiftmoe/sidecar/internal/version.Commit=$(git rev-parse HEAD)"
package version

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
)

// Version is the release version, "dev" for an unstamped build.
var Version = "dev"

// Commit is the source commit, empty when unknown.
var Commit = ""

// commit returns Commit, or the VCS revision the Go toolchain recorded.
func commit() string {
	if Commit != "" {
		return Commit
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				return s.Value
			}
		}
	}
	return "unknown"
}

// Write prints the version, Go version and commit, one per line.
func Write(w io.Writer) error {
	_, err := fmt.Fprintf(w, "swiftmoe-sidecar %s\ngo %s %s/%s\ncommit %s\n", Version, runtime.Version(), runtime.GOOS, runtime.GOARCH, commit())
	return err
}
